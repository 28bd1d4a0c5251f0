"""Data parallelism for GaLore: the model a loop runs forward on, and how gradients are averaged.

- Ordinary optimizers (GaLore or not): ``DistributedDataParallel`` with our counted all-reduce hook,
  or the low-rank one (``galorekit.distributed.hooks``). After backward every rank holds the same
  averaged gradient, so every rank computes the same subspace refresh from it (a deterministic
  SVD / seeded randomized refresh of identical inputs): projectors stay identical without being
  communicated. Micro-batches before the last run under ``no_sync``.
- Layer-wise (``galorekit.LayerwiseOptimizer``): no DDP wrapper — DDP reduces after the
  optimizer's in-backward hooks have already updated. The optimizer all-reduces each final
  gradient inside its hook; the initial weights are broadcast from rank 0 here.
- FSDP2 (``strategy="fsdp"``, ``galorekit.distributed.fsdp``): the model was sharded with
  ``shard_model`` *before* the optimizer was built (it must see the sharded parameters).
  Micro-batches before the last skip the reduce-scatter (``set_requires_gradient_sync``), except
  layer-wise, where every micro-batch reduce-scatters so that only sharded gradients are kept
  between micro-batches and the hooks count every backward.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from galorekit.distributed.context import DistContext
from galorekit.distributed.hooks import register_comm_hook
from galorekit.names import DISTRIBUTED_STRATEGIES as STRATEGIES


@dataclass
class DataParallelModel:
    """``module``: call it for the forward pass (a DDP wrapper or the model itself);
    ``model``: the unwrapped model (state dicts, evaluation); ``fsdp``: the model is
    FSDP2-sharded; ``layerwise``: the optimizer updates in backward."""

    module: nn.Module
    model: nn.Module
    fsdp: bool = False
    layerwise: bool = False

    @property
    def is_ddp(self) -> bool:
        return isinstance(self.module, nn.parallel.DistributedDataParallel)

    @contextlib.contextmanager
    def accumulate(self, last: bool) -> Iterator[None]:
        """Wrap a micro-batch's forward *and* backward: only the last one communicates."""
        if self.is_ddp and not last:
            with self.module.no_sync():
                yield
        elif self.fsdp and not self.layerwise:
            self.module.set_requires_gradient_sync(last)
            yield
        else:
            yield

    def clip_grad_norm_(self, max_norm: float) -> float:
        """Clip the gradients to a global norm (``math.inf``: measure only); returns the norm."""
        params = [p for p in self.model.parameters() if p.grad is not None]
        if self.fsdp:
            from galorekit.distributed.fsdp import clip_grad_norm_

            return clip_grad_norm_(params, max_norm)
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm))


def _no_buffer_sync() -> dict[str, bool]:
    """The only buffers (rotary frequencies) are constants: synced once at construction, not
    re-broadcast before every forward (the keyword changed name in torch 2.13)."""
    params = inspect.signature(nn.parallel.DistributedDataParallel.__init__).parameters
    if "forward_sync_buffers" in params:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}


def setup_data_parallel(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    ctx: DistContext,
    device: torch.device,
    *,
    layerwise: bool,
    lowrank_comm: bool = False,
    process_group: Any = None,
    strategy: str = "ddp",
) -> DataParallelModel:
    """Make ``model`` data-parallel over ``ctx``'s ranks (the identity in one process). With
    ``strategy="fsdp"`` the model must already be sharded (``galorekit.distributed.fsdp``)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown data-parallel strategy {strategy!r}; valid: {STRATEGIES}")
    if not ctx.enabled:
        if lowrank_comm:
            raise ValueError("low-rank gradient communication needs more than one process")
        return DataParallelModel(model, model, layerwise=layerwise)
    if strategy == "fsdp":
        from galorekit.optim.sharding import is_sharded

        if lowrank_comm:
            raise ValueError(
                "low-rank gradient communication is a DDP option: FSDP2 reduce-scatters full "
                "gradients; use --distributed ddp with --lowrank-comm"
            )
        if not all(is_sharded(p) for p in model.parameters()):
            raise ValueError(
                "strategy='fsdp' needs a model sharded by galorekit.distributed.fsdp.shard_model "
                "before its optimizer is built"
            )
        return DataParallelModel(model, model, fsdp=True, layerwise=layerwise)
    if layerwise:
        from galorekit.optim.layerwise import LayerwiseOptimizer, broadcast_parameters

        if lowrank_comm:
            raise ValueError(
                "low-rank gradient communication is not available with --layerwise (the "
                "layer-wise optimizer reduces full gradients inside its hooks); drop one of them"
            )
        if not isinstance(optimizer, LayerwiseOptimizer) or not optimizer.data_parallel:
            raise ValueError(
                "layer-wise training under torch.distributed needs a LayerwiseOptimizer whose "
                "hooks all-reduce (data_parallel=None or True)"
            )
        broadcast_parameters(model, group=process_group)
        return DataParallelModel(model, model, layerwise=True)
    ddp = nn.parallel.DistributedDataParallel(
        model,
        device_ids=[device.index] if device.type == "cuda" else None,
        process_group=process_group,
        # .grad are views into the communication buckets: no second copy of every gradient
        gradient_as_bucket_view=True,
        **_no_buffer_sync(),
    )
    register_comm_hook(ddp, optimizer, lowrank=lowrank_comm, process_group=process_group)
    return DataParallelModel(ddp, model)
