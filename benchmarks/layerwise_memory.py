"""Peak memory of a training step with and without layer-wise (in-backward) updates.

Trains a LLaMA-130M-shaped model (float32, CPU by default) for a few steps with each optimizer,
ordinary and layer-wise, and reports per configuration, measured in one run:

- ``step_peak``: peak bytes torch allocated during a training step (forward, backward, optimizer)
  above what existed before it (weights and optimizer states), from
  ``galorekit.memory.trackers.allocator_peak`` (CUDA allocator stats on GPU; torch.profiler's
  memory events on CPU);
- ``grad_peak``: peak bytes of live ``.grad`` tensors during backward;
- ``optimizer_state``: bytes held in optimizer state after the steps;
- the saving of layer-wise against ordinary, beside the weight-gradient bytes it should be close to.

    python benchmarks/layerwise_memory.py --model llama_130m --seq-len 128 --steps 3 \
        --json benchmarks/results/layerwise_memory.json
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import time
from pathlib import Path

import torch

from galorekit import GaLoreAdamW, LayerwiseOptimizer
from galorekit.atomic import atomic_write_json, atomic_write_text
from galorekit.memory.trackers import GradientTracker, allocator_peak, storage_bytes
from galorekit.models import build_model, default_target_modules
from galorekit.optim import param_groups

GiB = 2**30

EXPLANATION = (
    "An ordinary step peaks at the end of backward, when every weight gradient exists (plus what "
    "is still alive of the activations and the optimizer's temporaries). A layer-wise step never "
    "holds more than the gradient being used (live-gradient peak 0 once each update is done); "
    "its peak moves to the start of backward, where the activations, the logits' gradient and the "
    "largest single gradient (the 32000-row embedding or output head) are alive at once. The "
    "saving is therefore the weight gradients minus that new peak's excess over the activations — "
    "the same for AdamW and GaLore, since both keep their states outside the step."
)


def measure(model_name: str, method: str, layerwise: bool, args) -> dict:
    torch.manual_seed(0)
    model = build_model(model_name, vocab_size=args.vocab_size, seed=0, device=args.device)
    if method == "galore_adamw":
        groups = param_groups(
            model, rank=args.rank, update_proj_gap=200, target_modules=default_target_modules(model)
        )
    else:
        groups = [{"params": list(model.parameters())}]
    if layerwise:
        opt = LayerwiseOptimizer(groups, GaLoreAdamW, lr=1e-3)
    else:
        opt = GaLoreAdamW(groups, lr=1e-3)
    batch = torch.randint(0, args.vocab_size, (args.batch_size, args.seq_len), device=args.device)
    grads = GradientTracker(model.parameters()) if not layerwise else None

    def step() -> None:
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # the first step allocates optimizer states (and does the SVDs): not steady state
    if layerwise:
        # registered after the optimizer's hooks: sees what is alive once each update is done
        grads = GradientTracker(model.parameters())
    peaks, seconds = [], []
    for _ in range(args.steps):
        gc.collect()
        t0 = time.perf_counter()
        peaks.append(allocator_peak(step, torch.device(args.device)))
        seconds.append(time.perf_counter() - t0)
    state = storage_bytes(
        v for s in opt.state.values() for v in s.values() if isinstance(v, torch.Tensor)
    )
    weights = storage_bytes(model.parameters())
    result = {
        "method": method,
        "layerwise": layerwise,
        "weights": weights,
        "weight_gradients": weights,  # what an ordinary step holds at the end of backward
        "optimizer_state": state,
        "step_peak": max(peaks),
        "grad_peak": grads.peak,
        "seconds_per_step": min(seconds),
    }
    grads.remove()
    if not layerwise:
        return result
    opt.remove_hooks()
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="llama_130m")
    p.add_argument("--vocab-size", type=int, default=32000)
    p.add_argument("--rank", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default=None, help="write the results here (and a .md beside it)")
    args = p.parse_args(argv)

    rows = []
    for method in ("adamw", "galore_adamw"):
        for layerwise in (False, True):
            rows.append(measure(args.model, method, layerwise, args))
            print(json.dumps(rows[-1]), flush=True)
    lines = [
        f"Layer-wise memory, {args.model} (vocab {args.vocab_size}), float32 on {args.device}, "
        f"batch {args.batch_size} x {args.seq_len} tokens, GaLore rank {args.rank}",
        "",
        "| method | layer-wise | step peak (GiB) | live grads peak (GiB) | optimizer state (GiB) "
        "| saving vs ordinary (GiB) | weight gradients (GiB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        ordinary = next(r for r in rows if r["method"] == row["method"] and not r["layerwise"])
        saving = ordinary["step_peak"] - row["step_peak"]
        row["saving_vs_ordinary"] = saving
        lines.append(
            f"| {row['method']} | {'yes' if row['layerwise'] else 'no'} | "
            f"{row['step_peak'] / GiB:.3f} | {row['grad_peak'] / GiB:.3f} | "
            f"{row['optimizer_state'] / GiB:.3f} | {saving / GiB:.3f} | "
            f"{row['weight_gradients'] / GiB:.3f} |"
        )
    import sys

    given = sys.argv[1:] if argv is None else argv
    command = "python benchmarks/layerwise_memory.py " + " ".join(given)
    lines += ["", EXPLANATION]
    report = "\n".join(lines)
    print(report)
    if args.json:
        meta = {
            "command": command.strip(),
            "machine": f"{platform.processor() or platform.machine()}, "
            f"{torch.get_num_threads()} threads, torch {torch.__version__}",
            "args": vars(args),
        }
        atomic_write_json(args.json, {"meta": meta, "rows": rows})
        atomic_write_text(
            Path(args.json).with_suffix(".md"),
            f"{report}\n\nCommand: `{meta['command']}`\n\nMachine: {meta['machine']}\n",
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
