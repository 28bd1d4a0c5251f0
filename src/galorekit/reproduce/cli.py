"""``galore reproduce``: the paper's Table 2, Figure 5 ablations and low-rank-gradient theory at
laptop scale (plan: ``galorekit.reproduce.plan``).

Like the other commands this module exposes ``add_arguments(parser)`` and ``run(args) -> int`` and
imports nothing heavy at module level (``galore --help`` stays fast).
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import shlex
import sys
from pathlib import Path

from galorekit.extras import report_missing_extra
from galorekit.names import GALORE_TORCH_INSTALL
from galorekit.reproduce.plan import (
    FULL_PLAN_CPU_S_PER_STEP,
    QUICK_NOTE,
    Plan,
    RunSpec,
    build_plan,
    full_plan_config,
    quick_plan_config,
)
from galorekit.reproduce.results import load_result
from galorekit.reproduce.table import md_table, table_markdown

SECTIONS = (
    "table",
    "batch",
    "ablations",
    "theory",
    "successors",
)  # = galorekit.reproduce.plan.SECTIONS (torch-free)
DEFAULT_OUTPUT = "benchmarks/results/reproduce"
DEFAULT_QUICK_OUTPUT = "runs/reproduce-quick"


def describe(plan: Plan, specs: list[RunSpec], jobs: int = 2) -> str:
    """Plan summary for the terminal: runs, steps and tokens, and the time estimate when the
    plan's model and batch are the measured ones."""
    cfg = plan.config
    steps = plan.total_steps(specs)
    lines = [
        f"plan {cfg.name!r}: {cfg.model} (d = {plan.hidden_size}), {cfg.batch_size} × "
        f"{cfg.seq_len} tokens a step, {cfg.steps} steps a row "
        f"({cfg.steps * cfg.tokens_per_step:,} tokens), seed {cfg.seed}",
        f"{sum(not plan.repeats_grid(s) for s in specs)} runs, {steps:,} steps "
        f"({steps * cfg.tokens_per_step:,} tokens)",
    ]
    measured = (cfg.model, cfg.vocab_size, cfg.batch_size, cfg.seq_len) == (
        "llama_9m",
        4096,
        8,
        128,
    )
    if measured:
        cpu = steps * FULL_PLAN_CPU_S_PER_STEP * 1.1  # + evaluations and start-up
        lines.append(
            f"≈ {math.ceil(cpu / 60):,} CPU-min (measured {FULL_PLAN_CPU_S_PER_STEP} CPU-s a "
            f"step, + 10% for evaluations): ≈ {math.ceil(cpu / 60 / jobs):,} min with {jobs} "
            "worker(s) on idle cores, more on a loaded machine"
        )
    return "\n".join(lines)


def _sections(text: str) -> list[str]:
    """``--only``'s value: one section or a comma-separated list."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"no section named; valid: {', '.join(SECTIONS)}")
    for name in names:
        if name not in SECTIONS:
            raise argparse.ArgumentTypeError(
                f"unknown section {name!r}; valid: {', '.join(SECTIONS)}"
            )
    return names


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = (
        "Every run uses the same model initialisation and data order (--seed). A finished run is "
        "cached in OUTPUT_DIR/runs/ and never run again: rerun the same command to continue an "
        "interrupted reproduction. Results: OUTPUT_DIR/reproduce.md, results.json, plots/."
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="a few minutes: 60 steps, 4 table rows, 2 ablation runs, the theory run, no LR "
        "grid (so no successors section)",
    )
    p.add_argument(
        "--only",
        type=_sections,
        action="append",
        metavar="SECTION",
        help=f"run and report only these sections ({', '.join(SECTIONS)}); repeatable or "
        "comma-separated (the LR grids they need are run too). Default: all",
    )
    p.add_argument(
        "--steps",
        type=_positive,
        default=None,
        help="token budget of a table row, in steps (default: 400, --quick 60); LR-grid runs "
        "are as long (a row is its grid's winning run), the long small-rank run 4×",
    )
    p.add_argument("--seed", type=_integer, default=0, help="seed of every run (default 0)")
    p.add_argument(
        "--jobs",
        type=_positive,
        default=2,
        help="worker processes, one thread each (default 2; 1: run in this process)",
    )
    p.add_argument(
        "--output-dir",
        default=None,
        help=f"default {DEFAULT_OUTPUT} ({DEFAULT_QUICK_OUTPUT} with --quick)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="start again: remove the results galore reproduce wrote in --output-dir (needed "
        "when they come from another plan: other --steps, --seed, --quick)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the runs (and which are cached) without running or writing anything",
    )


def command_line(args: argparse.Namespace, out: Path, sections: tuple[str, ...]) -> str:
    parts = ["galore", "reproduce"]
    if args.quick:
        parts.append("--quick")
    if args.steps is not None:
        parts += ["--steps", str(args.steps)]
    if args.seed:
        parts += ["--seed", str(args.seed)]
    if tuple(sections) != SECTIONS:
        parts += ["--only", ",".join(sections)]
    parts += ["--jobs", str(args.jobs), "--output-dir", str(out)]
    return shlex.join(parts)


def plan_config_from_args(args: argparse.Namespace):
    overrides = {"seed": args.seed}
    if args.steps is not None:
        overrides["steps"] = args.steps
    return (quick_plan_config if args.quick else full_plan_config)(**overrides)


def _dry_run(plan, specs, out: Path, overwrite: bool) -> int:
    # runner and report import torch and the training code: only a run needs them, and
    # ``galore --help`` imports this module
    from galorekit.reproduce.runner import check_output_dir

    check_output_dir(plan, out, overwrite=overwrite)
    for spec in specs:
        cached = not overwrite and load_result(out, spec.key) is not None
        status = "cached " if cached else ("reuses " if plan.repeats_grid(spec) else "to run ")
        lr = f"lr {spec.lr:g}" if spec.lr is not None else f"lr tuned ({spec.lr_group})"
        if spec.lr_step:
            lr += f" {'×' if spec.lr_step > 0 else '÷'} {plan.config.lr_neighbour_factor:g}"
        if spec.ratio != 1:
            lr += f", other params ×{spec.ratio:g}" if spec.ratio else ", other params' ratio tuned"
        if spec.batch_size:
            lr += f", batch {spec.batch_size}"
        print(f"  {status} {spec.key}  [{spec.steps} steps, {lr}]")
    return 0


def _warn_missing_reference(specs) -> None:
    if any(s.method == "galore_torch_adamw" for s in specs) and (
        importlib.util.find_spec("galore_torch") is None
    ):
        print(
            "galore reproduce: warning: galore-torch is not installed, so its reference row will "
            f"fail (the others run); install it with `{GALORE_TORCH_INSTALL}`",
            file=sys.stderr,
        )


def run(args: argparse.Namespace) -> int:
    """Run ``galore reproduce``; returns the exit status (see the end of ``_run``)."""
    return report_missing_extra("reproduce", lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    # torch and the training code (see _dry_run)
    from galorekit.reproduce.report import write_report
    from galorekit.reproduce.runner import prepare_output_dir, run_plan, warm_data_cache

    sections = tuple(dict.fromkeys(s for group in (args.only or [SECTIONS]) for s in group))
    sections = tuple(s for s in SECTIONS if s in sections)  # report order
    out = Path(args.output_dir or (DEFAULT_QUICK_OUTPUT if args.quick else DEFAULT_OUTPUT))
    try:
        plan = build_plan(plan_config_from_args(args))
        empty = [s for s in sections if args.only and not plan.section_keys(s)]
        if empty:
            raise ValueError(
                f"the {plan.config.name} plan has no {', '.join(empty)} section (the successors "
                "are compared at tuned LRs: the full plan)"
            )
        specs = plan.select(sections)
        print(describe(plan, specs, args.jobs), file=sys.stderr)
        print(f"output: {out}  sections: {', '.join(sections)}", file=sys.stderr)
        if args.dry_run:
            return _dry_run(plan, specs, out, args.overwrite)
        prepare_output_dir(plan, out, overwrite=args.overwrite)
    except (ValueError, FileExistsError) as err:
        print(f"galore reproduce: error: {err}", file=sys.stderr)
        return 2
    _warn_missing_reference(specs)
    warm_data_cache(plan)
    summary = run_plan(plan, specs, out, jobs=args.jobs)
    report = write_report(plan, out, sections=sections, command=command_line(args, out, sections))
    claims = report.data.get("claims", [])
    if claims and args.quick:
        print(QUICK_NOTE)
    if claims:
        print(
            md_table(
                ["claim", "ours", "verdict"],
                [[c["claim"], c["ours"], c["verdict"]] for c in claims],
            )
        )
    if "table" in report.data:
        print("\n" + table_markdown(report.data["table"]))
    print(
        f"\nreport: {out / 'reproduce.md'}   data: {out / 'results.json'}   plots: {out / 'plots'}"
    )
    ran = len(summary.executed)
    print(f"{ran} runs executed, {len(summary.cached)} reused from the cache", file=sys.stderr)
    for key, error in {**summary.failed, **summary.blocked}.items():
        print(f"galore reproduce: run {key} did not finish: {error}", file=sys.stderr)
    if summary.interrupted:
        print(
            "galore reproduce: interrupted; rerun the same command to continue (finished runs "
            "are kept, unfinished ones start again)",
            file=sys.stderr,
        )
        return 130
    return 0 if summary.ok else 1
