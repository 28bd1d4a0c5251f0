"""Who am I in a torchrun job: process-group set-up from torchrun's environment, and the few
collective helpers the training loop needs (rank-0-first sections, scalar reductions, objects).

Backends: NCCL on CUDA, gloo on CPU. Every helper is a no-op (or the identity) in a single process,
so the loop calls them unconditionally.
"""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

#: variables torchrun sets for every worker
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job. ``initialized_here``: this module created the process
    group (and ``shutdown`` destroys it)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    initialized_here: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_world_size() -> int:
    """WORLD_SIZE set by torchrun (1 outside a torchrun job)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        raise ValueError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not an integer") from None


def inside_torchrun() -> bool:
    return all(name in os.environ for name in TORCHRUN_ENV)


def init_distributed(device_type: str, timeout_s: float = 1800.0) -> DistContext:
    """Join the torchrun job described by the environment (or an already initialized default
    group); a single process when there is neither. ``device_type`` picks the backend."""
    if dist.is_available() and dist.is_initialized():
        return DistContext(
            rank=dist.get_rank(),
            world_size=dist.get_world_size(),
            local_rank=int(os.environ.get("LOCAL_RANK", "0")),
            backend=str(dist.get_backend()),
        )
    world = env_world_size()
    if world == 1:
        return DistContext()
    if not inside_torchrun():
        missing = [name for name in TORCHRUN_ENV if name not in os.environ]
        raise RuntimeError(
            f"WORLD_SIZE={world} but {', '.join(missing)} not set: launch through "
            "`galore pretrain --nproc-per-node N` or `torchrun --nproc_per_node N -m galorekit ...`"
        )
    backend = "nccl" if device_type == "cuda" else "gloo"
    local_rank = int(os.environ["LOCAL_RANK"])
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    return DistContext(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=local_rank,
        backend=backend,
        initialized_here=True,
    )


def shutdown(ctx: DistContext) -> None:
    if ctx.initialized_here and dist.is_initialized():
        # free what still holds the process group (a DDP reducer, a comm hook's state in a
        # reference cycle) while it exists: freed after it, at interpreter exit, gloo's threads
        # can abort the process ("terminate called without an active exception") after a run
        # that finished, seen under load with --lowrank-comm
        gc.collect()
        dist.destroy_process_group()


def run_as_job(
    device: torch.device, world_size: int, body: Callable[[DistContext, torch.device], Any]
) -> Any:
    """``body(ctx, device)`` in this process — alone, or as one rank of a torchrun job of
    ``world_size`` processes (a config built for another size is refused; each rank takes its own
    CUDA device) — then a barrier, so that every rank's collectives are done before the process
    group goes, which it does whatever happens."""
    ctx = init_distributed(device.type)
    try:
        if ctx.world_size != world_size:
            raise ValueError(
                f"the config was built for {world_size} processes but this job has "
                f"{ctx.world_size}; build the config inside the job (world_size=None)"
            )
        if ctx.enabled and device.type == "cuda":
            device = torch.device("cuda", ctx.local_rank)
        result = body(ctx, device)
        barrier(ctx)
        return result
    finally:
        shutdown(ctx)


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


@contextlib.contextmanager
def main_first(ctx: DistContext) -> Iterator[None]:
    """Rank 0 runs the block first (e.g. tokenising into a shared cache), then the others, which
    find its results on disk instead of racing to write them. An error on rank 0 still releases
    the others (they then run the block themselves and normally hit the same error)."""
    if ctx.enabled and not ctx.is_main:
        dist.barrier()
        yield
        return
    try:
        yield
    finally:
        if ctx.enabled:
            dist.barrier()


def run_on_main(ctx: DistContext, fn: Callable[[], Any]) -> Any:
    """``fn()`` on rank 0 only (side effects such as creating the run directory); its result —
    or the exception it raised — on every rank, so that all ranks fail together."""
    result: Any = None
    error: BaseException | None = None
    if ctx.is_main:
        try:
            result = fn()
        except Exception as err:  # shared with the other ranks, re-raised everywhere
            error = err
    result, error = broadcast_object(ctx, (result, error))
    if error is not None:
        raise error
    return result


def broadcast_object(ctx: DistContext, obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (a run directory name, a decision)."""
    if not ctx.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(ctx: DistContext, obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not ctx.enabled:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(ctx: DistContext, values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum over ranks of a few floats, in one collective (float64, so that summing
    token-weighted losses loses nothing)."""
    if not ctx.enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()
