"""The ablations of the paper's Figure 5 at GaLore rank d/4: the subspace update frequency T, the
rank, and a small rank trained longer against a large rank."""

from __future__ import annotations

import math
from typing import Any

from galorekit.reproduce.plan import Plan
from galorekit.reproduce.results import RunResult
from galorekit.reproduce.table import fmt_bytes, fmt_ppl, fmt_ratio, md_table


def _ppl(results: dict[str, RunResult], key: str) -> float | None:
    result = results.get(key)
    return result.eval_ppl if result is not None and result.ok else None


def _status(results: dict[str, RunResult], key: str) -> str:
    result = results.get(key)
    return result.status if result is not None else "not run"


def gap_rows(plan: Plan, results: dict[str, RunResult]) -> list[dict[str, Any]]:
    """T ablation: perplexity per T, relative to the best T."""
    ppls = [p for _, k in plan.gaps if (p := _ppl(results, k)) is not None]
    best = min(ppls) if ppls else None
    rows = []
    for gap, key in plan.gaps:
        spec = plan.runs[key]
        ppl = _ppl(results, key)
        rows.append(
            {
                "update_proj_gap": gap,
                "subspaces": math.ceil(spec.steps / gap),
                "gap_fraction_of_run": gap / spec.steps,
                "eval_ppl": ppl,
                "vs_best": (ppl / best - 1) if ppl is not None and best else None,
                "status": _status(results, key),
                "key": key,
            }
        )
    return rows


def rank_rows(plan: Plan, results: dict[str, RunResult]) -> list[dict[str, Any]]:
    """Rank ablation: perplexity and optimizer states per rank."""
    rows = []
    for divisor, key in plan.ranks:
        result = results.get(key)
        rows.append(
            {
                "rank_divisor": divisor,
                "rank": plan.runs[key].rank,
                "eval_ppl": _ppl(results, key),
                "optimizer_state_bytes": result.memory.get("optimizer_states") if result else None,
                "status": _status(results, key),
                "key": key,
            }
        )
    return rows


def long_rows(plan: Plan, results: dict[str, RunResult]) -> list[dict[str, Any]]:
    """Small rank for ``long_factor``× the steps against rank d/2 (the paper: rank 128 for 80K
    steps beats rank 512 for 20K at 130M)."""
    rows = []
    for label, key in plan.long:
        spec, result = plan.runs[key], results.get(key)
        rows.append(
            {
                "label": label,
                "rank": spec.rank,
                "steps": spec.steps,
                "tokens": spec.steps * plan.config.tokens_per_step,
                "eval_ppl": _ppl(results, key),
                "optimizer_state_bytes": result.memory.get("optimizer_states") if result else None,
                "seconds": result.seconds if result else None,
                "status": _status(results, key),
                "key": key,
            }
        )
    return rows


def ablation_tables(plan: Plan, results: dict[str, RunResult]) -> dict[str, list[dict[str, Any]]]:
    return {
        "update_proj_gap": gap_rows(plan, results),
        "rank": rank_rows(plan, results),
        "long": long_rows(plan, results),
    }


def _ppl_cell(row: dict[str, Any]) -> str:
    return fmt_ppl(row["eval_ppl"]) if row["status"] == "ok" else row["status"]


def ablations_markdown(tables: dict[str, list[dict[str, Any]]]) -> str:
    parts = []
    if tables["update_proj_gap"]:
        parts.append(
            md_table(
                ["T", "subspaces in the run", "T / run", "eval ppl", "vs best T"],
                [
                    [
                        str(r["update_proj_gap"]),
                        str(r["subspaces"]),
                        f"{r['gap_fraction_of_run']:.3g}",
                        _ppl_cell(r),
                        fmt_ratio(r["vs_best"]),
                    ]
                    for r in tables["update_proj_gap"]
                ],
            )
        )
    if tables["rank"]:
        parts.append(
            md_table(
                ["rank", "eval ppl", "optimizer states (fp32)"],
                [
                    [
                        f"d/{r['rank_divisor']} = {r['rank']}",
                        _ppl_cell(r),
                        fmt_bytes(r["optimizer_state_bytes"]),
                    ]
                    for r in tables["rank"]
                ],
            )
        )
    if tables["long"]:
        parts.append(
            md_table(
                ["run", "tokens", "eval ppl", "optimizer states (fp32)", "train time (s)"],
                [
                    [
                        r["label"],
                        f"{r['tokens']:,}",
                        _ppl_cell(r),
                        fmt_bytes(r["optimizer_state_bytes"]),
                        "–" if r["seconds"] is None else f"{r['seconds']:.0f}",
                    ]
                    for r in tables["long"]
                ],
            )
        )
    return "\n\n".join(parts)
