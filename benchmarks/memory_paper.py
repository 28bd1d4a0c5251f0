"""Reproduce the GaLore paper's memory figures with ``galorekit.memory``'s estimates.

Writes ``benchmarks/results/memory_paper.json`` and ``.md``: our estimate beside each of the
paper's numbers — Table 2 (BF16 weights + optimizer states), Table 6 (optimizer states), the LLaMA
7B breakdown of §5.5/Figure 1 and Table 3, and Table 11's measured 1B memory — with a sentence per
number explaining the difference. The sentences are generated from computed alternatives
("readings"): GB (10⁹ bytes) against GiB (2³⁰), the nominal against the exact parameter count,
which matrices GaLore projects, whether projectors are counted, the adapters' dtype. Each row
names the reading closest to the paper's number.

Everything is estimated on ``device="meta"`` (nothing is allocated): a few minutes on a CPU.

    python benchmarks/memory_paper.py [--out-dir benchmarks/results]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from statistics import median

import torch

from galorekit import GaLoreAdamW
from galorekit.atomic import atomic_write_json, atomic_write_text
from galorekit.bench import PAPER_RANKS
from galorekit.memory.estimator import MemoryEstimate, estimate, estimate_model
from galorekit.memory.fit import fit_budget
from galorekit.memory.model import build_training_model
from galorekit.memory.optimizer_states import optimizer_state_tensors, total_bytes
from galorekit.memory.setup import TrainingSetup
from galorekit.models import default_target_modules

GB, GiB = 10**9, 2**30
MODELS = {"60M": "llama_60m", "130M": "llama_130m", "350M": "llama_350m", "1B": "llama_1b"}
RANKS = {size: PAPER_RANKS[model] for size, model in MODELS.items()}  # Table 2's r

# ---- the paper's numbers (paper-facts.md) ----------------------------------------------------------
TABLE2 = {
    "Full-Rank": {"60M": 0.36, "130M": 0.76, "350M": 2.06, "1B": 7.80},
    "GaLore": {"60M": 0.24, "130M": 0.52, "350M": 1.22, "1B": 4.38},
    "Low-Rank": {"60M": 0.26, "130M": 0.54, "350M": 1.08, "1B": 3.57},
    "LoRA": {"60M": 0.36, "130M": 0.80, "350M": 1.76, "1B": 6.17},
    "ReLoRA": {"60M": 0.36, "130M": 0.80, "350M": 1.76, "1B": 6.17},
}
TABLE2_METHOD = {
    "Full-Rank": "adamw",
    "GaLore": "galore_adamw",
    "Low-Rank": "low_rank",
    "LoRA": "lora",
    "ReLoRA": "relora",
}
TABLE6 = {
    "Full-Rank": {"60M": 0.23, "130M": 0.51, "350M": 1.37, "1B": 5.20},
    "GaLore": {"60M": 0.13, "130M": 0.28, "350M": 0.54, "1B": 1.78},
}
TABLE11 = {  # 1B, token batch 256, measured on an A100 (GB)
    ("adamw", False): 13.60,
    ("adafactor", False): 13.15,
    ("adamw8bit", False): 9.54,
    ("galore_adamw8bit", False): 7.95,
    ("adamw", True): 9.63,
    ("adafactor", True): 10.32,
    ("adamw8bit", True): 6.93,
    ("galore_adamw8bit", True): 5.63,
}
SEVEN_B = {
    "adamw_total": 58.0,
    "adamw_weights": 14.0,
    "adamw_states_and_gradients": 42.0,
    "adamw_activations": 2.0,
    "galore8bit_layerwise_total": 22.0,
    "saving_vs_bf16": 0.633,
    "saving_vs_8bit_adam": 0.523,
    "state_saving": 0.655,
    "state_saving_8bit": 0.825,
    "layerwise_saving": 13.5,
    "table3_galore8bit": 18.0,
    "table3_adam8bit": 26.0,
    "token_batch_24gb": 500,
    "token_batch_24gb_ckpt": 4096,
}


# ---- helpers ---------------------------------------------------------------------------------------
def closest(paper: float, readings: dict[str, float]) -> tuple[str, float]:
    key = min(readings, key=lambda k: abs(readings[k] - paper))
    return key, readings[key]


def pct(ours: float, paper: float) -> str:
    return f"{100 * (ours - paper) / paper:+.0f}%"


def lead(paper: float, ours_gb: float, readings: dict[str, float]) -> str:
    key, value = closest(paper, readings)
    return (
        f"Ours {ours_gb:.2f} GB ({pct(ours_gb, paper)} vs {paper:g}G). Closest reading: {key}, "
        f"{value:.2f}."
    )


def lm_head_projected_states(model_name: str, rank: int) -> int:
    """Optimizer-state bytes if GaLore also projected the output head (galorekit never does)."""
    setup = TrainingSetup(method="galore_adamw", rank=rank, precision="bf16-true")
    net = build_training_model(model_name, setup).model
    head = net.get_output_embeddings().weight
    targets = set(default_target_modules(net))
    galore = [m.weight for n, m in net.named_modules() if n in targets] + [head]
    ids = {id(p) for p in galore}
    plain = [p for p in net.parameters() if id(p) not in ids]
    opt = GaLoreAdamW([{"params": plain}, {"params": galore, "rank": rank}], lr=1e-3)
    return total_bytes(optimizer_state_tensors(opt))


def lora_bf16_adapters(model_name: str, rank: int, method: str) -> MemoryEstimate:
    """LoRA with its adapters cast to bf16 (peft keeps them in float32 by default)."""
    setup = TrainingSetup(method=method, rank=rank, precision="bf16-true")
    built = build_training_model(model_name, setup)
    built.model.to(torch.bfloat16)
    return estimate_model(built.model, built.setup)


def section(title: str, rows: list[dict], columns: list[tuple[str, str]], intro: str = "") -> str:
    out = [f"### {title}", ""]
    if intro:
        out += [intro, ""]
    out.append("| " + " | ".join(h for h, _ in columns) + " |")
    out.append("|" + "|".join("---" for _ in columns) + "|")
    for r in rows:
        out.append("| " + " | ".join(_cell(r.get(k)) for _, k in columns) + " |")
    return "\n".join(out) + "\n"


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.2f}"
    return str(v).replace("|", "/")


# ---- the sections ----------------------------------------------------------------------------------
def table2(cache: dict) -> list[dict]:
    rows = []
    for label, method in TABLE2_METHOD.items():
        for size, model in MODELS.items():
            r = RANKS[size]
            e = cache[(model, method)]
            ws = e.weights + e.optimizer_states
            paper = TABLE2[label][size]
            readings = {"ours in GB": ws / GB, "ours in GiB": ws / GiB}
            facts = ""
            if method == "adamw":
                implied_gb, implied_gib = paper * GB / 6, paper * GiB / 6
                readings["nominal parameter count × 6 bytes"] = _nominal(size) * 6 / GB
                facts = (
                    "Full-rank holds 6 bytes per parameter (bf16 weight and two bf16 Adam moments);"
                    f" the paper's {paper:g}G is {implied_gb / 1e6:,.0f}M parameters × 6 bytes in GB "
                    f"({implied_gib / 1e6:,.0f}M in GiB) — the model has {e.parameters / 1e6:,.1f}M."
                )
            elif method == "galore_adamw":
                head = lm_head_projected_states(model, r)
                readings["GiB, projectors not counted"] = (ws - e.projectors) / GiB
                readings["GB, projectors not counted"] = (ws - e.projectors) / GB
                readings["GB, lm_head projected too"] = (e.weights + head) / GB
                readings["GiB, lm_head projected too"] = (e.weights + head) / GiB
                facts = (
                    f"Ours projects the 7 attention/MLP matrices per layer (as galore pretrain and "
                    f"galore-torch's scripts; embeddings and lm_head keep Adam) at r={r} and counts "
                    f"the projectors ({e.projectors / GB:.3f} GB)."
                )
            elif method in ("lora", "relora"):
                e16 = lora_bf16_adapters(model, r, method)
                ws16 = e16.weights + e16.optimizer_states
                readings["GB, adapters in bf16"] = ws16 / GB
                readings["GiB, adapters in bf16"] = ws16 / GiB
                facts = (
                    f"peft keeps the adapters in float32 in a bf16 model (+{(ws - ws16) / GB:.2f} GB "
                    f"over bf16 adapters); frozen bf16 base weights plus A (r×n) and B (m×r) per "
                    f"targeted matrix at r={r}; embeddings, norms and lm_head train (ReLoRA's setup)."
                )
            else:
                facts = (
                    f"Each targeted matrix is replaced by B (m×r) A (r×n) at r={r}, "
                    f"{e.parameters / 1e6:,.1f}M parameters in all; embeddings, norms and lm_head "
                    "stay full-rank."
                )
            rows.append(
                {
                    "table": "Table 2",
                    "model": size,
                    "method": label,
                    "rank": r if method != "adamw" else None,
                    "paper_G": paper,
                    "ours_GB": ws / GB,
                    "ours_GiB": ws / GiB,
                    "closest_reading": closest(paper, readings)[0],
                    "readings": readings,
                    "explanation": lead(paper, ws / GB, readings) + " " + facts,
                }
            )
    return rows


def _nominal(size: str) -> float:
    return {"60M": 60e6, "130M": 130e6, "350M": 350e6, "1B": 1e9}[size]


def table6(cache: dict) -> list[dict]:
    rows = []
    for label in TABLE6:
        method = TABLE2_METHOD[label]
        for size, model in MODELS.items():
            e = cache[(model, method)]
            s = e.optimizer_states
            paper = TABLE6[label][size]
            readings = {"ours in GB": s / GB, "ours in GiB": s / GiB}
            if method == "adamw":
                readings["nominal parameter count × 4 bytes"] = _nominal(size) * 4 / GB
                facts = (
                    f"Two bf16 moments per parameter, {e.parameters / 1e6:,.1f}M parameters; the "
                    f"paper's {paper:g}G is {paper * GB / 4 / 1e6:,.0f}M × 4 bytes."
                )
            else:
                head = lm_head_projected_states(model, RANKS[size])
                readings["GB, projectors not counted"] = (s - e.projectors) / GB
                readings["GiB, projectors not counted"] = (s - e.projectors) / GiB
                readings["GB, lm_head projected too"] = head / GB
                readings["GiB, lm_head projected too"] = head / GiB
                facts = (
                    f"Projectors {e.projectors / GB:.3f} GB of ours; the embedding and lm_head "
                    f"Adam states alone are {_embed_head_states(e) / GB:.3f} GB."
                )
            rows.append(
                {
                    "table": "Table 6",
                    "model": size,
                    "method": label,
                    "paper_G": paper,
                    "ours_GB": s / GB,
                    "ours_GiB": s / GiB,
                    "closest_reading": closest(paper, readings)[0],
                    "readings": readings,
                    "explanation": lead(paper, s / GB, readings) + " " + facts,
                }
            )
    return rows


def _embed_head_states(e: MemoryEstimate) -> int:
    return sum(
        t.nbytes
        for t in e.state_tensors
        if ("embed" in t.param or "lm_head" in t.param) and not t.is_projector
    )


def seven_b() -> tuple[list[dict], dict]:
    base = TrainingSetup(precision="bf16-true", batch_size=1, seq_len=256, rank=1024)
    adam = estimate("llama_7b", base.with_(method="adamw"))
    adam8 = estimate("llama_7b", base.with_(method="adamw8bit"))
    galore = estimate("llama_7b", base.with_(method="galore_adamw"))
    g8 = estimate("llama_7b", base.with_(method="galore_adamw8bit"))
    g8lw = estimate("llama_7b", base.with_(method="galore_adamw8bit", layerwise=True))
    p = SEVEN_B
    n = adam.parameters
    nominal = 7e9 / n
    rows = [
        {
            "item": "BF16 AdamW: weights",
            "paper_G": p["adamw_weights"],
            "ours_GB": adam.weights / GB,
            "explanation": f"{n / 1e9:.3f}B parameters × 2 bytes; the paper rounds to a nominal "
            f"7B × 2 bytes = 14 GB.",
        },
        {
            "item": "BF16 AdamW: Adam states + weight gradients",
            "paper_G": p["adamw_states_and_gradients"],
            "ours_GB": (adam.optimizer_states + adam.gradients) / GB,
            "explanation": f"6 bytes per parameter (two moments + the gradient, bf16); nominal 7B "
            f"× 6 = 42 GB, exact {(adam.optimizer_states + adam.gradients) / GB:.2f} GB.",
        },
        {
            "item": "BF16 AdamW: activations (256 tokens)",
            "paper_G": p["adamw_activations"],
            "ours_GB": adam.activations / GB,
            "explanation": "Tensors saved for backward by our per-layer formula (SDPA, no "
            "checkpointing): 32 layers × (24Th + 8Tf + …) plus the float32 log-softmax; the "
            "paper's 2 GB is a rounded figure.",
        },
        {
            "item": "BF16 AdamW: total",
            "paper_G": p["adamw_total"],
            "ours_GB": adam.total / GB,
            "explanation": f"Sum of the above; at the nominal 7B count ours would be "
            f"{((adam.weights + adam.gradients + adam.optimizer_states) * nominal + adam.activations) / GB:.1f} GB.",
        },
        {
            "item": "8-bit GaLore r1024, layer-wise: total",
            "paper_G": p["galore8bit_layerwise_total"],
            "ours_GB": g8lw.total / GB,
            "explanation": (
                f"{g8lw.weights / GB:.2f} weights + {g8lw.gradients / GB:.2f} gradient (one at a "
                f"time: the 32000×4096 embedding) + {g8lw.optimizer_states / GB:.2f} states "
                f"({g8lw.projectors / GB:.2f} projectors) + {g8lw.activations / GB:.2f} "
                "activations. With the paper's rounded 14 GB weights and 2 GB activations it is "
                f"{(14 * GB + g8lw.gradients + g8lw.optimizer_states + 2 * GB) / GB:.2f} GB."
            ),
        },
        _table3("Table 3: 8-bit GaLore memory", p["table3_galore8bit"], g8, nominal),
        _table3("Table 3: 8-bit Adam memory", p["table3_adam8bit"], adam8, nominal),
    ]
    ratios = {
        "saving_vs_bf16": 1 - g8lw.total / adam.total,
        "saving_vs_8bit_adam": 1 - g8lw.total / adam8.total,
        "state_saving": 1 - galore.optimizer_states / adam.optimizer_states,
        "state_saving_8bit": 1 - g8.optimizer_states / adam.optimizer_states,
        "state_saving_8bit_no_projectors": 1
        - (g8.optimizer_states - g8.projectors) / adam.optimizer_states,
        "layerwise_saving_GB": (g8.gradients - g8lw.gradients) / GB,
    }
    rows += [
        {
            "item": "saving of 8-bit GaLore layer-wise vs BF16 AdamW",
            "paper_G": f"{100 * p['saving_vs_bf16']:.1f}%",
            "ours_GB": f"{100 * ratios['saving_vs_bf16']:.1f}%",
            "explanation": "Total memory, both at 256 tokens.",
        },
        {
            "item": "saving vs 8-bit Adam",
            "paper_G": f"{100 * p['saving_vs_8bit_adam']:.1f}%",
            "ours_GB": f"{100 * ratios['saving_vs_8bit_adam']:.1f}%",
            "explanation": f"8-bit Adam (ordinary) totals {adam8.total / GB:.2f} GB.",
        },
        {
            "item": "optimizer-state saving, GaLore (bf16) vs Adam",
            "paper_G": f"{100 * p['state_saving']:.1f}%",
            "ours_GB": f"{100 * ratios['state_saving']:.1f}%",
            "explanation": f"{galore.optimizer_states / GB:.2f} GB vs "
            f"{adam.optimizer_states / GB:.2f} GB, projectors included.",
        },
        {
            "item": "optimizer-state saving, 8-bit GaLore vs Adam",
            "paper_G": f"{100 * p['state_saving_8bit']:.1f}%",
            "ours_GB": f"{100 * ratios['state_saving_8bit']:.1f}%",
            "explanation": f"With projectors (bf16, {g8.projectors / GB:.2f} GB); without them "
            f"{100 * ratios['state_saving_8bit_no_projectors']:.1f}% — the paper's 82.5% lies between.",
        },
        {
            "item": "memory saved by layer-wise updates",
            "paper_G": p["layerwise_saving"],
            "ours_GB": ratios["layerwise_saving_GB"],
            "explanation": "All weight gradients minus the largest single one.",
        },
    ]
    fits = fit_budget(
        "llama_7b",
        24 * GB,
        base.with_(method="galore_adamw8bit"),
        methods=("galore_adamw8bit",),
        ranks=(1024,),
    )
    by = {(r.layerwise, r.activation_checkpointing): r for r in fits}
    tok, tok_ckpt = by[(True, False)].max_batch_size * 256, by[(True, True)].max_batch_size * 256
    rows += [
        {
            "item": "largest token batch in 24 GB, 8-bit GaLore layer-wise",
            "paper_G": f"~{p['token_batch_24gb']}",
            "ours_GB": f"{tok}",
            "explanation": "Sequences of 256 tokens within 24 GB (a consumer GPU); the paper's "
            "figure includes framework overhead, ours is the estimate's limit.",
        },
        {
            "item": "… with activation checkpointing",
            "paper_G": f"{p['token_batch_24gb_ckpt']}",
            "ours_GB": f"{tok_ckpt}",
            "explanation": "Each layer keeps only its input; one layer is recomputed at a time. "
            "The estimate has no allocator fragmentation or kernel workspaces, hence the "
            "larger batch.",
        },
    ]
    estimates = {
        "adamw": adam,
        "adamw8bit": adam8,
        "galore_adamw": galore,
        "galore_adamw8bit": g8,
        "galore_adamw8bit_layerwise": g8lw,
    }
    return rows, {"ratios": ratios, "estimates": {k: v.as_dict() for k, v in estimates.items()}}


def _table3(item: str, paper: float, e: MemoryEstimate, nominal: float) -> dict:
    ws = e.weights + e.optimizer_states
    readings = {
        "weights + states in GB": ws / GB,
        "weights + states in GiB": ws / GiB,
        "weights + states, nominal 7B, GiB": ws * nominal / GiB,
        "total in GB": e.total / GB,
    }
    return {
        "item": item,
        "paper_G": paper,
        "ours_GB": ws / GB,
        "closest_reading": closest(paper, readings)[0],
        "explanation": "Ours: weights + optimizer states. " + lead(paper, ws / GB, readings),
    }


def table11() -> list[dict]:
    rows, gaps = [], []
    base = TrainingSetup(precision="bf16-true", batch_size=1, seq_len=256, rank=512)
    ests = {}
    for (method, lw), paper in TABLE11.items():
        e = estimate("llama_1b", base.with_(method=method, layerwise=lw))
        ests[(method, lw)] = e
        if method != "adafactor":
            gaps.append(paper - e.total / GB)
    overhead = median(gaps)
    for (method, lw), paper in TABLE11.items():
        e = ests[(method, lw)]
        ours = e.total / GB
        gap = paper - ours
        if method == "adafactor":
            first_moment = 4 * e.trainable_parameters / GB
            text = (
                f"Ours {ours:.2f} GB: Adafactor without a first moment (β1=None; the factored "
                f"second moment is {e.optimizer_states / GB:.3f} GB). The paper's number is "
                "consistent with transformers' Adafactor run with β1, which keeps a float32 first "
                f"moment ({first_moment:.2f} GB): ours + that + the {overhead:.2f} GB median gap "
                f"of the other rows = {ours + first_moment + overhead:.2f} GB."
            )
        elif method == "adamw" and not lw:
            text = (
                f"Ours {ours:.2f} GB; the gap ({gap:.2f} GB) exceeds the other rows' median "
                f"({overhead:.2f} GB) by about {gap - overhead:.2f} GB — consistent with "
                "torch.optim.AdamW's multi-tensor (foreach) step, whose temporaries span all "
                "parameters at once (layer-wise steps one parameter at a time)."
            )
        else:
            text = (
                f"Ours {ours:.2f} GB; a measured peak adds {gap:.2f} GB to the sum of components "
                f"(median over these rows {overhead:.2f} GB): transient buffers (logits and their "
                "gradient, optimizer temporaries"
                + (", SVD refresh workspace" if method.startswith("galore") else "")
                + "), allocator caching and kernel workspaces."
            )
        rows.append(
            {
                "table": "Table 11",
                "method": method + (" (layer-wise)" if lw else ""),
                "paper_G": paper,
                "ours_GB": ours,
                "ours_GiB": e.total / GiB,
                "explanation": "Measured peak (A100) vs our sum of components. " + text,
            }
        )
    return rows


# ---- main ------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args(argv)
    started = time.time()
    cache: dict[tuple[str, str], MemoryEstimate] = {}
    for size, model in MODELS.items():
        for method in TABLE2_METHOD.values():
            setup = TrainingSetup(method=method, rank=RANKS[size], precision="bf16-true")
            cache[(model, method)] = estimate(model, setup)
    t2, t6 = table2(cache), table6(cache)
    seven_rows, seven_extra = seven_b()
    t11 = table11()
    result = {
        "description": "galorekit.memory estimates beside the GaLore paper's memory numbers",
        "units": "paper_G as printed; ours_GB = 1e9 bytes, ours_GiB = 2^30 bytes",
        "setup": "pure bf16 (weights, gradients, states), batch 1 x 256 tokens, SDPA attention",
        "table2": t2,
        "table6": t6,
        "llama_7b": seven_rows,
        "llama_7b_detail": seven_extra,
        "table11": t11,
        "seconds": round(time.time() - started, 1),
    }
    out = Path(args.out_dir)
    atomic_write_json(out / "memory_paper.json", result, default=str)
    atomic_write_text(out / "memory_paper.md", render_markdown(result))
    print(render_markdown(result))
    return 0


def render_markdown(result: dict) -> str:
    cols_t2 = [
        ("model", "model"),
        ("method", "method"),
        ("paper", "paper_G"),
        ("ours GB", "ours_GB"),
        ("ours GiB", "ours_GiB"),
        ("why they differ", "explanation"),
    ]
    parts = [
        "## Memory: our estimates beside the paper's",
        "",
        "Generated by `python benchmarks/memory_paper.py` from `galorekit.memory` (estimates on the "
        "meta device; pure bf16 weights, gradients and optimizer states, batch 1 × 256 tokens, "
        'SDPA attention). The paper prints "G"; we give GB (10⁹ bytes) and GiB (2³⁰ bytes). '
        '"Closest reading" names the variant of our estimate nearest to the paper\'s number.',
        "",
    ]
    parts.append(
        section(
            "LLaMA 7B (Figure 1, §5.5, Table 3)",
            result["llama_7b"],
            [
                ("", "item"),
                ("paper", "paper_G"),
                ("ours (GB)", "ours_GB"),
                ("why they differ", "explanation"),
            ],
        )
    )
    parts.append(
        section(
            "Table 2: BF16 weights + optimizer states",
            result["table2"],
            cols_t2,
            "Ranks 128 / 256 / 256 / 512 for 60M / 130M / 350M / 1B.",
        )
    )
    parts.append(section("Table 6: optimizer states", result["table6"], cols_t2))
    parts.append(
        section(
            "Table 11: LLaMA 1B, token batch 256 (measured peak in the paper)",
            result["table11"],
            [
                ("method", "method"),
                ("paper", "paper_G"),
                ("ours GB", "ours_GB"),
                ("ours GiB", "ours_GiB"),
                ("why they differ", "explanation"),
            ],
            "8-bit GaLore at rank 512. Our numbers are estimates (sum of components), the "
            "paper's are measured on an A100.",
        )
    )
    return "\n".join(parts)


if __name__ == "__main__":
    raise SystemExit(main())
