"""The per-group protocol's part of the report: the table, claims and ablations with every
method's other parameters (embeddings, head, norms) at their own tuned LR, the ratio grid, and
the tokens-per-step rows."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from galorekit.reproduce.ablations import ablation_tables
from galorekit.reproduce.claims import ablation_claims, table_claims, theory_claims
from galorekit.reproduce.plan import Plan
from galorekit.reproduce.results import RunResult
from galorekit.reproduce.table import fmt_ppl, fmt_ratio, lr_cell, md_table, table_rows
from galorekit.reproduce.theory import theory_data
from galorekit.reproduce.tuning import (
    TuningError,
    best_pair,
    best_ratio,
    grid_done,
    ratio_grid_report,
)


def view(plan: Plan) -> Plan:
    """``plan`` with the per-group runs in the table, ablation and theory slots (so that the
    paper's protocol's tables and claims apply to them unchanged)."""
    return replace(
        plan,
        table=plan.table_tuned,
        gaps=plan.gaps_tuned,
        ranks=plan.ranks_tuned,
        long=plan.long_tuned,
        theory=plan.theory_tuned,
    )


def tuned_pairs(plan: Plan, results: dict[str, RunResult]) -> dict[str, list[float] | None]:
    """Each group's per-group-tuned ``[lr, ratio]`` (None: its search has not finished)."""
    pairs: dict[str, list[float] | None] = {}
    for group in plan.ratio_grid:
        done = grid_done(plan, group, results) and grid_done(plan, group, results, ratios=True)
        done = done and all(k in results for _, k in plan.neighbours.get(group, []))
        try:
            pairs[group] = list(best_pair(plan, group, results)) if done else None
        except TuningError:
            pairs[group] = None
    return pairs


def neighbour_rows(plan: Plan, results: dict[str, RunResult]) -> list[dict[str, Any]]:
    """Per group: the ratio grid's winner and its matrix LR's neighbours at that ratio
    (``step`` 0, +1, −1), their perplexities, which is the final pair, and whether that is a
    neighbour (the one-step search's edge)."""
    pairs = tuned_pairs(plan, results)
    rows = []
    for group, steps in plan.neighbours.items():
        if not grid_done(plan, group, results, ratios=True):
            continue
        try:
            winner = dict(plan.ratio_grid[group])[best_ratio(plan, group, results)]
        except TuningError:
            continue
        for step, key in [(0, winner), *steps]:
            result = results.get(key)
            chosen = (
                result is not None
                and pairs.get(group) is not None
                and [result.lr, result.lr_other_ratio] == pairs[group]
            )
            rows.append(
                {
                    "group": group,
                    "step": step,
                    "lr": result.lr if result else None,
                    "lr_other_ratio": result.lr_other_ratio if result else None,
                    "eval_ppl": result.eval_ppl if result is not None and result.ok else None,
                    "status": result.status if result else "not run",
                    "chosen": chosen,
                    "at_edge": chosen and step != 0,
                    "key": key,
                }
            )
    return rows


def neighbours_markdown(rows: list[dict[str, Any]]) -> str:
    by_group: dict[str, dict[int, dict[str, Any]]] = {}
    for r in rows:
        by_group.setdefault(r["group"], {})[r["step"]] = r
    body = []
    for group, steps in by_group.items():
        cells = []
        for step in (-1, 0, 1):
            r = steps.get(step)
            if r is None:
                cells.append("–")
                continue
            text = fmt_ppl(r["eval_ppl"]) if r["eval_ppl"] else r["status"]
            text = f"{text} (lr {r['lr']:g})" if r["lr"] is not None else text
            cells.append(
                f"**{text}**" + (" (edge)" if r["at_edge"] else "") if r["chosen"] else text
            )
        ratio = steps.get(0, {}).get("lr_other_ratio")
        body.append([group, "–" if ratio is None else f"×{ratio:g}", *cells])
    return md_table(["method", "ratio", "matrix LR ÷ step", "ratio grid's run", "× step"], body)


def batch_rows(plan: Plan, results: dict[str, RunResult]) -> list[dict[str, Any]]:
    """AdamW and GaLore at 1× (the per-group table's rows) and each batch factor."""
    one = {plan.runs[k].method: k for row, k in plan.table_tuned if row.rank_divisor in (None, 4)}
    entries = [(m, 1, one[m]) for m in ("adamw", "galore_adamw") if m in one]
    rows = []
    for method, factor, key in [*entries, *plan.batch]:
        spec, result = plan.runs[key], results.get(key)
        ok = result is not None and result.ok
        rows.append(
            {
                "method": method,
                "factor": factor,
                "batch_size": spec.batch_size or plan.config.batch_size,
                "steps": spec.steps,
                "tokens": plan.cost(spec) * plan.config.tokens_per_step,
                "lr": result.lr if result else None,
                "lr_other_ratio": result.lr_other_ratio if result else None,
                "eval_ppl": result.eval_ppl if ok else None,
                "status": result.status if result else "not run",
                "key": key,
            }
        )
    return rows


def build(plan: Plan, results: dict[str, RunResult], sections: tuple[str, ...]) -> dict:
    """``results.json``'s ``per_group`` entry."""
    tuned = view(plan)
    data: dict[str, Any] = {
        "ratio_grid": ratio_grid_report(plan, results),
        "neighbours": neighbour_rows(plan, results),
        "tuned": tuned_pairs(plan, results),
    }
    claims = []
    if "table" in sections:
        data["table"] = table_rows(tuned, results)
        claims += table_claims(tuned, results)
    if "ablations" in sections:
        data["ablations"] = ablation_tables(tuned, results)
        claims += ablation_claims(data["ablations"])
    if "theory" in sections and tuned.theory:
        data["theory"] = theory_data(tuned, results)
        claims += theory_claims(data["theory"].get("summary"))
    if "batch" in sections:
        data["batch"] = batch_rows(plan, results)
    data["claims"] = claims
    return data


def ratio_grid_markdown(rows: list[dict[str, Any]]) -> str:
    ratios = sorted({r["ratio"] for r in rows})
    groups: dict[str, dict[float, dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(r["group"], {})[r["ratio"]] = r
    body = []
    for group, by_ratio in groups.items():
        lr = next((r["lr"] for r in by_ratio.values() if r["lr"] is not None), None)
        cells = []
        for ratio in ratios:
            r = by_ratio.get(ratio)
            text = "" if r is None else fmt_ppl(r["eval_ppl"]) if r["eval_ppl"] else r["status"]
            if r and r["chosen"]:
                text = f"**{text}**" + (" (grid edge)" if r["at_grid_edge"] else "")
            cells.append(text)
        body.append([group, "–" if lr is None else f"{lr:g}", *cells])
    headers = ["method", "matrix LR", *[f"other ×{r:g}" for r in ratios]]
    return md_table(headers, body)


def batch_markdown(rows: list[dict[str, Any]]) -> str:
    by = {(r["method"], r["factor"]): r for r in rows}
    body = []
    for factor in sorted({r["factor"] for r in rows}):
        a, g = by.get(("adamw", factor)), by.get(("galore_adamw", factor))
        ref = a or g
        gap = (
            g["eval_ppl"] / a["eval_ppl"] - 1
            if a and g and a["eval_ppl"] and g["eval_ppl"]
            else None
        )
        body.append(
            [
                f"{ref['tokens'] // ref['steps']:,} ({factor}×)",
                f"{ref['batch_size']} seq × {ref['steps']} steps",
                *[
                    "–" if r is None else (fmt_ppl(r["eval_ppl"]) if r["eval_ppl"] else r["status"])
                    for r in (a, g)
                ],
                *["–" if r is None else lr_cell(r["lr"], r["lr_other_ratio"]) for r in (a, g)],
                fmt_ratio(gap),
            ]
        )
    headers = [
        "tokens per step",
        "batch × steps",
        "AdamW ppl",
        "GaLore d/4 ppl",
        "AdamW LR",
        "GaLore LR",
        "GaLore vs AdamW",
    ]
    return md_table(headers, body)
