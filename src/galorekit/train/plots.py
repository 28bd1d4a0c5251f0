"""Plots of a run's metrics.jsonl (matplotlib, headless)."""

from __future__ import annotations

import math
import os
from pathlib import Path

from galorekit.atomic import atomic_path
from galorekit.extras import needs_extra
from galorekit.train.logging import read_metrics


def plot_run(
    output_dir: str | os.PathLike[str], path: str | None = None, title: str | None = None
) -> Path:
    """Training loss and evaluation perplexity against the step, as ``OUTPUT_DIR/curves.png``;
    ``title`` (e.g. model and method) heads the figure."""
    with needs_extra("train"):
        import matplotlib

    matplotlib.use("Agg")
    with needs_extra("train"):
        import matplotlib.pyplot as plt

    out = Path(output_dir)
    events = read_metrics(out)
    train = [(e["step"], e["loss"]) for e in events if e.get("event") == "train"]
    evals = [(e["step"], e["eval_ppl"]) for e in events if e.get("event") == "eval"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    if train:
        ax1.plot(*zip(*train), label="train loss")
    ax1.set_xlabel("step")
    ax1.set_ylabel("loss")
    ax1.set_title("training loss")
    ax1.grid(alpha=0.3)
    finite = [(s, p) for s, p in evals if isinstance(p, (int, float)) and math.isfinite(p)]
    if finite:
        ax2.plot(*zip(*finite), marker="o", color="tab:orange")
        ax2.set_yscale("log")
        # a log axis spanning less than a decade gets one or two labels by default: label the
        # minor ticks too, in plain numbers
        with needs_extra("train"):
            from matplotlib.ticker import LogLocator, ScalarFormatter

        ax2.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax2.yaxis.set_minor_locator(LogLocator(base=10, subs=tuple(range(1, 10))))
        ax2.yaxis.set_major_formatter(ScalarFormatter())
        ax2.yaxis.get_major_formatter().set_scientific(False)
        ppl = [p for _, p in finite]
        if max(ppl) < 20 * min(ppl):  # a narrow range: the minor ticks need labels as well
            ax2.yaxis.set_minor_formatter(ScalarFormatter())
            ax2.yaxis.get_minor_formatter().set_scientific(False)
    ax2.set_xlabel("step")
    ax2.set_ylabel("perplexity")
    ax2.set_title("validation perplexity")
    ax2.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    target = Path(path) if path else out / "curves.png"
    try:
        with atomic_path(target) as tmp:
            fig.savefig(tmp, dpi=110)
    finally:
        plt.close(fig)
    return target
