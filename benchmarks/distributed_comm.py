"""Bytes communicated per step and step time of data-parallel GaLore, 2 gloo processes.

Part 1 — per-step cost on the paper's model shapes (vocab 32000; GaLore on the attention and MLP
linears, rank 128 for 60M and 256 for 130M as in the paper; random tokens — bytes depend on shapes
only), for each mode:

- ``ddp``: DistributedDataParallel, full all-reduce (our counted hook, numerically torch's own);
- ``ddp_lowrank``: DDP + low-rank communication (projected gradients between refreshes);
- ``layerwise``: layer-wise GaLore, one all-reduce per parameter inside its backward hook;
- ``fsdp``: FSDP2 (``fully_shard`` per decoder layer and the root): each step all-gathers the
  weights (forward, and again in backward) and reduce-scatters the gradients; GaLore works on the
  row shards and a refresh all-reduces n×l sketches (``galorekit.projection.sharded``);
- ``fsdp_layerwise``: FSDP2 with layer-wise GaLore (updates in the hooks after reduce-scatter).

Bytes are the payload handed to the ``torch.distributed`` collectives by one rank, counted at the
calls (``galorekit.distributed.CommCounter``), split into refresh steps (full gradients) and the
steps between refreshes. Step times are medians over steps of each kind (barrier-to-barrier).

It also times the two ways to keep projectors identical on every rank at a refresh: every rank
recomputes every SVD from the (identical) reduced gradient, against each rank computing 1/W of
them and broadcasting the projectors.

Part 2 (``--loss-steps N``) — the loss of low-rank communication and of FSDP2 against full
all-reduce: ``galore pretrain --nproc-per-node 2`` runs on the offline corpus (gradient clipping
on, which is what low-rank communication changes: the clip sees ‖R̄‖ for GaLore matrices; FSDP2
projects every matrix on the right).

    python benchmarks/distributed_comm.py --models llama_60m llama_130m --seq-len 64 \
        --batch-size 1 --steps 6 --gap 3 --loss-steps 100 \
        --out benchmarks/results/distributed_comm
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from galorekit.atomic import atomic_write_json, atomic_write_text
from galorekit.bench import PAPER_RANKS

MODES = ("ddp", "ddp_lowrank", "layerwise", "fsdp", "fsdp_layerwise")
WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _measure_mode(model_name: str, mode: str, args, ctx) -> dict:
    from galorekit.distributed import CommCounter, setup_data_parallel
    from galorekit.methods import MethodConfig, setup
    from galorekit.models import build_model

    torch.manual_seed(0)
    model = build_model(model_name, vocab_size=args.vocab_size, seed=0)
    layerwise = mode.endswith("layerwise")
    fsdp = mode.startswith("fsdp")
    if fsdp:  # before the optimizer, which must hold the sharded parameters
        from galorekit.distributed.fsdp import shard_model

        shard_model(model, ctx, torch.device("cpu"))
    method = MethodConfig(
        method="galore_adamw",
        lr=1e-3,
        rank=PAPER_RANKS.get(model_name),  # None: hidden_size // 4, galore pretrain's default
        update_proj_gap=args.gap,
        layerwise=layerwise,
        max_grad_norm=1.0,
        svd=args.svd,
    )
    opt = setup(model, method, total_steps=args.steps).optimizer
    parallel = setup_data_parallel(
        model,
        opt,
        ctx,
        torch.device("cpu"),
        layerwise=layerwise,
        lowrank_comm=mode == "ddp_lowrank",
        strategy="fsdp" if fsdp else "ddp",
    )
    gen = torch.Generator().manual_seed(1000 + ctx.rank)
    rows = []
    with CommCounter() as counter:
        for step in range(args.steps):
            batch = torch.randint(
                0, args.vocab_size, (args.batch_size, args.seq_len), generator=gen
            )
            dist.barrier()
            counter.reset()
            t0 = time.perf_counter()
            loss = parallel.module(input_ids=batch, labels=batch).loss
            loss.backward()
            if not layerwise:
                parallel.clip_grad_norm_(1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            sent, calls = counter.bytes, counter.calls
            dist.barrier()
            rows.append(
                {
                    "step": step,
                    "refresh": step % args.gap == 0,
                    "bytes": sent,
                    "calls": calls,
                    "seconds": time.perf_counter() - t0,
                }
            )
    n_params = sum(p.numel() for p in model.parameters())  # DTensors count globally
    refresh = [r for r in rows if r["refresh"]]
    between = [r for r in rows if not r["refresh"]]
    # step 0 also builds optimizer states; step 1 is the first steady step
    return {
        "params": n_params,
        "bytes_refresh": refresh[0]["bytes"],
        "bytes_between": between[0]["bytes"] if between else None,
        "bytes_mean_per_step": sum(r["bytes"] for r in rows) / len(rows),
        "calls_between": between[0]["calls"] if between else None,
        "seconds_refresh": statistics.median(r["seconds"] for r in refresh[1:] or refresh),
        "seconds_between": statistics.median(r["seconds"] for r in between) if between else None,
        "steps": rows,
    }


def _refresh_strategies(model_name: str, args, ctx) -> dict:
    """Wall time to refresh every GaLore projector: all ranks recompute everything, against a
    1/W share each + broadcasting the projectors (random gradients of the real shapes)."""
    from galorekit.methods import default_rank
    from galorekit.models import build_model, default_target_modules
    from galorekit.projection import choose_side, compute_projector

    model = build_model(model_name, vocab_size=args.vocab_size, device="meta")
    targets = set(default_target_modules(model))
    shapes = [tuple(m.weight.shape) for n, m in model.named_modules() if n in targets]
    # the rank _measure_mode trains with
    rank = PAPER_RANKS.get(model_name) or default_rank(model)
    gen = torch.Generator().manual_seed(7)
    grads = [torch.randn(*s, generator=gen) for s in shapes]

    def refresh(indices):
        out = {}
        for i in indices:
            side = choose_side("std", grads[i].shape)
            r = min(rank, min(grads[i].shape))
            out[i] = compute_projector(grads[i], r, side, method=args.svd)
        return out

    dist.barrier()
    t0 = time.perf_counter()
    refresh(range(len(grads)))
    dist.barrier()
    recompute = time.perf_counter() - t0

    t0 = time.perf_counter()
    mine = refresh(range(ctx.rank, len(grads), ctx.world_size))
    sent = 0
    for i in range(len(grads)):
        owner = i % ctx.world_size
        side = choose_side("std", grads[i].shape)
        r = min(rank, min(grads[i].shape))
        m, n = grads[i].shape
        shape = (m, r) if side == 0 else (r, n)
        factor = next(f for f in mine[i] if f is not None) if owner == ctx.rank else None
        buf = factor if factor is not None else torch.empty(shape)
        dist.broadcast(buf, src=owner)
        sent += buf.numel() * 4 if owner == ctx.rank else 0
    dist.barrier()
    sharded = time.perf_counter() - t0
    return {
        "matrices": len(shapes),
        "recompute_all_seconds": recompute,
        "sharded_plus_broadcast_seconds": sharded,
        "broadcast_bytes_per_rank": sent,
    }


def _worker(rank: int, port: int, args, out_path: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(max(1, args.threads))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    from galorekit.distributed import DistContext

    ctx = DistContext(rank=rank, world_size=WORLD, backend="gloo")
    results = {}
    try:
        for model_name in args.models:
            results[model_name] = {
                mode: _measure_mode(model_name, mode, args, ctx) for mode in MODES
            }
            results[model_name]["refresh_strategies"] = _refresh_strategies(model_name, args, ctx)
            if rank == 0:
                print(f"{model_name}: done", file=sys.stderr, flush=True)
        if rank == 0:
            Path(out_path).write_text(json.dumps(results))
    finally:
        dist.destroy_process_group()


def loss_comparison(args) -> dict:
    """Short `galore pretrain --nproc-per-node 2` runs: full all-reduce, low-rank communication,
    FSDP2."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        runs = (
            ("ddp", []),
            ("ddp_lowrank", ["--lowrank-comm"]),
            ("fsdp", ["--distributed", "fsdp"]),
        )
        for name, extra in runs:
            run_dir = Path(tmp) / name
            cmd = [
                sys.executable, "-m", "galorekit", "pretrain",
                "--model", args.loss_model, "--max-steps", str(args.loss_steps),
                "--seq-len", "64", "--batch-size", "8", "--total-batch-size", "16",
                "--update-proj-gap", str(args.loss_gap), "--eval-every", "0",
                "--output-dir", str(run_dir), "--nproc-per-node", str(WORLD),
                "--no-progress", "--no-tensorboard", "--no-plot", *extra,
            ]  # fmt: skip
            subprocess.run(cmd, check=True, capture_output=True)
            events = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
            train = [e for e in events if e.get("event") == "train"]
            evals = [e for e in events if e.get("event") == "eval"]
            end = next(e for e in events if e.get("event") == "end")
            out[name] = {
                "final_train_loss": train[-1]["loss"],
                "eval_loss": evals[-1]["eval_loss"],
                "comm_bytes_total": end["comm_bytes_total"],
                "seconds": end["seconds"],
                "train_loss_curve": [(e["step"], e["loss"]) for e in train],
            }
    return out


def _fmt_mb(b) -> str:
    return "—" if b is None else f"{b / 2**20:,.1f}"


def to_markdown(res: dict, cmd: str) -> str:
    lines = [
        "# Data-parallel GaLore: bytes communicated and step time (2 gloo processes)",
        "",
        f"Command: `{cmd}`",
        "",
        f"Machine: {res['machine']}; torch {res['torch']}; {res['note']}",
        "",
        "Bytes = payload one rank hands to torch.distributed collectives per optimizer step "
        "(a ring all-reduce moves ~2(W−1)/W × this per link). Refresh steps all-reduce full "
        "gradients in the DDP modes. FSDP2 hands over its weight shard twice per step (the "
        "all-gathers of forward and backward; the root module's once) and the full gradient "
        "once (reduce-scatter input), so its payload is about twice DDP's, but per link an "
        "all-gather or a reduce-scatter moves (W−1)/W × its full tensor against 2(W−1)/W for an "
        "all-reduce: ~1.5× DDP's traffic, for 1/W of the weights, gradients and optimizer "
        "states per rank. Its refresh steps add only the all-reduced n×l sketches of the "
        "sharded subspace iteration.",
        "",
        "| model | mode | params | MiB/step refresh | MiB/step between | mean MiB/step "
        "| collectives between | s/step refresh | s/step between |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for model, modes in res["models"].items():
        for mode in MODES:
            r = modes[mode]
            sb = "—" if r["seconds_between"] is None else f"{r['seconds_between']:.2f}"
            lines.append(
                f"| {model} | {mode} | {r['params'] / 1e6:.1f}M | {_fmt_mb(r['bytes_refresh'])} "
                f"| {_fmt_mb(r['bytes_between'])} | {_fmt_mb(r['bytes_mean_per_step'])} "
                f"| {r['calls_between']} | {r['seconds_refresh']:.2f} | {sb} |"
            )
    lines += [
        "",
        "Refresh strategies (all GaLore matrices, the run's svd method; wall time, 2 ranks):",
        "",
        "| model | matrices | every rank recomputes all | 1/W each + broadcast | "
        "broadcast MiB/rank |",
        "|---|---|---|---|---|",
    ]
    for model, modes in res["models"].items():
        s = modes["refresh_strategies"]
        lines.append(
            f"| {model} | {s['matrices']} | {s['recompute_all_seconds']:.2f} s "
            f"| {s['sharded_plus_broadcast_seconds']:.2f} s | "
            f"{_fmt_mb(s['broadcast_bytes_per_rank'])} |"
        )
    if res.get("loss"):
        lines += [
            "",
            f"Loss, low-rank communication and FSDP2 vs full all-reduce ({res['loss_setup']}):",
            "",
            "| mode | final train loss | eval loss | total MiB sent/rank | seconds |",
            "|---|---|---|---|---|",
        ]
        for mode, r in res["loss"].items():
            lines.append(
                f"| {mode} | {r['final_train_loss']:.4f} | {r['eval_loss']:.4f} "
                f"| {_fmt_mb(r['comm_bytes_total'])} | {r['seconds']:.1f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["llama_60m", "llama_130m"])
    p.add_argument("--vocab-size", type=int, default=32000)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--gap", type=int, default=3, help="update_proj_gap (refresh every GAP steps)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument(
        "--svd", default="exact", help="refresh method (bytes do not depend on it; time does)"
    )
    p.add_argument("--loss-steps", type=int, default=0, help="0: skip the loss comparison")
    p.add_argument("--loss-model", default="llama_tiny")
    p.add_argument("--loss-gap", type=int, default=20)
    p.add_argument("--out", default="benchmarks/results/distributed_comm")
    args = p.parse_args()
    if args.steps < 2 * args.gap:
        p.error("--steps must be ≥ 2 × --gap (two refresh steps and steps between them)")
    with tempfile.TemporaryDirectory() as tmp:
        out_path = str(Path(tmp) / "res.json")
        mp.spawn(_worker, args=(_free_port(), args, out_path), nprocs=WORLD, join=True)
        models = json.loads(Path(out_path).read_text())
    res = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "torch": torch.__version__,
        "note": (
            f"CPU float32, batch {args.batch_size}×{args.seq_len} tokens per rank, vocab "
            f"{args.vocab_size}, T={args.gap}, svd={args.svd}, {args.threads} thread(s) per rank; "
            "step times on a "
            "shared machine are indicative only"
        ),
        "args": vars(args),
        "models": models,
    }
    if args.loss_steps:
        res["loss"] = loss_comparison(args)
        res["loss_setup"] = (
            f"{args.loss_model}, {args.loss_steps} steps, global batch 16×64 tokens, T="
            f"{args.loss_gap}, grad clip 1.0, offline KJV+Shakespeare corpus"
        )
    cmd = "python " + " ".join(sys.argv)
    out = Path(args.out)
    atomic_write_json(out.with_suffix(".json"), {"command": cmd, **res})
    atomic_write_text(out.with_suffix(".md"), to_markdown(res, cmd))
    print(to_markdown(res, cmd))


if __name__ == "__main__":
    main()
