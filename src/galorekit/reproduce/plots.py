"""PNG plots of a reproduction (matplotlib, headless). Each function writes one file atomically and
returns its path, or None when there is nothing to plot."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from galorekit.atomic import atomic_path

# the [train] packages are imported in the functions that use them, through needs_extra: they
# take seconds to import, and the core install and `galore --help` import this module
from galorekit.extras import needs_extra
from galorekit.reproduce.plan import Plan
from galorekit.reproduce.results import RunResult
from galorekit.reproduce.theory import LAYER_TYPES


def _plt():
    with needs_extra("train"):
        import matplotlib

    matplotlib.use("Agg")
    with needs_extra("train"):
        import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    _plt().close(fig)
    return path


def _finite_curve(curve: list[list[float]], tokens_per_step: int = 1) -> tuple[list, list]:
    points = [(s * tokens_per_step, v) for s, v in curve if v is not None and math.isfinite(v)]
    return [p[0] for p in points], [p[1] for p in points]


def plot_table(plan: Plan, rows: list[dict[str, Any]], path: Path) -> Path | None:
    """Perplexity and optimizer-state memory per table row."""
    shown = [r for r in rows if r["eval_ppl"] is not None]
    if not shown:
        return None
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 0.45 * len(shown) + 1.8), sharey=True)
    labels = [r["label"] for r in shown]
    y = list(range(len(shown)))
    ax1.barh(y, [r["eval_ppl"] for r in shown], color="tab:blue")
    for i, r in enumerate(shown):
        ax1.text(r["eval_ppl"], i, f" {r['eval_ppl']:.1f}", va="center", fontsize=8)
    ax1.set_yticks(y, labels)
    ax1.invert_yaxis()
    ax1.set_xlabel("validation perplexity (lower is better)")
    ax1.set_title(f"{plan.config.model}, {plan.config.steps} steps")
    states = [(r["optimizer_state_bytes"] or 0) / 2**20 for r in shown]
    ax2.barh(y, states, color="tab:green")
    for i, s in enumerate(states):
        ax2.text(s, i, f" {s:.2f}", va="center", fontsize=8)
    ax2.set_xlabel("optimizer states, MiB (memory model, fp32)")
    ax2.set_title("optimizer-state memory")
    for ax in (ax1, ax2):
        ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def plot_curves(
    plan: Plan,
    entries: list[tuple[str, str]],
    results: dict[str, RunResult],
    path: Path,
    title: str,
) -> Path | None:
    """Validation perplexity against tokens for ``entries`` ([(label, key)])."""
    tps = plan.config.tokens_per_step
    lines = []
    for label, key in entries:
        result = results.get(key)
        if result is not None and result.eval_curve:
            xs, ys = _finite_curve(result.eval_curve, tps)
            if xs:
                lines.append((label, xs, ys))
    if not lines:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 5))
    for label, xs, ys in lines:
        ax.plot(xs, ys, marker="o", markersize=3, label=label)
    ax.set_yscale("log")
    ax.set_xlabel("training tokens")
    ax.set_ylabel("validation perplexity")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_lr_grid(grid: list[dict[str, Any]], path: Path) -> Path | None:
    """Perplexity against the LR per tuned method; diverged points marked on the top edge."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in grid:
        groups.setdefault(row["group"], []).append(row)
    if not any(r["eval_ppl"] is not None for r in grid):
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 5))
    finite = [r["eval_ppl"] for r in grid if r["eval_ppl"] is not None]
    top = max(finite) * 1.15
    for group, rows in groups.items():
        pts = sorted((r["lr"], r["eval_ppl"]) for r in rows if r["eval_ppl"] is not None)
        (line,) = ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=group)
        bad = [r["lr"] for r in rows if r["status"] == "diverged"]
        if bad:
            ax.scatter(bad, [top] * len(bad), marker="x", color=line.get_color())
        chosen = [(r["lr"], r["eval_ppl"]) for r in rows if r["chosen"]]
        if chosen:
            ax.scatter(*zip(*chosen), s=120, facecolors="none", edgecolors=line.get_color())
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("peak learning rate")
    ax.set_ylabel("validation perplexity")
    ax.set_title("LR grid (circled: chosen; ×: diverged)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_ablation_points(
    rows: list[dict[str, Any]], x_key: str, xlabel: str, path: Path, title: str, log_x: bool
) -> Path | None:
    pts = [(r[x_key], r["eval_ppl"]) for r in rows if r["eval_ppl"] is not None]
    if not pts:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o")
    for x, y in pts:
        ax.annotate(f"{y:.1f}", (x, y), textcoords="offset points", xytext=(0, 6), fontsize=8)
    if log_x:
        ax.set_xscale("log")
    ax.set_xticks([p[0] for p in pts], [str(p[0]) for p in pts])
    ax.set_xlabel(xlabel)
    ax.set_ylabel("validation perplexity")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_theory_type(theory: dict[str, Any], kind: str, path: Path) -> Path | None:
    """One layer type: top-r gradient energy (and the energy GaLore's projector captured) and the
    stable rank, against the step, one line per layer."""
    entries = sorted(
        (e for e in theory["matrices"].values() if e["type"] == kind and e["steps"]),
        key=lambda e: e["layer"] if e["layer"] is not None else -1,
    )
    if not entries:
        return None
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, e in enumerate(entries):
        c = colors[i % len(colors)]
        name = f"layer {e['layer']}"
        ax1.plot(e["steps"], e["energy"], color=c, label=f"{name}: top-{e['rank']}")
        ax1.plot(e["steps"], e["captured"], color=c, linestyle="--", alpha=0.7)
        ax2.plot(e["steps"], e["stable_rank"], color=c, label=name)
        for s in e["refresh_steps"]:
            ax1.axvline(s, color="grey", alpha=0.15, linewidth=0.8)
    shape = "×".join(str(d) for d in entries[0]["shape"])
    ax1.set_title(f"{kind} ({shape}): gradient energy in top-r directions")
    ax1.set_xlabel("step (grey: subspace refreshes; dashed: GaLore's projector)")
    ax1.set_ylabel("fraction of ‖G‖²")
    ax1.set_ylim(0, 1.02)
    ax2.set_title(f"{kind}: stable rank ‖G‖²_F / ‖G‖²_2")
    ax2.set_xlabel("step")
    ax2.set_yscale("log")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, path)


def plot_theory_overlap(theory: dict[str, Any], path: Path) -> Path | None:
    """Overlap of successive projectors at each refresh, per layer type (mean over layers; bars:
    min–max), with the overlap of random subspaces."""
    by_type: dict[str, dict[int, list[float]]] = {}
    baseline: dict[str, float] = {}
    for e in theory["matrices"].values():
        for step, value in zip(e["refresh_steps"], e["overlap"]):
            by_type.setdefault(e["type"], {}).setdefault(step, []).append(value)
        if e.get("random_overlap") is not None:
            baseline[e["type"]] = e["random_overlap"]
    if not by_type:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 5))
    kinds = [k for k in LAYER_TYPES if k in by_type] + sorted(set(by_type) - set(LAYER_TYPES))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, kind in enumerate(kinds):
        steps = sorted(by_type[kind])
        means = [sum(by_type[kind][s]) / len(by_type[kind][s]) for s in steps]
        lo = [m - min(by_type[kind][s]) for m, s in zip(means, steps)]
        hi = [max(by_type[kind][s]) - m for m, s in zip(means, steps)]
        c = colors[i % len(colors)]
        ax.errorbar(steps, means, yerr=[lo, hi], marker="o", capsize=3, color=c, label=kind)
        if kind in baseline:
            ax.axhline(baseline[kind], color=c, linestyle=":", alpha=0.6)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("refresh step")
    ax.set_ylabel("‖P_oldᵀ P_new‖²_F / r")
    ax.set_title("subspace overlap at refreshes (dotted: random subspaces)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)
