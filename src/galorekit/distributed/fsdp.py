"""FSDP2 (``fully_shard``) for GaLore: every decoder layer and the root are sharded on dim 0.

Parameters, gradients and optimizer states are split over the ranks: each rank holds rows
``[r·⌈m/W⌉, (r+1)·⌈m/W⌉)`` of every matrix (DTensors with ``Shard(0)``). The galorekit optimizers
update those shards where they lie (``galorekit.optim.sharding``): a GaLore matrix is projected on
the right, R_i = G_i·Q, so its moments are sharded by rows like the weight, and its projector Q
is refreshed by a subspace iteration that all-reduces only n×l sketches
(``galorekit.projection.sharded``) — no rank ever holds a full gradient. Layer-wise updates work
too: FSDP2 fires the post-accumulate-grad hooks after its reduce-scatter, on the sharded gradient.

What differs from a single process: the summation order of the reduce-scatter and of the sharded
sketches (rounding), and GaLore's side — under FSDP2 every matrix is projected on the right, also
those ``std`` would project on the left (m < n), which holds their moments at m×r instead of r×n.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from galorekit.distributed.context import DistContext
from galorekit.names import SUCCESSOR_METHODS
from galorekit.optim.sharding import all_reduce_sum_, is_sharded, local

#: methods whose optimizer updates row shards in place (Adafactor's statistics span whole
#: matrices; the adapter baselines rebuild the model)
# the successors train with GaLoreAdamW or GaLoreAdamW8bit, whose updates are row-local (their
# norms are summed over the shards)
FSDP_METHODS = ("adamw", "adamw8bit", "galore_adamw", "galore_adamw8bit", *SUCCESSOR_METHODS)


def _fully_shard():
    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError:  # torch < 2.6
        from torch.distributed._composable.fsdp import fully_shard
    return fully_shard


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks of a Hugging Face decoder (``model.model.layers``), each its own
    FSDP unit so that only one block's full weights exist at a time."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    return list(layers) if isinstance(layers, nn.ModuleList) else []


def shard_model(model: nn.Module, ctx: DistContext, device: torch.device) -> nn.Module:
    """``fully_shard`` every decoder layer, then the root, over all ranks (in place; returns the
    model). Rank 0's weights are broadcast first, as DDP does, so that the shards form one model
    whatever each rank's initialization was."""
    from torch.distributed.device_mesh import init_device_mesh

    from galorekit.optim.layerwise import broadcast_parameters

    broadcast_parameters(model)
    mesh = init_device_mesh(device.type, (ctx.world_size,))
    fully_shard = _fully_shard()
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


@torch.no_grad()
def clip_grad_norm_(parameters: Iterable[torch.Tensor], max_norm: float) -> float:
    """``torch.nn.utils.clip_grad_norm_`` for gradients that may be row-sharded: the squared norms
    of the local shards are summed over the ranks (one scalar all-reduce), then every shard is
    scaled by the same coefficient. Returns the global pre-clip norm."""
    params = [p for p in parameters if p.grad is not None]
    if not params:
        return 0.0
    shards = [local(p.grad) for p in params]
    sq = torch.stack([torch.linalg.vector_norm(g, dtype=torch.float32) for g in shards]).square()
    split = torch.tensor([is_sharded(p) for p in params], device=sq.device)
    total = sq[split].sum().reshape(1)  # the sharded part is summed over the ranks
    sharded = next((p for p in params if is_sharded(p)), None)
    if sharded is not None:
        all_reduce_sum_(total, sharded)
    norm = math.sqrt(float(total) + float(sq[~split].sum()))
    coef = max_norm / (norm + 1e-6)
    if coef < 1.0:
        torch._foreach_mul_(shards, coef)
    return norm
