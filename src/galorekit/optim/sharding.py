"""Parameters sharded by FSDP2 (``torch.distributed.fsdp.fully_shard``): DTensors split on dim 0.

The GaLore optimizers update such a parameter on its local shard: the element-wise parts (Adam's
moments, weight decay, the non-GaLore parameters) are local by nature, and a GaLore matrix is
projected on the right, R_i = G_i·Q, which is local to a row shard too; only the refresh of Q
sums n×l sketches over the shards (``galorekit.projection.sharded``). The optimizer state of a
sharded parameter is therefore this process's rows only, plus the replicated projector.

Everything here is a no-op for ordinary tensors and does not import ``torch.distributed`` unless
DTensors can exist.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from galorekit.projection.sharded import RowShard


def _dtensor_type() -> type | None:
    if not torch.distributed.is_available():
        return None
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch < 2.5
        try:
            from torch.distributed._tensor import DTensor
        except ImportError:
            return None
    return DTensor


_DTENSOR = _dtensor_type()


def is_sharded(t: Tensor) -> bool:
    """Whether ``t`` is a DTensor (an FSDP2 parameter or gradient)."""
    return _DTENSOR is not None and isinstance(t, _DTENSOR)


def local(t: Tensor) -> Tensor:
    """This process's shard of a DTensor (shares its storage: in-place updates reach the
    parameter), ``t`` itself otherwise."""
    return t.to_local() if is_sharded(t) else t


def process_group(p: Tensor) -> Any:
    """The process group a sharded parameter's shards live on."""
    return p.device_mesh.get_group()


def check_row_sharded(p: Tensor, name: str) -> None:
    """FSDP2's layout — one mesh dimension, ``Shard(0)`` — is the one the optimizers understand."""
    from torch.distributed.tensor import Shard

    placements = tuple(p.placements)
    if p.device_mesh.ndim != 1 or placements != (Shard(0),):
        raise ValueError(
            f"{name} is a DTensor with placements {placements} on a {p.device_mesh.ndim}-D mesh; "
            "galorekit optimizers support FSDP2's layout (Shard(0) on a 1-D mesh) only"
        )


def row_shard(p: Tensor) -> RowShard:
    """Where this process's rows of the sharded parameter ``p`` lie, and how to sum over the
    shards (an all-reduce over the parameter's process group)."""
    import torch.distributed as dist

    group = process_group(p)
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    rows = p.shape[0]
    # Shard(0) splits like torch.chunk: ceil(rows / world) rows per rank, the last ones shorter
    chunk = -(-rows // world)
    offset = min(rank * chunk, rows)
    local_rows = local(p).shape[0]
    if local_rows != max(0, min(chunk, rows - offset)):
        raise RuntimeError(
            f"unexpected Shard(0) layout: rank {rank} of {world} holds {local_rows} of {rows} rows"
        )

    def reduce(t: Tensor) -> Tensor:
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
        return t

    return RowShard(row_offset=offset, total_rows=rows, reduce=reduce)


def all_reduce_sum_(t: Tensor, like: Tensor) -> Tensor:
    """Sum ``t`` in place over the process group of the sharded tensor ``like``."""
    import torch.distributed as dist

    dist.all_reduce(t, op=dist.ReduceOp.SUM, group=process_group(like))
    return t
