"""GLUE metrics (Matthews correlation, Pearson/Spearman, F1, accuracy), per task, in NumPy.

Definitions follow scikit-learn / SciPy and the GLUE benchmark: Matthews correlation is the
multi-class (Gorodkin) form and 0 when undefined; F1 is for the positive class 1; Spearman ranks ties
by their average rank; Pearson/Spearman of a constant input is NaN.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from numpy.typing import ArrayLike

# Each task's metrics, and the one that picks the best checkpoint (what the paper's Table 4 reports).
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "cola": ("matthews_correlation",),
    "sst2": ("accuracy",),
    "mrpc": ("f1", "accuracy"),
    "stsb": ("pearson", "spearman"),
    "qqp": ("accuracy", "f1"),
    "mnli": ("accuracy",),
    "qnli": ("accuracy",),
    "rte": ("accuracy",),
    "wnli": ("accuracy",),
    # non-GLUE data (local files, the Rotten Tomatoes corpus)
    "binary": ("accuracy", "f1", "matthews_correlation"),
    "multiclass": ("accuracy", "matthews_correlation"),
    "regression": ("pearson", "spearman", "mse"),
}
REGRESSION_TASKS = frozenset({"stsb", "regression"})


def _pair(predictions: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    p, y = np.asarray(predictions), np.asarray(labels)
    if p.shape != y.shape or p.ndim != 1:
        raise ValueError(
            f"predictions and labels must be 1-D of equal length, got {p.shape} and {y.shape}"
        )
    if p.size == 0:
        raise ValueError("cannot compute a metric over zero examples")
    return p, y


def accuracy(predictions: ArrayLike, labels: ArrayLike) -> float:
    """Fraction of predictions equal to the label."""
    p, y = _pair(predictions, labels)
    return float(np.mean(p == y))


def f1_score(predictions: ArrayLike, labels: ArrayLike, positive: int = 1) -> float:
    """F1 of the ``positive`` class (0 when it is never predicted nor present)."""
    p, y = _pair(predictions, labels)
    tp = float(np.sum((p == positive) & (y == positive)))
    fp = float(np.sum((p == positive) & (y != positive)))
    fn = float(np.sum((p != positive) & (y == positive)))
    denom = 2 * tp + fp + fn
    return 2 * tp / denom if denom else 0.0


def matthews_corrcoef(predictions: ArrayLike, labels: ArrayLike) -> float:
    """Matthews correlation coefficient (multi-class form; 0.0 when a marginal is constant)."""
    p, y = _pair(predictions, labels)
    classes, inverse = np.unique(np.concatenate([y, p]), return_inverse=True)
    k, n = len(classes), len(y)
    confusion = np.zeros((k, k), dtype=np.float64)
    np.add.at(confusion, (inverse[:n], inverse[n:]), 1.0)
    t = confusion.sum(axis=1)  # true counts per class
    q = confusion.sum(axis=0)  # predicted counts per class
    c, s = np.trace(confusion), float(n)
    cov_yp = c * s - t @ q
    cov_pp = s * s - q @ q
    cov_yy = s * s - t @ t
    denom = math.sqrt(cov_yy * cov_pp)
    return float(cov_yp / denom) if denom else 0.0


def pearson(predictions: ArrayLike, labels: ArrayLike) -> float:
    """Pearson correlation (NaN when either input is constant)."""
    p, y = _pair(predictions, labels)
    p, y = p.astype(np.float64) - p.mean(), y.astype(np.float64) - y.mean()
    denom = math.sqrt(float(p @ p) * float(y @ y))
    return float(p @ y / denom) if denom else float("nan")


def rankdata(values: ArrayLike) -> np.ndarray:
    """Ranks 1..n, ties given their average rank (``scipy.stats.rankdata(method="average")``)."""
    x = np.asarray(values)
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    # boundaries of runs of equal values
    starts = np.flatnonzero(np.concatenate([[True], sorted_x[1:] != sorted_x[:-1]]))
    ends = np.concatenate([starts[1:], [len(x)]])
    avg = (starts + ends + 1) / 2.0  # mean of ranks start+1 .. end
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def spearman(predictions: ArrayLike, labels: ArrayLike) -> float:
    """Spearman rank correlation (NaN when either input is constant)."""
    p, y = _pair(predictions, labels)
    return pearson(rankdata(p), rankdata(y))


def mse(predictions: ArrayLike, labels: ArrayLike) -> float:
    """Mean squared error."""
    p, y = _pair(predictions, labels)
    return float(np.mean((p.astype(np.float64) - y.astype(np.float64)) ** 2))


METRIC_FUNCTIONS: dict[str, Callable[[ArrayLike, ArrayLike], float]] = {
    "accuracy": accuracy,
    "f1": f1_score,
    "matthews_correlation": matthews_corrcoef,
    "pearson": pearson,
    "spearman": spearman,
    "mse": mse,
}
# Lower is better only for these; best-checkpoint selection needs to know.
LOWER_IS_BETTER = frozenset({"mse"})


def metric_names(task: str) -> tuple[str, ...]:
    """The metrics reported for ``task`` (a GLUE task or binary/multiclass/regression)."""
    try:
        return TASK_METRICS[task]
    except KeyError:
        raise ValueError(
            f"no metrics defined for task {task!r}; valid: {', '.join(TASK_METRICS)}"
        ) from None


def primary_metric(task: str) -> str:
    """The metric that selects the best checkpoint for ``task``."""
    return metric_names(task)[0]


def compute_metrics(task: str, predictions: ArrayLike, labels: ArrayLike) -> dict[str, float]:
    """All of ``task``'s metrics; ``predictions`` are class ids, or scores for regression tasks."""
    p, y = _pair(predictions, labels)
    return {name: METRIC_FUNCTIONS[name](p, y) for name in metric_names(task)}


def is_better(metric: str, new: float, best: float | None) -> bool:
    """Whether ``new`` improves on ``best`` for ``metric`` (NaN never does)."""
    if new is None or math.isnan(new):
        return False
    if best is None or math.isnan(best):
        return True
    return new < best if metric in LOWER_IS_BETTER else new > best
