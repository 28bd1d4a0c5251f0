"""GLUE metrics against known values (scikit-learn / SciPy documentation examples, hand counts)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from galorekit.train import glue_metrics as gm


def test_accuracy():
    assert gm.accuracy([1, 0, 1, 1], [1, 1, 1, 0]) == 0.5
    assert gm.accuracy(np.array([2, 2]), np.array([2, 2])) == 1.0


def test_f1_of_the_positive_class():
    # tp = 3, fp = 0, fn = 1  ->  2*3 / (2*3 + 0 + 1)
    assert gm.f1_score([0, 1, 0, 0, 1, 1], [0, 1, 1, 0, 1, 1]) == pytest.approx(6 / 7)
    # tp = 2, fp = 1, fn = 1
    assert gm.f1_score([1, 1, 0, 0, 1], [1, 0, 0, 1, 1]) == pytest.approx(2 / 3)
    assert gm.f1_score([0, 0], [0, 0]) == 0.0  # no positives at all: 0, as scikit-learn


def test_matthews_binary_known_value():
    # scikit-learn's documented example: -0.33...
    assert gm.matthews_corrcoef([1, -1, 1, 1], [1, 1, 1, -1]) == pytest.approx(-1 / 3)
    assert gm.matthews_corrcoef([0, 1, 0, 1], [0, 1, 0, 1]) == pytest.approx(1.0)
    assert gm.matthews_corrcoef([1, 0, 1, 0], [0, 1, 0, 1]) == pytest.approx(-1.0)


def test_matthews_is_zero_when_undefined():
    # constant predictions (what an untrained CoLA model does): 0, not NaN
    assert gm.matthews_corrcoef([1, 1, 1, 1], [0, 1, 0, 1]) == 0.0


def test_matthews_multiclass_matches_gorodkin():
    labels = [0, 1, 2, 2, 1, 0]
    preds = [0, 1, 2, 1, 1, 0]
    # confusion counts by hand: c=5, s=6, t=(2,2,2), p=(2,3,1)
    expected = (5 * 6 - (2 * 2 + 2 * 3 + 2 * 1)) / math.sqrt((36 - 14) * (36 - 12))
    assert gm.matthews_corrcoef(preds, labels) == pytest.approx(expected)
    # and, independently, the correlation of the centred one-hot indicator matrices
    x, y = np.eye(3)[labels], np.eye(3)[preds]
    x, y = x - x.mean(0), y - y.mean(0)
    assert expected == pytest.approx((x * y).sum() / math.sqrt((x * x).sum() * (y * y).sum()))


def test_pearson_known_value():
    # SciPy: pearsonr([1,2,3,4,5], [2,4,5,4,5]) = 0.7745966692414834 (= sqrt(0.6))
    assert gm.pearson([1, 2, 3, 4, 5], [2, 4, 5, 4, 5]) == pytest.approx(math.sqrt(0.6))
    assert math.isnan(gm.pearson([1, 1, 1], [1, 2, 3]))


def test_rankdata_averages_ties():
    assert gm.rankdata([10, 20, 20, 5, 20]).tolist() == [2.0, 4.0, 4.0, 1.0, 4.0]
    assert gm.rankdata([3.0, 1.0, 2.0]).tolist() == [3.0, 1.0, 2.0]


def test_spearman_known_value_with_ties():
    # SciPy: spearmanr([1,2,2,3,5], [1,3,2,4,4]) = 0.9473684210526317 (= 18/19)
    assert gm.spearman([1, 2, 2, 3, 5], [1, 3, 2, 4, 4]) == pytest.approx(18 / 19)
    # monotone but non-linear: Spearman 1, Pearson below 1
    x = [1, 2, 3, 4, 10]
    assert gm.spearman(x, np.exp(x)) == pytest.approx(1.0)
    assert gm.pearson(x, np.exp(x)) < 0.95


def test_mse():
    assert gm.mse([1.0, 2.0, 4.0], [1.0, 3.0, 2.0]) == pytest.approx(5 / 3)


@pytest.mark.parametrize(
    ("task", "keys", "primary"),
    [
        ("cola", ["matthews_correlation"], "matthews_correlation"),
        ("sst2", ["accuracy"], "accuracy"),
        ("mrpc", ["f1", "accuracy"], "f1"),
        ("qqp", ["accuracy", "f1"], "accuracy"),
        ("stsb", ["pearson", "spearman"], "pearson"),
        ("mnli", ["accuracy"], "accuracy"),
        ("qnli", ["accuracy"], "accuracy"),
        ("rte", ["accuracy"], "accuracy"),
        ("wnli", ["accuracy"], "accuracy"),
        ("binary", ["accuracy", "f1", "matthews_correlation"], "accuracy"),
        ("regression", ["pearson", "spearman", "mse"], "pearson"),
    ],
)
def test_each_task_reports_its_glue_metrics(task, keys, primary):
    preds, labels = ([0.1, 0.9, 0.4, 0.8], [0.0, 1.0, 0.5, 0.7]) if task in gm.REGRESSION_TASKS else (
        [0, 1, 1, 0], [0, 1, 0, 0]
    )  # fmt: skip
    metrics = gm.compute_metrics(task, preds, labels)
    assert list(metrics) == keys
    assert gm.primary_metric(task) == primary
    if task == "mrpc":  # tp 1, fp 1, fn 0; 3 of 4 right
        assert metrics == {"f1": pytest.approx(2 / 3), "accuracy": 0.75}


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="no metrics defined for task 'imdb'; valid: cola"):
        gm.compute_metrics("imdb", [0], [0])
    with pytest.raises(ValueError, match="equal length"):
        gm.accuracy([0, 1], [0])
    with pytest.raises(ValueError, match="zero examples"):
        gm.accuracy([], [])


def test_is_better_handles_nan_and_lower_is_better():
    assert gm.is_better("accuracy", 0.6, None)
    assert gm.is_better("accuracy", 0.6, 0.5) and not gm.is_better("accuracy", 0.5, 0.5)
    assert not gm.is_better("pearson", float("nan"), 0.1)
    assert gm.is_better("pearson", 0.1, float("nan"))
    assert gm.is_better("mse", 0.1, 0.2) and not gm.is_better("mse", 0.3, 0.2)
