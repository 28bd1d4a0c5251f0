"""The ``successors`` section: GaLore's successors (Fira, APOLLO, APOLLO-Mini, Q-GaLore, GoLore),
each tuned by the table rows' own search, against the table's GaLore d/4 and AdamW rows (the same
runs), under both protocols: perplexity, × GaLore, optimizer-state bytes and the papers' numbers."""

from __future__ import annotations

from typing import Any

from galorekit.reproduce.plan import Plan
from galorekit.reproduce.results import RunResult
from galorekit.reproduce.states import optimizer_state_bytes
from galorekit.reproduce.table import fmt_bytes, fmt_ppl, lr_cell, md_table

#: the successors' papers, LLaMA 60M on C4 (validation perplexity; GaLore 34.88 and full-rank
#: AdamW 34.06 in the GaLore paper's Table 2; Fira: Chen et al. 2024, Table 2; APOLLO: Zhu et
#: al. 2024, Table 2)
PAPER_60M = {
    "adamw": 34.06,
    "galore_adamw": 34.88,
    "fira_adamw": 31.06,
    "apollo_adamw": 31.55,
}


def state_rows(plan: Plan, methods: list[str]) -> dict[str, dict[str, int]]:
    """``galorekit.reproduce.states`` of each method on the plan's model at its rank and T."""
    cfg = plan.config
    return {
        method: optimizer_state_bytes(
            cfg.model,
            cfg.vocab_size,
            method,
            rank=plan.rank(4) or 1,
            update_proj_gap=cfg.update_proj_gap,
            scale=None if method in plan.config.successors else cfg.scale,
            seed=cfg.seed,
        )
        for method in methods
    }


def _rows(
    pairs: list[tuple[str, str]], results: dict[str, RunResult], states: dict[str, dict]
) -> list[dict[str, Any]]:
    galore = next((results.get(k) for m, k in pairs if m == "galore_adamw"), None)
    reference = galore.eval_ppl if galore is not None and galore.ok else None
    rows = []
    for method, key in pairs:
        result = results.get(key)
        ok = result is not None and result.ok
        ppl = result.eval_ppl if ok else None
        paper = PAPER_60M.get(method)
        rows.append(
            {
                "method": method,
                "lr": result.lr if result else None,
                "lr_other_ratio": result.lr_other_ratio if result else None,
                "eval_ppl": ppl,
                "vs_galore": ppl / reference if ppl and reference else None,
                **states.get(method, {}),
                "paper_60m_ppl": paper,
                "paper_vs_galore": paper / PAPER_60M["galore_adamw"] if paper else None,
                "status": result.status if result else "not run",
                "key": key,
            }
        )
    return rows


def build(plan: Plan, results: dict[str, RunResult]) -> dict[str, Any]:
    """``results.json``'s ``successors`` entry: one table per protocol (the per-group one only
    when the plan has it)."""
    paper = [*plan.reference_rows(plan.table), *plan.successors]
    tuned = [*plan.reference_rows(plan.table_tuned), *plan.successors_tuned]
    states = state_rows(plan, list(dict.fromkeys(m for m, _ in paper)))
    data: dict[str, Any] = {
        "paper_60m": PAPER_60M,
        "own_grids": True,  # every successor searched its own LR grid
        "paper_protocol": _rows(paper, results, states),
    }
    if tuned and plan.successors_tuned:
        data["per_group"] = _rows(tuned, results, states)
    return data


def markdown(rows: list[dict[str, Any]]) -> str:
    def f(x: float | None, digits: int = 3) -> str:
        return "–" if x is None else f"{x:.{digits}f}"

    body = [
        [
            r["method"],
            "–" if r["lr"] is None else lr_cell(r["lr"], r["lr_other_ratio"]),
            fmt_ppl(r["eval_ppl"]) if r["eval_ppl"] else r["status"],
            f(r["vs_galore"]),
            fmt_bytes(r.get("state_bytes")),
            fmt_bytes(r.get("matrix_state_bytes_estimate")),
            "–" if r["paper_60m_ppl"] is None else f"{r['paper_60m_ppl']:g}",
            f(r["paper_vs_galore"]),
        ]
        for r in rows
    ]
    headers = [
        "method",
        "LR",
        "eval ppl",
        "× GaLore",
        "optimizer state",
        "of which attention/MLP",
        "paper 60M ppl",
        "paper × GaLore",
    ]
    return md_table(headers, body)
