"""The laptop Table 2: one row per method — perplexity, optimizer-state memory, time — next to the
paper's 60M numbers."""

from __future__ import annotations

from typing import Any

from galorekit.reproduce.plan import Plan, TableRow
from galorekit.reproduce.results import RunResult
from galorekit.units import format_bytes

#: Table 2 of the paper, LLaMA 60M (r/d = 128/512 = d/4), validation perplexity on C4
PAPER_60M_PPL = {
    "adamw": 34.06,
    "galore_adamw": 34.88,
    "low_rank": 78.18,
    "lora": 34.99,
    "relora": 37.04,
}
#: Table 3 of the paper, LLaMA 7B after 150K steps: 8-bit Adam vs 8-bit GaLore
PAPER_7B_8BIT_PPL = {"adamw8bit": 14.61, "galore_adamw8bit": 14.65}


def fmt_bytes(n: float | None) -> str:
    """Optimizer-state sizes in the tables: MiB (``galorekit.units.format_bytes``), ``–`` for
    none."""
    return "–" if n is None else format_bytes(n, "MiB")


def fmt_ratio(x: float | None) -> str:
    """``0.024`` → ``+2.4%``."""
    return "–" if x is None else f"{x * 100:+.1f}%"


def fmt_ppl(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}"


def md_table(headers: list[str], rows: list[list[str]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def row_label(plan: Plan, row: TableRow) -> str:
    rank = plan.rank(row.rank_divisor)
    return row.label + (f" (r = d/{row.rank_divisor} = {rank})" if rank is not None else "")


def lr_source(plan: Plan, row: TableRow) -> str:
    if not plan.config.tuned:
        fixed = dict(plan.config.fixed_lrs)
        return "fixed (pilot)" if row.lr_group in fixed else "galore pretrain default"
    if row.tune_as and row.tune_as != row.method:
        return f"tuned for {row.tune_as}"
    return "tuned"


def _reference_row(plan: Plan, results: dict[str, RunResult], method: str) -> RunResult | None:
    for row, key in plan.table:
        if row.method == method and key in results:
            return results[key]
    return None


def table_rows(plan: Plan, results: dict[str, RunResult]) -> list[dict[str, Any]]:
    """The table as dicts (JSON): one per row, ``None`` where a run is missing or diverged."""
    full = _reference_row(plan, results, "adamw")
    full_ppl = full.eval_ppl if full is not None and full.ok else None
    full_states = full.memory.get("optimizer_states") if full is not None else None
    rows = []
    for row, key in plan.table:
        result = results.get(key)
        ppl = result.eval_ppl if result is not None and result.ok else None
        states = result.memory.get("optimizer_states") if result is not None else None
        paper = PAPER_60M_PPL.get(row.method) if row.rank_divisor in (None, 4) else None
        paper8 = PAPER_7B_8BIT_PPL.get(row.method)
        rows.append(
            {
                "label": row_label(plan, row),
                "method": row.method,
                "rank": plan.rank(row.rank_divisor),
                "key": key,
                "status": result.status if result is not None else "not run",
                "lr": result.lr if result is not None else None,
                "lr_other_ratio": result.lr_other_ratio if result is not None else None,
                "lr_source": lr_source(plan, row),
                "eval_ppl": ppl,
                "vs_full_rank": (ppl / full_ppl - 1) if ppl and full_ppl else None,
                "paper_60m_ppl": paper,
                "paper_60m_vs_full_rank": (paper / PAPER_60M_PPL["adamw"] - 1) if paper else None,
                "paper_7b_8bit_ppl": paper8,
                "optimizer_state_bytes": states,
                "optimizer_states_vs_adamw": (states / full_states)
                if states and full_states
                else None,
                "paper_memory_bf16_bytes": result.memory.get("paper_memory_bf16")
                if result
                else None,
                "trainable_parameters": result.memory.get("trainable_parameters")
                if result
                else None,
                "seconds": result.seconds if result is not None else None,
                "cpu_seconds": result.cpu_seconds if result is not None else None,
                "tokens": result.tokens if result is not None else None,
            }
        )
    return rows


def lr_cell(lr: float | None, ratio: float | None) -> str:
    """``0.0025`` or, with other parameters at their own LR, ``0.0025; other 0.04 (16×)``."""
    if lr is None:
        return "–"
    if ratio in (None, 1):
        return f"{lr:g}"
    return f"{lr:g}; other {lr * ratio:.3g} ({ratio:g}×)"


def table_markdown(rows: list[dict[str, Any]]) -> str:
    headers = [
        "method",
        "LR",
        "eval ppl",
        "vs full-rank",
        "paper 60M ppl (vs full-rank)",
        "optimizer states (fp32)",
        "vs AdamW",
        "BF16 weights + states",
        "train time (s)",
        "CPU (s)",
        "tokens",
    ]
    body = []
    for r in rows:
        ppl = fmt_ppl(r["eval_ppl"]) if r["status"] == "ok" else r["status"]
        paper = "–"
        if r["paper_60m_ppl"] is not None and r["method"] == "adamw":
            paper = f"{r['paper_60m_ppl']:.2f}"
        elif r["paper_60m_ppl"] is not None:
            paper = f"{r['paper_60m_ppl']:.2f} ({fmt_ratio(r['paper_60m_vs_full_rank'])})"
        elif r["paper_7b_8bit_ppl"] is not None:
            paper = f"7B: {r['paper_7b_8bit_ppl']:.2f}"
        states_ratio = r["optimizer_states_vs_adamw"]
        body.append(
            [
                r["label"],
                lr_cell(r["lr"], r.get("lr_other_ratio")),
                ppl,
                fmt_ratio(r["vs_full_rank"]),
                paper,
                fmt_bytes(r["optimizer_state_bytes"]),
                "–" if states_ratio is None else f"{states_ratio:.2f}×",
                fmt_bytes(r["paper_memory_bf16_bytes"]),
                "–" if r["seconds"] is None else f"{r['seconds']:.0f}",
                "–" if r["cpu_seconds"] is None else f"{r['cpu_seconds']:.0f}",
                "–" if r["tokens"] is None else f"{r['tokens']:,}",
            ]
        )
    return md_table(headers, body)
