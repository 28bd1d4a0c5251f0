"""True bf16 training against float32, on the same data: does bf16 lose updates?

Each variant is one ``galore pretrain`` run (a subprocess, the command a user types) of the same
model, data, seed and schedule; only ``--precision`` / ``--state-dtype`` / ``--weight-rounding``
differ. Reported per run: the training-loss curve (mean over windows of steps), the final
validation loss, the ratio of its excess loss over float32's, and the share of each kind of
weight (norm gains vs matrices) that still equals its initial value at the end — a weight whose
updates are all smaller than half of bf16's spacing around it never moves (a stalled update).

    OMP_NUM_THREADS=1 python benchmarks/bf16_true.py --model llama_9m --steps 200 \
        --out benchmarks/results/bf16_true

Writes ``OUT/results.json`` (everything, with the command of each run) and ``OUT/results.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from galorekit.atomic import atomic_write_json, atomic_write_text
from galorekit.models import build_model
from galorekit.train.checkpoint import find_latest_checkpoint, load_checkpoint
from galorekit.train.logging import read_metrics

#: (name, flags) of each variant; fp32 first (the baseline of the ratios)
VARIANTS = {
    "fp32": ["--precision", "fp32"],
    "bf16-true": ["--precision", "bf16-true"],
    "bf16-true fp32-moments": ["--precision", "bf16-true", "--state-dtype", "float32"],
    "bf16-true stochastic": ["--precision", "bf16-true", "--weight-rounding", "stochastic"],
    "bf16-true fp32-moments stochastic": [
        *("--precision", "bf16-true", "--state-dtype", "float32"),
        *("--weight-rounding", "stochastic"),
    ],
    "bf16-mixed": ["--precision", "bf16-mixed"],
}


def _run(args: argparse.Namespace, method: str, flags: list[str], out: Path) -> dict:
    lr = {"adamw": "0.001", "galore_adamw": "0.01"}[method]
    argv = [
        "pretrain",
        "--model", args.model,
        "--method", method,
        "--lr", lr,
        "--max-steps", str(args.steps),
        "--seq-len", str(args.seq_len),
        "--batch-size", str(args.batch_size),
        "--eval-every", str(max(1, args.steps // 4)),
        "--log-every", "1",
        "--save-every", "0",
        "--seed", str(args.seed),
        "--device", "cpu",
        "--output-dir", str(out),
        "--no-progress", "--no-tensorboard", "--no-plot",
        *flags,
    ]  # fmt: skip
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "galorekit", *argv], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"galore {' '.join(argv)} failed:\n{proc.stderr[-3000:]}")
    events = read_metrics(out)
    losses = [e["loss"] for e in events if e.get("event") == "train"]
    evals = [e for e in events if e.get("event") == "eval"]
    window = max(1, args.steps // 10)
    return {
        "command": "galore " + " ".join(argv),
        "seconds": time.perf_counter() - started,
        "final_eval_loss": evals[-1]["eval_loss"],
        "eval_curve": {e["step"]: e["eval_loss"] for e in evals},
        "train_curve": [
            sum(losses[i : i + window]) / len(losses[i : i + window])
            for i in range(0, len(losses), window)
        ],
        "unchanged": _unchanged(args, out),
    }


def _unchanged(args: argparse.Namespace, out: Path) -> dict[str, float]:
    """Share of the entries of norm gains, embeddings (and head) and the other matrices that
    equal their initial value at the end."""
    state = load_checkpoint(find_latest_checkpoint(out / "checkpoints"))["model"]
    vocab = state["model.embed_tokens.weight"].shape[0]
    init = build_model(
        args.model,
        vocab_size=vocab,
        max_position_embeddings=max(args.seq_len, 1024),
        seed=args.seed,
    ).state_dict()
    same = {"norms": [0, 0], "embeddings": [0, 0], "matrices": [0, 0]}
    for key, final in state.items():
        if key not in init or not final.is_floating_point() or "inv_freq" in key:
            continue
        start = init[key].to(final.dtype)  # the run's own rounding of the same init
        kind = "norms" if final.dim() == 1 else "matrices"
        kind = "embeddings" if "embed" in key or "lm_head" in key else kind
        same[kind][0] += int((final == start).sum())
        same[kind][1] += final.numel()
    return {k: n / max(total, 1) for k, (n, total) in same.items()}


def _table(results: dict, methods: list[str]) -> str:
    lines = [
        "| method | variant | final eval loss | excess over fp32 | unchanged: norms | "
        "embeddings | matrices | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for method in methods:
        runs = results[method]
        base = runs["fp32"]["final_eval_loss"]
        for name, r in runs.items():
            lines.append(
                f"| {method} | {name} | {r['final_eval_loss']:.4f} | "
                f"{r['final_eval_loss'] - base:+.4f} | {r['unchanged']['norms']:.3f} | "
                f"{r['unchanged']['embeddings']:.4f} | {r['unchanged']['matrices']:.4f} | "
                f"{r['seconds']:.0f} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llama_9m")
    parser.add_argument("--methods", nargs="+", default=["adamw", "galore_adamw"])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    variants = {name: VARIANTS[name] for name in ["fp32", *args.variants] if name in VARIANTS}
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods:
            results[method] = {}
            for name, flags in variants.items():
                out = Path(tmp) / f"{method}-{name.replace(' ', '_')}"
                results[method][name] = _run(args, method, flags, out)
                print(method, name, f"{results[method][name]['final_eval_loss']:.4f}", flush=True)
    record = {
        "command": "python benchmarks/bf16_true.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "torch": torch.__version__,
        "threads": os.environ.get("OMP_NUM_THREADS"),
        "results": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "results.json", record, indent=2)
    text = f"# bf16-true vs float32\n\n`{record['command']}`\n\n{_table(results, args.methods)}\n"
    atomic_write_text(args.out / "results.md", text)
    print(text)


if __name__ == "__main__":
    main()
