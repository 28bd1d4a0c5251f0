"""Checkpoints of an FSDP2 run: the same atomic ``step-*`` directory as a single process, with
the sharded parts beside ``state.pt``:

- ``model/``: the model's sharded state dict through ``torch.distributed.checkpoint`` (DCP), each
  rank writing its own shards (``dcp_to_torch_save`` turns it into one ordinary file);
- ``optimizer-rank{r}.pt``: rank r's optimizer state — its rows of every moment and the
  replicated projectors — loaded with ``torch.load(weights_only=True)``;
- ``state.pt`` / ``meta.json`` (rank 0): step, scheduler, data position, every rank's RNG state,
  and the size and SHA-256 of every optimizer file.

Rank 0 creates the temporary directory, every rank writes into it, and rank 0 renames it into
place once all have finished; resuming needs the same world size (checked, with a clear error).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from galorekit.distributed.context import DistContext, barrier, broadcast_object
from galorekit.train.checkpoint import (
    CheckpointError,
    atomic_directory,
    prune_checkpoints,
    read_meta,
    resolve_checkpoint,
    verify_file,
    write_state_files,
)

MODEL_DIR = "model"


def optimizer_file(rank: int) -> str:
    return f"optimizer-rank{rank:05d}.pt"


def save_sharded_checkpoint(
    path_dir: str | os.PathLike[str],
    ctx: DistContext,
    state: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    keep_last: int | None = None,
) -> Path:
    """Collectively write the checkpoint ``path_dir`` (call on every rank): ``state`` (rank 0's
    plain values) plus the model's and the optimizer's shards."""
    import torch.distributed.checkpoint as dcp

    final = Path(path_dir)
    names = [optimizer_file(r) for r in range(ctx.world_size)]

    def write_parts(tmp: Path) -> None:
        dcp.save(model.state_dict(), checkpoint_id=str(tmp / MODEL_DIR))
        torch.save(optimizer.state_dict(), tmp / optimizer_file(ctx.rank))

    if ctx.is_main:
        with atomic_directory(final) as tmp:
            broadcast_object(ctx, str(tmp))
            write_parts(tmp)
            barrier(ctx)  # every rank's parts are on disk
            write_state_files(tmp, state, {"sharded_world_size": ctx.world_size}, names)
        if keep_last is not None:
            prune_checkpoints(final.parent, keep_last=keep_last, protect=(final,))
    else:
        write_parts(Path(broadcast_object(ctx, None)))
        barrier(ctx)
    barrier(ctx)  # renamed into place
    return final


def is_sharded_checkpoint(path: str | os.PathLike[str]) -> bool:
    return "sharded_world_size" in read_meta(resolve_checkpoint(path)).get("metadata", {})


def check_sharding(path: str | os.PathLike[str], fsdp: bool) -> None:
    """Refuse to resume a sharded (FSDP) checkpoint without FSDP, or a whole one under it."""
    saved_world = read_meta(resolve_checkpoint(path)).get("metadata", {}).get("sharded_world_size")
    if (saved_world is not None) != fsdp:
        raise CheckpointError(
            f"checkpoint {path} was written by "
            + (f"an FSDP run of {saved_world} processes" if saved_world else "a run without FSDP")
            + "; resume it with "
            + (
                f"--distributed fsdp --nproc-per-node {saved_world}"
                if saved_world
                else "--distributed ddp or one process"
            )
        )


def load_sharded_parts(
    path: str | os.PathLike[str],
    ctx: DistContext,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    map_location: torch.device | str = "cpu",
) -> None:
    """Load this rank's model and optimizer shards (call on every rank; the model is the same
    FSDP2-sharded model, over the same number of ranks, as the one saved)."""
    import torch.distributed.checkpoint as dcp

    checkpoint = resolve_checkpoint(path)
    saved_world = read_meta(checkpoint).get("metadata", {}).get("sharded_world_size")
    if saved_world is None:
        raise CheckpointError(
            f"{checkpoint} is not a sharded (FSDP) checkpoint; resume it without --distributed fsdp"
        )
    if saved_world != ctx.world_size:
        raise CheckpointError(
            f"{checkpoint} was written by {saved_world} FSDP ranks; this job has "
            f"{ctx.world_size}: resume with --nproc-per-node {saved_world}"
        )
    model_state = model.state_dict()
    try:
        dcp.load(model_state, checkpoint_id=str(checkpoint / MODEL_DIR))
    except Exception as err:  # DCP's own errors name keys, not the file
        raise CheckpointError(f"cannot load the model shards of {checkpoint}: {err}") from err
    model.load_state_dict(model_state)
    part = verify_file(checkpoint, optimizer_file(ctx.rank))
    try:
        optim_state = torch.load(part, map_location=map_location, weights_only=True)
    except Exception as err:
        raise CheckpointError(f"cannot load {part}: {err}") from err
    optimizer.load_state_dict(optim_state)
