"""The reproduction's report: ``results.json`` (every number, every grid point), ``reproduce.md``
(the tables and the verdict on each claim) and ``plots/*.png``, from the cached run results."""

from __future__ import annotations

import math
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import galorekit
from galorekit.atomic import atomic_write_json, atomic_write_text
from galorekit.reproduce import per_group, successors
from galorekit.reproduce import plots as P
from galorekit.reproduce.ablations import ablation_tables, ablations_markdown
from galorekit.reproduce.claims import ablation_claims, table_claims, theory_claims
from galorekit.reproduce.plan import QUICK_NOTE, SECTIONS, Plan
from galorekit.reproduce.results import RunResult, finite_json, load_results
from galorekit.reproduce.table import fmt_ppl, md_table, row_label, table_markdown, table_rows
from galorekit.reproduce.theory import LAYER_TYPES, theory_data
from galorekit.reproduce.tuning import TuningError, best_lr, grid_done, grid_report

PLOTS_DIR = "plots"


@dataclass
class Report:
    data: dict[str, Any]
    markdown: str
    plots: list[Path] = field(default_factory=list)


def environment() -> dict[str, Any]:
    try:
        from importlib.metadata import version

        galore_torch = version("galore-torch")
    except Exception:  # not installed
        galore_torch = None
    return {
        "galorekit": galorekit.__version__,
        "torch": torch.__version__,
        "galore_torch": galore_torch,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
    }


def _run_summary(result: RunResult) -> dict[str, Any]:
    data = result.to_dict()
    data.pop("theory", None)  # the per-matrix series stay in runs/<key>.json
    return data


def build_report(
    plan: Plan,
    results: dict[str, RunResult],
    *,
    sections: tuple[str, ...] = SECTIONS,
    command: str = "",
    env: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything ``results.json`` holds (JSON-ready)."""
    tuned = {}
    for group in plan.grid:
        if grid_done(plan, group, results):
            try:
                tuned[group] = best_lr(plan, group, results)
            except TuningError:
                tuned[group] = None
    data: dict[str, Any] = {
        "command": command,
        "generated_at": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "environment": env if env is not None else environment(),
        "plan": plan.config.to_dict(),
        "hidden_size": plan.hidden_size,
        "sections": list(sections),
        "lr_grid": grid_report(plan, results),
        "tuned_lr": tuned,
    }
    claims: list[dict[str, str]] = []
    if "table" in sections:
        data["table"] = table_rows(plan, results)
        claims += table_claims(plan, results)
    if "ablations" in sections:
        tables = ablation_tables(plan, results)
        data["ablations"] = tables
        claims += ablation_claims(tables)
    if "theory" in sections and plan.theory:
        data["theory"] = theory_data(plan, results)
        claims += theory_claims(data["theory"].get("summary"))
    if "successors" in sections and plan.successors:
        data["successors"] = successors.build(plan, results)
    data["claims"] = smoke_test_verdicts(claims) if plan.config.name == "quick" else claims
    if plan.config.per_group:
        data["per_group"] = per_group.build(plan, results, sections)
    keys = [k for s in sections for k in plan.section_keys(s)]
    keys += [k for group in plan.grid for k in plan.tuning_keys(group)]
    data["runs"] = {k: _run_summary(results[k]) for k in dict.fromkeys(keys) if k in results}
    return data


# ---------------------------------------------------------------------------------- markdown
def _plan_lines(plan: Plan, data: dict[str, Any]) -> list[str]:
    cfg = plan.config
    env = data["environment"]
    if cfg.data_files:
        corpus = "local files " + ", ".join(cfg.data_files)
    elif cfg.dataset == "default":
        corpus = "offline KJV + Shakespeare (`default`)"
    else:
        corpus = f"`{cfg.dataset}`"
    lines = [
        f"- command: `{data['command']}`" if data["command"] else "",
        f"- model: `{cfg.model}` (d = {plan.hidden_size}), {cfg.vocab_size}-token BPE on the "
        f"{corpus} corpus, float32 on {cfg.device}, seed {cfg.seed} for every run (same "
        "initialisation, same data order)",
        f"- a table row: {cfg.steps} steps × {cfg.batch_size} sequences × {cfg.seq_len} tokens "
        f"= {cfg.steps * cfg.tokens_per_step:,} tokens; warm-up 10%, cosine decay to 10% of the "
        f"peak LR, gradient clipping 1.0, Adam β = (0.9, 0.999); GaLore α = {cfg.scale}, "
        f"T = {cfg.update_proj_gap} (except the T ablation); eval on {cfg.val_sequences} "
        "held-out sequences",
    ]
    if cfg.tuned:
        lrs = ", ".join(f"{lr:g}" for lr in cfg.lr_grid)
        lines.append(
            f"- learning rates: tuned per method over {{{lrs}}} (the paper tuned over "
            f"{{0.01, 0.005, 0.001, 0.0005, 0.0001}}) on "
            + (
                "full-length runs, best validation perplexity: a row is its method's best grid run"
                if cfg.grid_steps == cfg.steps
                else f"{cfg.grid_steps}-step runs ({cfg.grid_fraction:.0%} of a row), best "
                "validation perplexity"
            )
            + "; GaLore d/2, galore-torch and the ablations use GaLore d/4's LR"
        )
    else:
        fixed = ", ".join(f"{m} {lr:g}" for m, lr in cfg.fixed_lrs)
        lines.append(
            "- learning rates: not tuned here; "
            + (
                f"fixed: {fixed} (the best of a short pilot, see `galorekit/reproduce/plan.py`); "
                if fixed
                else ""
            )
            + "others at `galore pretrain`'s default"
        )
    lines.append(
        f"- environment: galorekit {env.get('galorekit')}, torch {env.get('torch')}, galore-torch "
        f"{env.get('galore_torch')}, Python {env.get('python')}, {env.get('cpu_count')} CPUs; "
        "one thread per run; times are wall-clock and move with whatever else the machine runs "
        "(CPU seconds are the steadier measure)"
    )
    return [line for line in lines if line]


def smoke_test_verdicts(claims: list[dict[str, str]]) -> list[dict[str, str]]:
    """A --quick plan's claims: a few dozen steps on a few rows, so whatever the rule says is not
    a finding (the committed full run's verdicts are, and they may disagree)."""
    return [{**c, "verdict": f"smoke test only ({c['verdict']})"} for c in claims]


def _claims_markdown(claims: list[dict[str, str]]) -> str:
    return md_table(
        ["claim", "paper", "ours", "verdict", "rule"],
        [[c["claim"], c["paper"], c["ours"], f"**{c['verdict']}**", c["rule"]] for c in claims],
    )


def _grid_markdown(grid: list[dict[str, Any]]) -> str:
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in grid:
        groups.setdefault(row["group"], []).append(row)
    lrs = sorted({row["lr"] for row in grid}, reverse=True)
    body = []
    for group, rows in groups.items():
        by_lr = {r["lr"]: r for r in rows}
        cells = []
        for lr in lrs:
            r = by_lr.get(lr)
            if r is None:
                cells.append("")
            elif r["eval_ppl"] is None:
                cells.append(r["status"])
            else:
                text = fmt_ppl(r["eval_ppl"])
                cells.append(f"**{text}**" if r["chosen"] else text)
        body.append([group, *cells])
    return md_table(["method", *[f"lr {lr:g}" for lr in lrs]], body)


def _theory_markdown(theory: dict[str, Any]) -> str:
    summary = theory.get("summary")
    if not summary:
        return f"Theory run: {theory['status']}."
    rows = []
    for kind in [k for k in LAYER_TYPES if k in summary] + sorted(set(summary) - set(LAYER_TYPES)):
        s = summary[kind]

        def f(x: float | None, digits: int = 3) -> str:
            return "–" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"

        rows.append(
            [
                kind,
                "×".join(map(str, s["shape"])),
                str(s["rank"]),
                f"{f(s['energy_first'])} → {f(s['energy_last_quarter'])}",
                f"{f(s['stable_rank_first'], 2)} → {f(s['stable_rank_last_quarter'], 2)}",
                f(s["captured_mean"]),
                f"{f(s['overlap_mean'])} ({s['refreshes']})",
                f(s["random_overlap"]),
            ]
        )
    table = md_table(
        [
            "layer",
            "shape",
            "r",
            "top-r energy (first → last quarter)",
            "stable rank (first → last quarter)",
            "energy in GaLore's subspace (mean)",
            "overlap at refreshes (count)",
            "random overlap",
        ],
        rows,
    )
    lines = [
        f"GaLore rank {theory.get('rank')}, T = {theory.get('update_proj_gap')}, measured every "
        f"{theory.get('every')} steps on every targeted matrix (means over the layers of a type).",
    ]
    if theory.get("table_galore_ppl") is not None and theory.get("eval_ppl") is not None:
        lines.append(
            f"The instrumented run ends at perplexity {theory['eval_ppl']:.2f}; the table's "
            f"GaLore d/4 run with the same settings at {theory['table_galore_ppl']:.2f}."
        )
    return "\n\n".join([" ".join(lines), table])


def render_markdown(plan: Plan, data: dict[str, Any], plots: list[Path], out: Path) -> str:
    cfg = plan.config
    fair = data.get("per_group")
    parts = [
        f"# GaLore at laptop scale — `galore reproduce` (plan {cfg.name!r})",
        "\n".join(_plan_lines(plan, data)),
        "## What reproduced",
        QUICK_NOTE if plan.config.name == "quick" else "",
        "One seed per run: read gaps of about 1% as ties.",
    ]
    if fair is not None:
        parts += [
            "### Per-group-tuned LRs (every method's other parameters at their own tuned LR)",
            _claims_markdown(fair["claims"]) if fair["claims"] else "(no section run)",
            "### The paper's protocol (one LR per run)",
        ]
    parts.append(_claims_markdown(data["claims"]) if data["claims"] else "(no section run)")
    if fair is not None:
        parts += _per_group_markdown(plan, fair)
    if "table" in data:
        parts += [
            "## Table 2 at laptop scale" + (" — the paper's protocol (one LR)" if fair else ""),
            "Optimizer states from `galorekit.memory` (float32, as trained); the paper's Table 2 "
            "convention, BF16 weights + optimizer states, next to it. Paper: LLaMA 60M on C4, "
            "1.1B tokens.",
            table_markdown(data["table"]),
        ]
    if data["lr_grid"]:
        parts += [
            "## Learning-rate grid",
            f"Validation perplexity after {cfg.grid_steps} steps; bold: chosen.",
            _grid_markdown(data["lr_grid"]),
        ]
    if "ablations" in data:
        parts += [
            "## Ablations (GaLore, rank d/4 unless stated)",
            ablations_markdown(data["ablations"]),
        ]
    if "theory" in data:
        parts += ["## Low-rank gradients, observed", _theory_markdown(data["theory"])]
    if fair is not None and "theory" in fair:
        parts += [
            "## Low-rank gradients, observed — per-group-tuned LRs",
            _theory_markdown(fair["theory"]),
        ]
    if "successors" in data:
        parts += _successors_markdown(plan, data["successors"])
    if plots:
        parts += [
            "## Plots",
            "\n".join(f"![{p.stem}]({p.relative_to(out).as_posix()})" for p in plots),
        ]
    return "\n\n".join(parts) + "\n"


def _per_group_markdown(plan: Plan, fair: dict[str, Any]) -> list[str]:
    cfg = plan.config
    ratios = ", ".join(f"{r:g}" for r in cfg.lr_other_ratios)
    search = (
        f"then the matrix LR × and ÷ {cfg.lr_neighbour_factor:g} at that ratio, keeping the "
        "best of the three (every per-group run — rows, ablations, tokens per step, theory, "
        "successors — trains at this final pair)"
        if cfg.lr_neighbour_factor
        else "the matrix LR is not searched again at that ratio"
    )
    parts = []
    if "table" in fair:
        parts += [
            "## Table 2 at laptop scale — per-group-tuned LRs",
            "Every method's parameters outside its matrices (embeddings, output head, norms: "
            "plain Adam in every method) train at `--lr-other-ratio` × its matrix LR. The same "
            f"search for every method: its matrix LR from the LR grid, then the ratio over "
            f"{{{ratios}}} at that LR (1 is the paper's protocol's run), {search}; GaLore d/2 "
            "and galore-torch take GaLore d/4's pair. LR column: matrix LR; other LR (ratio).",
            table_markdown(fair["table"]),
        ]
    if fair["ratio_grid"]:
        parts += [
            "## Other-parameter LR ratio grid",
            f"Validation perplexity after {cfg.steps} steps at each method's tuned matrix LR; "
            "bold: chosen.",
            per_group.ratio_grid_markdown(fair["ratio_grid"]),
        ]
    if fair.get("neighbours"):
        parts += [
            "## The matrix LR searched again at the chosen ratio",
            f"Validation perplexity at the ratio grid's winner and at its matrix LR × and ÷ "
            f"{cfg.lr_neighbour_factor:g}; bold: the final pair (an edge winner is marked: the "
            "search stops after one step).",
            per_group.neighbours_markdown(fair["neighbours"]),
        ]
    if fair.get("batch"):
        parts += [
            "## Tokens per step (per-group-tuned LRs)",
            "The same tokens in fewer, larger steps (the paper: 131K tokens a step; here 1K). "
            "The LRs (matrix and other) are the 1× batch's per-group-tuned ones, not tuned "
            "again for the larger batches (one rule for both methods; a larger batch usually "
            "wants a larger LR, so the larger batches are under-tuned alike); GaLore's T stays "
            f"{cfg.update_proj_gap} steps, so the larger batches have fewer subspaces.",
            per_group.batch_markdown(fair["batch"]),
        ]
    if "ablations" in fair:
        parts += [
            "## Ablations under per-group-tuned LRs (GaLore, rank d/4 unless stated)",
            ablations_markdown(fair["ablations"]),
        ]
    return parts


def _successors_markdown(plan: Plan, data: dict[str, Any]) -> list[str]:
    cfg = plan.config
    lrs = ", ".join(f"{lr:g}" for lr in cfg.lr_grid)
    search = "its own matrix-LR grid {" + lrs + "}"
    if plan.successors_tuned:
        ratios = ", ".join(f"{r:g}" for r in cfg.lr_other_ratios)
        search += f", then the other parameters' ratio over {{{ratios}}}"
        if cfg.lr_neighbour_factor:
            search += f", then the matrix LR × and ÷ {cfg.lr_neighbour_factor:g} at that ratio"
    parts = [
        "## GaLore's successors",
        f"Each successor at rank d/4 = {plan.rank(4)} (APOLLO-Mini: rank 1, its own), "
        f"T = {cfg.update_proj_gap}, its own α (APOLLO 1, APOLLO-Mini √128; the others "
        f"GaLore's {cfg.scale:g}), tuned by exactly the search the table's rows get: {search}. "
        "Q-GaLore, GoLore and 8-bit GaLore do not share GaLore's grid: each searches its own. "
        "AdamW, GaLore d/4 and 8-bit GaLore d/4 (Q-GaLore's control) are the table's rows (the "
        "same runs). Optimizer state: every "
        "tensor held after a step (`galorekit.reproduce.states`, as `benchmarks/successors.py`); "
        "attention/MLP: the memory model's part for the matrices GaLore projects (AdamW: the "
        "same matrices at full rank). Papers: LLaMA 60M on C4 (Fira, APOLLO; GaLore's Table 2).",
        "**The paper's protocol** (one LR per run: the ratio-1 runs of the search):",
        successors.markdown(data["paper_protocol"]),
    ]
    if "per_group" in data:
        parts += ["**Per-group-tuned LRs**:", successors.markdown(data["per_group"])]
    return parts


# ---------------------------------------------------------------------------------- writing
def write_plots(plan: Plan, data: dict[str, Any], results: dict[str, RunResult], out: Path):
    folder = out / PLOTS_DIR
    written: list[Path | None] = []
    if "table" in data:
        written.append(P.plot_table(plan, data["table"], folder / "table.png"))
        entries = [(row_label(plan, row), key) for row, key in plan.table]
        written.append(
            P.plot_curves(plan, entries, results, folder / "table_curves.png", "Table 2 rows")
        )
    if "table" in data.get("per_group", {}):
        tuned = per_group.view(plan)
        written.append(
            P.plot_table(tuned, data["per_group"]["table"], folder / "table_per_group.png")
        )
        entries = [(row_label(plan, row), key) for row, key in plan.table_tuned]
        written.append(
            P.plot_curves(
                plan,
                entries,
                results,
                folder / "table_per_group_curves.png",
                "Table 2 rows, per-group-tuned LRs",
            )
        )
    if data["lr_grid"]:
        written.append(P.plot_lr_grid(data["lr_grid"], folder / "lr_grid.png"))
    if "ablations" in data:
        tables = data["ablations"]
        written.append(
            P.plot_ablation_points(
                tables["update_proj_gap"],
                "update_proj_gap",
                "T (steps between subspace refreshes)",
                folder / "ablation_T.png",
                "GaLore d/4: update frequency",
                log_x=True,
            )
        )
        written.append(
            P.plot_curves(
                plan,
                [(f"T = {g}", k) for g, k in plan.gaps],
                results,
                folder / "ablation_T_curves.png",
                "GaLore d/4: update frequency T",
            )
        )
        written.append(
            P.plot_ablation_points(
                tables["rank"], "rank", "rank", folder / "ablation_rank.png", "GaLore: rank", True
            )
        )
        if plan.long:
            written.append(
                P.plot_curves(
                    plan, plan.long, results, folder / "ablation_long.png", "small rank, longer"
                )
            )
    theory_result = results.get(plan.theory) if plan.theory else None
    if "theory" in data and theory_result is not None and theory_result.theory:
        for kind in LAYER_TYPES:
            written.append(
                P.plot_theory_type(theory_result.theory, kind, folder / f"theory_{kind}.png")
            )
        written.append(P.plot_theory_overlap(theory_result.theory, folder / "theory_overlap.png"))
    return [p for p in written if p is not None]


def write_report(
    plan: Plan,
    out: Path,
    *,
    sections: tuple[str, ...] = SECTIONS,
    command: str = "",
    env: dict[str, Any] | None = None,
) -> Report:
    """Read the cached results in ``out`` and write ``results.json``, ``reproduce.md`` and
    ``plots/`` for ``sections``."""
    results = load_results(out, list(plan.runs))
    data = build_report(plan, results, sections=sections, command=command, env=env)
    plots = write_plots(plan, data, results, out)
    data["plots"] = [p.relative_to(out).as_posix() for p in plots]
    markdown = render_markdown(plan, data, plots, out)
    atomic_write_json(out / "results.json", finite_json(data), allow_nan=False)
    atomic_write_text(out / "reproduce.md", markdown)
    return Report(data=data, markdown=markdown, plots=plots)
