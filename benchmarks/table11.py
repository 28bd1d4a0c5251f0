"""The paper's Table 11 at laptop scale: tokens/s and peak memory of AdamW, Adafactor, 8-bit Adam
and 8-bit GaLore (and GaLore), each ordinary and layer-wise, in the real ``galore pretrain`` loop.

    PYTHONPATH=src python benchmarks/table11.py                       # llama_20m, 8 x 256, fp32
    PYTHONPATH=src python benchmarks/table11.py --repeats 1 --steps 6  # a smoke run

**Throughput.** Every (method, layer-wise) configuration is a ``galore pretrain`` process (the
CLI, its loop, data and logging) of ``--steps`` optimizer steps with ``--log-every 1``; a step's
time is ``tokens / tokens_per_s`` of its ``metrics.jsonl`` event. GaLore runs refresh their
subspaces every ``--gap`` steps (galorekit's default refresh, warm-started subspace iteration)
so that each run holds refresh steps (1, 1 + gap, …) and steady steps; the first two steps
(allocation, first projection, warm caches) are left out of both. The configurations run in
turn, ``--repeats`` times, in an order rotated and reversed from one repeat to the next, so that
load from other jobs on a shared machine hits all of them alike; reported are medians, and the
ratios are *paired*: per repeat, the ratio of two configurations' median steady step, then the
median over repeats. ``amortized`` is the step time at T = ``--amortize-gap`` (the paper's 200):
(refresh + (T − 1)·steady) / T, from the measured refresh and steady steps.

**Memory, two numbers, labelled.** *Process peak RSS*: the loop's ``peak_memory_bytes`` on CPU
(the whole process: Python, torch, data, model; each configuration in its own process).
*Tensor memory*: ``galorekit.memory.measure`` on the same model, batch and method — weights,
peak of live gradients, optimizer states, peak of saved activations, and the torch allocator's
peak during two steps (what the paper's GPU figures count). GaLore's saving shows in the
latter; the RSS hides it under the process's fixed cost.

Results: ``benchmarks/results/table11/`` (``table11.json``, ``table11.md``), with the command.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: the paper's Table 11 methods (``--methods`` adds e.g. galore_adamw)
METHODS = ("adamw", "adafactor", "adamw8bit", "galore_adamw8bit")
LABELS = {
    "adamw": "AdamW",
    "adafactor": "Adafactor",
    "adamw8bit": "8-bit Adam",
    "galore_adamw": "GaLore",
    "galore_adamw8bit": "8-bit GaLore",
}
#: Table 11 (LLaMA 1B, token batch 256, A100): (memory GB, tokens/s)
PAPER = {
    ("adamw", False): (13.60, 1256.98),
    ("adafactor", False): (13.15, 581.02),
    ("adamw8bit", False): (9.54, 1569.89),
    ("galore_adamw8bit", False): (7.95, 1109.38),
    ("adamw", True): (9.63, 1354.37),
    ("adafactor", True): (10.32, 613.90),
    ("adamw8bit", True): (6.93, 1205.31),
    ("galore_adamw8bit", True): (5.63, 1019.63),
}
#: paired ratios reported: (numerator, denominator) configurations
RATIOS = [
    (("galore_adamw", False), ("adamw", False)),
    (("galore_adamw", True), ("adamw", True)),
    (("galore_adamw8bit", False), ("adamw8bit", False)),
    (("galore_adamw8bit", True), ("adamw8bit", True)),
    (("galore_adamw8bit", True), ("adamw8bit", False)),
    *(((m, True), (m, False)) for m in LABELS),
]


def name(config: tuple[str, bool]) -> str:
    method, layerwise = config
    return LABELS[method] + (" layer-wise" if layerwise else "")


def is_galore(method: str) -> bool:
    return method.startswith("galore")


def run_pretrain(args: argparse.Namespace, config: tuple[str, bool], out: Path) -> dict:
    """One ``galore pretrain`` process; its step times and peak RSS."""
    method, layerwise = config
    cmd = [
        sys.executable, "-m", "galorekit", "pretrain",
        "--model", args.model, "--method", method,
        "--max-steps", str(args.steps), "--batch-size", str(args.batch_size),
        "--seq-len", str(args.seq_len), "--val-sequences", "8",
        "--update-proj-gap", str(args.gap), "--log-every", "1", "--eval-every", "0",
        "--save-every", "0", "--output-dir", str(out), "--overwrite",
        "--no-progress", "--no-tensorboard", "--no-plot",
    ]  # fmt: skip
    if layerwise:
        cmd.append("--layerwise")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = {e["step"]: e for e in events if e.get("event") == "train"}
    tokens = args.batch_size * args.seq_len
    seconds = {step: tokens / e["tokens_per_s"] for step, e in train.items()}
    # GaLore refreshes at steps 1, 1 + gap, …; the other methods' same steps count as steady
    due = {s for s in seconds if s > 2 and (s - 1) % args.gap == 0}
    refresh = due if is_galore(method) else set()
    steady = [seconds[s] for s in seconds if s > 2 and s not in refresh]
    return {
        "steady_s": statistics.median(steady),
        "refresh_s": statistics.median(seconds[s] for s in refresh) if refresh else None,
        "step_seconds": {str(s): v for s, v in sorted(seconds.items())},
        "peak_rss_bytes": max(e["peak_memory_bytes"] for e in train.values()),
    }


def tensor_memory(args: argparse.Namespace, config: tuple[str, bool], vocab: int) -> dict:
    """``galorekit.memory.measure`` of the configuration (torch tensors only)."""
    from galorekit.memory import TrainingSetup
    from galorekit.memory.measure import measure

    method, layerwise = config
    setup = TrainingSetup(
        method=method,
        layerwise=layerwise,
        precision="fp32",
        batch_size=args.batch_size,
        seq_len=args.seq_len,
    )
    return measure(args.model, setup, vocab_size=vocab, steps=2).as_dict()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="llama_20m")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--steps", type=int, default=10, help="optimizer steps per run")
    p.add_argument("--gap", type=int, default=4, help="GaLore's T in the timed runs")
    p.add_argument("--amortize-gap", type=int, default=200, help="T of the amortized column")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--out", default="benchmarks/results/table11")
    p.add_argument(
        "--methods",
        default=",".join(METHODS),
        help=f"comma-separated methods, each ordinary and layer-wise (default {','.join(METHODS)})",
    )
    p.add_argument("--from-json", help="only re-render the markdown of a table11.json")
    p.add_argument(
        "--remeasure-memory",
        metavar="JSON",
        help="measure the tensor-memory columns of a table11.json again (its model, batch and "
        "methods), keep its timings, and rewrite it and its markdown",
    )
    args = p.parse_args(argv)
    if args.remeasure_memory:
        return remeasure_memory(Path(args.remeasure_memory), argv)
    if args.from_json:
        data = json.loads(Path(args.from_json).read_text())
        Path(args.from_json).with_suffix(".md").write_text(markdown(data))
        return 0
    configs = [(m, lw) for m in args.methods.split(",") for lw in (False, True)]
    unknown = [m for m, _ in configs if m not in LABELS]
    if unknown:
        p.error(f"unknown method(s) {', '.join(sorted(set(unknown)))}; valid: {', '.join(LABELS)}")
    if args.steps < 2 + args.gap + 1:
        p.error(f"--steps must be ≥ {3 + args.gap} (steady and refresh steps after two warm-up)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()

    runs: dict[tuple[str, bool], list[dict]] = {c: [] for c in configs}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            order = configs[rep % len(configs) :] + configs[: rep % len(configs)]
            if rep % 2:
                order.reverse()
            for config in order:
                result = run_pretrain(args, config, Path(tmp) / f"{config[0]}-{config[1]}")
                runs[config].append(result)
                print(f"[{rep + 1}/{args.repeats}] {name(config)}: steady "
                      f"{result['steady_s']:.3f} s, rss {result['peak_rss_bytes'] / 2**20:.0f} MiB",
                      file=sys.stderr, flush=True)  # fmt: skip

    from galorekit.data import DataConfig, build_tokenizer

    vocab = len(build_tokenizer(DataConfig(seq_len=args.seq_len)))
    tensors = {c: tensor_memory(args, c, vocab) for c in configs}
    tokens = args.batch_size * args.seq_len
    rows = []
    for config in configs:
        steady = statistics.median(r["steady_s"] for r in runs[config])
        refresh = [r["refresh_s"] for r in runs[config] if r["refresh_s"] is not None]
        refresh_s = statistics.median(refresh) if refresh else None
        t = args.amortize_gap
        amortized = (refresh_s + (t - 1) * steady) / t if refresh_s is not None else steady
        rows.append(
            {
                "config": name(config),
                "method": config[0],
                "layerwise": config[1],
                "steady_s": steady,
                "tokens_per_s": tokens / steady,
                "refresh_s": refresh_s,
                "amortized_s": amortized,
                "amortized_tokens_per_s": tokens / amortized,
                "peak_rss_bytes": statistics.median(r["peak_rss_bytes"] for r in runs[config]),
                "tensor_memory": tensors[config],
                "paper": PAPER.get(config),
                "runs": runs[config],
            }
        )
    ratios = []
    for a, b in RATIOS:
        if a not in runs or b not in runs:
            continue
        pairs = zip(runs[a], runs[b], strict=True)
        paired = [rb["steady_s"] / ra["steady_s"] for ra, rb in pairs]  # tokens/s of a over b
        paper = PAPER[a][1] / PAPER[b][1] if a in PAPER and b in PAPER else None
        ratios.append(
            {
                "ratio": f"{name(a)} / {name(b)}",
                "throughput_ratio": statistics.median(paired),
                "per_repeat": paired,
                "tensor_peak_ratio": tensors[a]["peak"] / tensors[b]["peak"],
                "paper_throughput_ratio": paper,
            }
        )
    command = "PYTHONPATH=src python benchmarks/table11.py " + shlex.join(argv or sys.argv[1:])
    data = {
        "command": command.strip(),
        "settings": vars(args),
        "tokens_per_step": tokens,
        "vocab_size": vocab,
        "minutes": (time.time() - started) / 60,
        "rows": rows,
        "ratios": ratios,
    }
    (out / "table11.json").write_text(json.dumps(data, indent=2) + "\n")
    (out / "table11.md").write_text(markdown(data))
    print(markdown(data))
    return 0


def remeasure_memory(path: Path, argv: list[str] | None) -> int:
    """``--remeasure-memory``: the tensor memory of every row of ``path`` measured again."""
    data = json.loads(path.read_text())
    args = argparse.Namespace(**data["settings"])
    tensors = {
        (r["method"], r["layerwise"]): tensor_memory(
            args, (r["method"], r["layerwise"]), data["vocab_size"]
        )
        for r in data["rows"]
    }
    for r in data["rows"]:
        r["tensor_memory"] = tensors[(r["method"], r["layerwise"])]
    by_name = {r["config"]: (r["method"], r["layerwise"]) for r in data["rows"]}
    for r in data["ratios"]:
        a, b = (by_name[part] for part in r["ratio"].split(" / "))
        r["tensor_peak_ratio"] = tensors[a]["peak"] / tensors[b]["peak"]
    command = "PYTHONPATH=src python benchmarks/table11.py " + shlex.join(argv or sys.argv[1:])
    data["memory_command"] = command
    path.write_text(json.dumps(data, indent=2) + "\n")
    path.with_suffix(".md").write_text(markdown(data))
    print(markdown(data))
    return 0


def _mib(n: float | None) -> str:
    return "–" if n is None else f"{n / 2**20:,.0f} MiB"


def markdown(data: dict) -> str:
    s = data["settings"]
    lines = [
        "# Table 11 at laptop scale — throughput and memory in the `galore pretrain` loop",
        "",
        f"- command: `{data['command']}`",
        *(
            [f"- tensor-memory columns measured again: `{data['memory_command']}`"]
            if "memory_command" in data
            else []
        ),
        f"- `{s['model']}` (vocabulary {data['vocab_size']}), {s['batch_size']} × {s['seq_len']}"
        f" = {data['tokens_per_step']:,} tokens a step, float32 on CPU, {s['threads']} thread(s)"
        f"; {s['steps']} steps a run, {s['repeats']} interleaved repeats; GaLore rank d/4, "
        f"refresh every {s['gap']} steps in the timed runs (steady steps and refresh steps "
        f"measured apart), amortized at T = {s['amortize_gap']}",
        "- one machine, shared with other jobs: read the paired ratios, not the absolute "
        "seconds; one seed, medians over repeats",
        "",
        "| method | tokens/s (steady) | refresh step (s) | tokens/s amortized at T = "
        f"{s['amortize_gap']} | process peak RSS | tensor memory: weights + states + "
        "gradients + activations | optimizer states | gradients (peak) | activations (peak) | "
        "allocator peak | paper A100: memory / tokens/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in data["rows"]:
        t = r["tensor_memory"]
        paper = f"{r['paper'][0]:.2f} GB / {r['paper'][1]:.0f}" if r["paper"] else "–"
        refresh = f"{r['refresh_s']:.2f} (steady {r['steady_s']:.2f})" if r["refresh_s"] else "–"
        overhead = r["amortized_s"] / r["steady_s"] - 1
        parts = ("weights", "optimizer_states", "gradients", "activations")
        lines.append(
            f"| {r['config']} | {r['tokens_per_s']:,.0f} | {refresh} | "
            f"{r['amortized_tokens_per_s']:,.0f} ({overhead:+.1%}) | "
            f"{_mib(r['peak_rss_bytes'])} | {_mib(sum(t[k] for k in parts))} | "
            f"{_mib(t['optimizer_states'])} | {_mib(t['gradients'])} | "
            f"{_mib(t['activations'])} | {_mib(t['peak'])} | {paper} |"
        )
    lines += [
        "",
        "Paired ratios (throughput: median over repeats of the per-repeat ratio of steady "
        "tokens/s; tensor peak: the allocator's peak):",
        "",
        "| ratio | throughput | per repeat | tensor peak | paper A100 throughput |",
        "|---|---|---|---|---|",
    ]
    for r in data["ratios"]:
        paper = f"{r['paper_throughput_ratio']:.2f}" if r["paper_throughput_ratio"] else "–"
        per = ", ".join(f"{x:.2f}" for x in r["per_repeat"])
        lines.append(
            f"| {r['ratio']} | {r['throughput_ratio']:.2f} | {per} | "
            f"{r['tensor_peak_ratio']:.2f} | {paper} |"
        )
    lines += [
        "",
        "Process peak RSS is what `galore pretrain` logs as `peak_memory_bytes` on CPU (the whole"
        " process). Tensor memory is `galorekit.memory.measure` on the same model, batch and"
        " method: the weights, the optimizer states, the peak of live gradients and of saved"
        " activations (their sum is what the paper's memory column counts), and the torch"
        " allocator's peak during two steps (which adds transient buffers: logits and their"
        " gradient, the optimizer's temporaries, the first projection's workspace). At this"
        " scale the allocator's peak comes early in backward, while the logits and their gradient"
        " (8 × 256 × 8192 floats, 64 MiB each) are alive and few weight gradients exist yet: the"
        " layer-wise saving of gradients shows in the sum, not in that peak.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
