"""Stacked memory bars per method, like Figure 1 of the GaLore paper (matplotlib, Agg backend)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from galorekit.atomic import atomic_path
from galorekit.extras import needs_extra
from galorekit.memory.estimator import COMPONENT_NAMES, COMPONENTS, MemoryEstimate
from galorekit.units import in_unit

_COLORS = {
    "weights": "#4C72B0",
    "gradients": "#DD8452",
    "optimizer_states": "#55A868",
    "activations": "#8172B3",
}


def plot_estimates(
    estimates: Sequence[MemoryEstimate],
    path: str | os.PathLike,
    *,
    title: str = "",
    unit: str = "GB",
    budget: int | None = None,
) -> Path:
    """Write a PNG of one horizontal stacked bar per estimate; returns the path.

    ``budget`` (bytes) draws a dashed line. The file is written atomically.
    """
    if not estimates:
        raise ValueError("nothing to plot: no estimates")
    # matplotlib: optional (galorekit[train]) and slow to import, so loaded only to draw
    with needs_extra("train"):
        import matplotlib

    matplotlib.use("Agg", force=True)
    with needs_extra("train"):
        import matplotlib.pyplot as plt

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"--plot writes a PNG; give a file name ending in .png, got {str(path)!r}")
    labels = [e.setup.label() for e in estimates]
    fig, ax = plt.subplots(figsize=(9, 0.55 * len(estimates) + 1.8))
    left = [0.0] * len(estimates)
    ys = list(range(len(estimates)))[::-1]  # first estimate on top
    for key in COMPONENTS:
        widths = [in_unit(getattr(e, key), unit) for e in estimates]
        ax.barh(ys, widths, left=left, color=_COLORS[key], label=COMPONENT_NAMES[key], height=0.65)
        left = [a + b for a, b in zip(left, widths)]
    for y, total in zip(ys, left):
        ax.text(total, y, f" {total:.2f}", va="center", fontsize=8)
    if budget is not None:
        ax.axvline(in_unit(budget, unit), color="black", linestyle="--", linewidth=1)
        ax.text(
            in_unit(budget, unit),
            max(ys) + 0.5,
            f" budget {in_unit(budget, unit):.1f}",
            fontsize=8,
            va="bottom",
        )
    ax.set_yticks(ys)
    ax.set_yticklabels(labels, fontsize=8)
    ax.set_xlabel(f"memory ({unit})")
    ax.set_xlim(0, max([*left, in_unit(budget or 0, unit)]) * 1.15)
    if title:
        ax.set_title(title, fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=120, format="png")
    finally:
        plt.close(fig)
    return path
