"""GaLore in an accelerate loop: prepare, accumulate, clip_grad_norm_, save_state/load_state.

    accelerate launch examples/accelerate_galore.py --steps 20 --accumulation 4
    python examples/accelerate_galore.py --layerwise --max-grad-norm 1.0

The model is a tiny LLaMA built from a config and the data random tokens, so that the example
runs anywhere offline; swap in your own model and DataLoader. Only the optimizer lines differ
from an ordinary accelerate loop:

- ordinary GaLore: ``GaLoreAdamW(param_groups(model, rank=..., target_modules=...))`` and the loop
  as usual (``accelerator.clip_grad_norm_`` clips the full gradients);
- layer-wise (``--layerwise``): ``LayerwiseOptimizer(..., accumulation_steps=N,
  max_grad_norm=...)`` updates each parameter inside backward, so there are no gradients left for
  ``accelerator.clip_grad_norm_``: the wrapper clips (with the previous step's global norm) and
  reports ``optimizer.grad_norm``. accelerate calls its ``step()`` and ``zero_grad()`` only at the
  end of an accumulation, as the wrapper expects. With several processes (DDP) every backward runs
  under ``accelerator.no_sync(model)``: the wrapper averages each gradient over the processes in
  its hook, before DDP's own reduction would.
- FSDP2 (``FullyShardedDataParallelPlugin(fsdp_version=2)``): prepare the model first, then build
  the ordinary (or layer-wise) GaLore optimizer from the prepared model's parameters — row-sharded
  DTensors, which galorekit's optimizers update shard by shard — and prepare it. (Not tested on
  this CPU-only project; galore pretrain --distributed fsdp is the tested FSDP2 path.)
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Sequence

import torch
from accelerate import Accelerator
from transformers import LlamaConfig, LlamaForCausalLM

from galorekit import GaLoreAdamW, LayerwiseOptimizer, param_groups


def build_model(seed: int) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def samples(n: int, seed: int = 1) -> list[dict[str, torch.Tensor]]:
    """``n`` random token sequences (a causal LM's inputs are its labels)."""
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": ids, "labels": ids} for ids in torch.randint(0, 64, (n, 8), generator=g)]


def build_optimizer(model: torch.nn.Module, args: argparse.Namespace) -> torch.optim.Optimizer:
    groups = param_groups(model, rank=args.rank, update_proj_gap=args.update_proj_gap)
    if args.layerwise:
        return LayerwiseOptimizer(
            groups,
            GaLoreAdamW,
            accumulation_steps=args.accumulation,
            max_grad_norm=args.max_grad_norm or None,
            lr=args.lr,
        )
    return GaLoreAdamW(groups, lr=args.lr)


def train(args: argparse.Namespace) -> dict[str, torch.Tensor]:
    """Train ``args.steps`` optimizer steps (resuming from ``args.load_state``, saving at
    ``args.save_at`` into ``args.save_state``); returns the final weights."""
    accelerator = Accelerator(gradient_accumulation_steps=args.accumulation, cpu=args.cpu)
    model = build_model(args.seed)
    optimizer = build_optimizer(model, args)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 3))
    loader = torch.utils.data.DataLoader(
        samples(args.steps * args.accumulation * args.batch_size), batch_size=args.batch_size
    )
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    start = 0
    if args.load_state:
        accelerator.load_state(args.load_state)
        start = args.save_at * args.accumulation  # micro-batches already trained
        loader = accelerator.skip_first_batches(loader, start)
    layerwise = args.layerwise and accelerator.num_processes > 1
    for i, batch in enumerate(loader, start=start):
        sync_off = accelerator.no_sync(model) if layerwise else contextlib.nullcontext()
        with accelerator.accumulate(model), sync_off:
            loss = model(**batch).loss
            accelerator.backward(loss)
            if accelerator.sync_gradients and not args.layerwise and args.max_grad_norm:
                accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
        if accelerator.sync_gradients:
            step = (i + 1) // args.accumulation
            if args.layerwise:  # the wrapper's global pre-clip norm (no gradients are left)
                norm = optimizer.optimizer.grad_norm
                accelerator.print(f"step {step} loss {loss.item():.4f} grad_norm {norm:.4f}")
            if args.save_state and step == args.save_at:
                accelerator.save_state(args.save_state)
    accelerator.wait_for_everyone()
    return {n: p.detach().clone() for n, p in accelerator.unwrap_model(model).named_parameters()}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps")
    parser.add_argument("--accumulation", type=int, default=2, help="micro-batches per step")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--update-proj-gap", type=int, default=2)
    parser.add_argument("--max-grad-norm", type=float, default=0.0, help="0: no clipping")
    parser.add_argument("--layerwise", action="store_true", help="update inside backward")
    parser.add_argument("--save-state", help="accelerator.save_state directory")
    parser.add_argument("--save-at", type=int, default=0, help="the step to save (and resume) at")
    parser.add_argument("--load-state", help="resume from this save_state directory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cpu", action="store_true", help="force the CPU")
    return parser.parse_args(argv)


if __name__ == "__main__":
    train(parse_args())
