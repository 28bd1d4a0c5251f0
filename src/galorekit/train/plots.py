"""Plots of a run's metrics.jsonl (matplotlib, headless)."""

from __future__ import annotations

import math
import os
from pathlib import Path

from galorekit.atomic import atomic_path
from galorekit.train.logging import read_metrics


def plot_run(output_dir: str | os.PathLike[str], path: str | None = None) -> Path:
    """Training loss and evaluation perplexity against the step, as ``OUTPUT_DIR/curves.png``."""
    import matplotlib

    matplotlib.use("Agg")
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
    ax2.set_xlabel("step")
    ax2.set_ylabel("perplexity")
    ax2.set_title("validation perplexity")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    target = Path(path) if path else out / "curves.png"
    try:
        with atomic_path(target) as tmp:
            fig.savefig(tmp, dpi=110)
    finally:
        plt.close(fig)
    return target
