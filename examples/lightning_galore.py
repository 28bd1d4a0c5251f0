"""GaLore in PyTorch Lightning: ``configure_optimizers`` returns a galorekit optimizer.

    python examples/lightning_galore.py --steps 20 --accumulation 4
    python examples/lightning_galore.py --layerwise --max-grad-norm 1.0

The model is a tiny LLaMA built from a config and the data random tokens (offline anywhere).

- ordinary GaLore: ``GaLoreAdamW(param_groups(...))`` with Lightning's own
  ``accumulate_grad_batches`` and ``gradient_clip_val``.
- layer-wise (``--layerwise``) works with automatic optimization: Lightning runs each step's
  last forward/backward inside ``optimizer.step(closure)``, which is where ``LayerwiseOptimizer``
  wants it, and its earlier micro-batches' backward passes just accumulate. Lightning's
  ``gradient_clip_val`` would find no gradients (they are applied and freed inside backward):
  pass ``max_grad_norm`` to the wrapper instead (it clips with the previous step's global norm),
  and log ``optimizer.grad_norm``. On one process only: under Lightning's DDP strategy the model's
  DDP reduction would follow the hooks; use the ordinary optimizer there (or galore pretrain
  --layerwise, which reduces inside the hooks).
- FSDP2 (``ModelParallelStrategy``, ``fully_shard`` in ``configure_model``): build the GaLore
  optimizer in ``configure_optimizers`` from the sharded parameters (row-sharded DTensors, updated
  shard by shard). Not tested on this CPU-only project; galore pretrain --distributed fsdp is the
  tested FSDP2 path.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import lightning as L
import torch
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


class GaLoreLM(L.LightningModule):
    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__()
        self.args = args
        self.model = build_model(args.seed)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.model(**batch).loss
        self.log("loss", loss)
        return loss

    def on_train_batch_end(self, outputs: object, batch: object, batch_idx: int) -> None:
        optimizer = self.optimizers().optimizer
        if isinstance(optimizer, LayerwiseOptimizer) and optimizer.grad_norm is not None:
            self.log("grad_norm", optimizer.grad_norm)  # the real one: no gradients are left

    def configure_optimizers(self) -> dict:
        args = self.args
        groups = param_groups(self.model, rank=args.rank, update_proj_gap=args.update_proj_gap)
        if args.layerwise:
            optimizer = LayerwiseOptimizer(
                groups,
                GaLoreAdamW,
                accumulation_steps=args.accumulation,
                max_grad_norm=args.max_grad_norm or None,
                lr=args.lr,
            )
        else:
            optimizer = GaLoreAdamW(groups, lr=args.lr)
        warmup = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 3))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": warmup, "interval": "step"}}


def samples(n: int, seed: int = 1) -> list[dict[str, torch.Tensor]]:
    """``n`` random token sequences (a causal LM's inputs are its labels)."""
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": ids, "labels": ids} for ids in torch.randint(0, 64, (n, 8), generator=g)]


def train(args: argparse.Namespace) -> L.Trainer:
    """Train ``args.steps`` optimizer steps; returns the fitted Lightning Trainer."""
    module = GaLoreLM(args)
    loader = torch.utils.data.DataLoader(
        samples(args.steps * args.accumulation * args.batch_size), batch_size=args.batch_size
    )
    trainer = L.Trainer(
        max_steps=args.steps,
        accumulate_grad_batches=args.accumulation,
        # Lightning clips the ordinary optimizer's gradients; the layer-wise wrapper clips itself
        gradient_clip_val=None if args.layerwise or not args.max_grad_norm else args.max_grad_norm,
        accelerator="cpu" if args.cpu else "auto",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=args.output_dir,
    )
    trainer.fit(module, loader)
    return trainer


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
    parser.add_argument("--output-dir", default="lightning_logs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cpu", action="store_true", help="force the CPU")
    return parser.parse_args(argv)


if __name__ == "__main__":
    train(parse_args())
