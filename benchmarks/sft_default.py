"""The default ``galore sft`` run (SmolLM2-135M-Instruct on Rotten Tomatoes as chat) for several
methods side by side: wall time, training tokens/s, generated-answer accuracy and validation loss
before/after, and memory.

Each method runs in its own process, exactly as ``galore sft --method M`` runs it (the converted
GGUF weights come from the cache, so conversion is not timed); the methods run at the same time
(``--threads`` torch threads each), so that on a shared machine they see the same load. CPU time
is recorded beside the wall time: on a busy machine it is the better measure of the cost. Memory:

- *tensor memory* (measured, labelled so): weights + optimizer state (the bytes of the tensors
  they hold after training, ``galorekit.analysis.state_bytes``) + the peak of what one more
  training step allocates on top (gradients, activations, temporaries: ``torch.profiler``'s
  allocation trace through ``galorekit.memory.trackers.allocator_peak``);
- *peak RSS* of the whole process (the Python process, transformers, the tokenizer, the data,
  the before/after generations; ``ru_maxrss``) — what ``top`` shows, not what the method needs.

    python benchmarks/sft_default.py --out benchmarks/results/sft_default

Wall times on a shared machine are inflated by other processes: the load average is recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

METHODS = {
    "adamw": ["--method", "adamw"],
    "galore_adamw": ["--method", "galore_adamw"],
    "galore_adamw8bit_layerwise": ["--method", "galore_adamw8bit", "--layerwise"],
    "lora": ["--method", "lora"],
}


def worker(flags: list[str], run_dir: Path, result_path: Path) -> None:
    """One default run with ``flags``, then one more step measured; the record as JSON."""
    import torch

    from galorekit.analysis.state_bytes import state_bytes
    from galorekit.memory.trackers import allocator_peak, storage_bytes
    from galorekit.train.sft import sft
    from galorekit.train.sft_cli import add_arguments, config_from_args
    from galorekit.train.sft_eval import sft_loss

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args([*flags, "--output-dir", str(run_dir), "--overwrite", "--no-progress"])
    result = sft(config_from_args(args))
    model, optimizer = result.model, result.optimizer
    model.train()

    def one_step() -> None:
        batch = result.batches.next()
        sft_loss(model, batch).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    resident = storage_bytes(p for p in model.parameters()) + state_bytes(optimizer)
    step_peak = allocator_peak(one_step, "cpu")
    record = {
        "flags": flags,
        "steps": result.steps,
        "seconds_total": result.seconds,
        "tokens_per_s": result.tokens_per_s,
        "accuracy_before": result.before.get("accuracy"),
        "accuracy_after": result.after.get("accuracy"),
        "val_loss_before": result.before.get("val_loss"),
        "val_loss_after": result.after.get("val_loss"),
        "held_out": result.after.get("n"),
        "weights_bytes": storage_bytes(p for p in model.parameters()),
        "optimizer_state_bytes": state_bytes(optimizer),
        "step_peak_bytes": step_peak,
        "tensor_memory_bytes": resident + step_peak,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "cpu_seconds": (lambda r: r.ru_utime + r.ru_stime)(
            resource.getrusage(resource.RUSAGE_SELF)
        ),
        "torch_threads": torch.get_num_threads(),
        "samples_after": result.after.get("samples"),
    }
    result_path.write_text(json.dumps(record, indent=1), encoding="utf-8")


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f}"


def report(results: dict[str, dict], meta: dict) -> str:
    base = results.get("adamw")
    lines = [
        "# galore sft default run, methods side by side",
        "",
        f"Command: `{meta['command']}`  ",
        f"Machine: {meta['machine']}; load average before/after: {meta['load_before']} / "
        f"{meta['load_after']} (shared by other jobs: wall times and tokens/s are inflated and "
        "noisy; compare accuracy, loss and memory first).",
        "",
        "| method | steps | wall (s) | CPU (s) | tokens/s | acc. before | acc. after | val loss before | "
        "val loss after | weights GiB | opt. state GiB | tensor memory GiB (measured) | "
        "× adamw | peak RSS GiB (process) |",
        "|---|" + "---|" * 13,
    ]
    for name, r in results.items():
        ratio = r["tensor_memory_bytes"] / base["tensor_memory_bytes"] if base else float("nan")
        lines.append(
            f"| {name} | {r['steps']} | {r['seconds_total']:.0f} | {r['cpu_seconds']:.0f} | "
            f"{r['tokens_per_s']:.0f} | "
            f"{r['accuracy_before']:.3f} | {r['accuracy_after']:.3f} | "
            f"{r['val_loss_before']:.3f} | {r['val_loss_after']:.3f} | "
            f"{_gib(r['weights_bytes'])} | {_gib(r['optimizer_state_bytes'])} | "
            f"{_gib(r['tensor_memory_bytes'])} | {ratio:.2f} | {_gib(r['peak_rss_bytes'])} |"
        )
    lines += [
        "",
        f"Accuracy: greedily generated answers to {next(iter(results.values()))['held_out']} "
        "held-out test reviews (never used for a choice), parsed for positive/negative. "
        "One seed; each method at its default fine-tuning learning rate (`galore sft --help`).",
        "Tensor memory = weights + optimizer state + the peak one more training step allocates "
        "(gradients, activations); peak RSS is the whole process.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="benchmarks/results/sft_default")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more sft flags")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--worker-name", help=argparse.SUPPRESS)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per method (OMP_NUM_THREADS); the methods run at the same time, "
        "side by side under the same load",
    )
    args = parser.parse_args()
    out = Path(args.out)
    if args.worker:
        runs = Path(tempfile.gettempdir()) / "galore-sft-default-runs"  # GBs: not committed
        name = args.worker_name
        worker(json.loads(args.worker), runs / name, out / f".{name}.json")
        return
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "command": "python benchmarks/sft_default.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "load_before": round(os.getloadavg()[0], 1),
    }
    procs = {}
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    for name in args.methods:  # at the same time: every method sees the same machine load
        flags = METHODS[name] + args.extra
        command = [sys.executable, __file__, "--out", str(out), "--worker", json.dumps(flags)]
        log = open(out / f"{name}.log", "w", encoding="utf-8")  # noqa: SIM115
        procs[name] = subprocess.Popen(
            [*command, "--worker-name", name], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    results = {}
    for name, proc in procs.items():
        if proc.wait() != 0:
            raise SystemExit(f"{name} failed: see {out / (name + '.log')}")
        path = out / f".{name}.json"
        results[name] = json.loads(path.read_text(encoding="utf-8"))
        path.unlink()
    meta["load_after"] = round(os.getloadavg()[0], 1)
    (out / "results.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    (out / "results.md").write_text(report(results, meta), encoding="utf-8")
    print(report(results, meta))


if __name__ == "__main__":
    main()
