"""DDP communication hooks: the plain averaging all-reduce, and low-rank gradient communication.

Low-rank communication (the paper's future-work item: data-parallel GaLore on low-bandwidth links).
Between two subspace refreshes a GaLore optimizer only ever uses the projected gradient
R = PᵀG (or GQ, PᵀGQ) of a targeted matrix, and projection is linear, so the mean over ranks of the
local projections is exactly the projection of the mean gradient. Each rank therefore all-reduces
R (r×n instead of m×n) and hands the optimizer G' = P·R̄; the optimizer projects it again and gets
Pᵀ P R̄ = R̄ (P has orthonormal columns). At a refresh step (and before the first one) the optimizer
needs the full mean gradient for its SVD, so that matrix is all-reduced in full. Parameters that
are not GaLore's (embeddings, norms, output head) are always all-reduced in full.

What changes against full all-reduce: only what reads the *full* gradient between refreshes — the
global gradient norm (hence clipping) sees ‖R̄‖ instead of ‖Ḡ‖ for GaLore matrices. The GaLore
updates themselves are the same to float rounding.

Both hooks put everything a bucket sends into one flat tensor and one ``dist.all_reduce`` call (so
``galorekit.distributed.comm.CommCounter`` counts exactly what is sent).
"""

# no `from __future__ import annotations`: DDP checks the hooks' annotations at runtime
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from galorekit.distributed.projection_view import ProjectionLookup, ProjectionView
from galorekit.optim.validation import as_matrix
from galorekit.projection import project, project_back


@dataclass
class HookState:
    """State of a communication hook. ``lookup`` (low-rank hook only) gives the projector that
    the next update of a parameter will use."""

    process_group: Any = None
    lookup: Callable[[Tensor], ProjectionView | None] | None = None

    def world(self) -> int:
        return dist.get_world_size(self.process_group)


def _reduce_flat(state: HookState, flat: Tensor) -> torch.futures.Future:
    flat.div_(state.world())  # divide first, as torch's hook does (no fp16 overflow)
    work = dist.all_reduce(flat, group=state.process_group, async_op=True)
    return work.get_future()


def allreduce_hook(state: HookState, bucket: dist.GradBucket) -> torch.futures.Future[Tensor]:
    """Average the bucket over the ranks: torch's default DDP reduction, counted."""
    return _reduce_flat(state, bucket.buffer()).then(lambda fut: fut.value()[0])


def lowrank_allreduce_hook(
    state: HookState, bucket: dist.GradBucket
) -> torch.futures.Future[Tensor]:
    """Average the bucket over the ranks, sending GaLore matrices as their projection between
    refreshes (module docstring)."""
    if state.lookup is None:
        raise RuntimeError("lowrank_allreduce_hook needs HookState.lookup (a ProjectionLookup)")
    buffer = bucket.buffer()
    params = bucket.parameters()
    views = [state.lookup(p) for p in params]
    if all(view is None or view.refresh_due for view in views):
        return allreduce_hook(state, bucket)  # nothing projected here: the buffer as it is
    pieces: list[Tensor] = []
    plan: list[tuple[int, Tensor, ProjectionView | None, torch.Size]] = []
    offset = 0
    for p, view in zip(params, views):
        numel = p.numel()
        grad = buffer[offset : offset + numel].view(p.shape)
        if view is None or view.refresh_due:
            pieces.append(grad.reshape(-1))
            plan.append((offset, grad, None, p.shape))
        else:  # a kernel (more than 2-D) is projected as its out × rest unfolding
            low = project(as_matrix(grad), view.side, view.left, view.right)
            pieces.append(low.reshape(-1))
            plan.append((offset, grad, view, low.shape))
        offset += numel
    if offset != buffer.numel():
        raise RuntimeError(
            f"DDP bucket layout not understood: parameters hold {offset} elements, the bucket "
            f"buffer {buffer.numel()} (low-rank communication needs unpadded dense buckets)"
        )
    # one piece: a projection (a bucket with nothing projected took the branch above), i.e. a
    # new tensor, not a view of the bucket that the reduction could overwrite under us
    flat = torch.cat(pieces) if len(pieces) > 1 else pieces[0]

    def unpack(fut: torch.futures.Future) -> Tensor:
        reduced = fut.value()[0]
        start = 0
        for _, grad, view, shape in plan:
            n = shape.numel()
            chunk = reduced[start : start + n].view(shape)
            if view is None:
                grad.copy_(chunk)
            else:
                # G' = P·R̄ (or R̄·Qᵀ, P·R̄·Qᵀ): the optimizer's projection of it is R̄ again
                full = project_back(chunk, view.side, view.left, view.right)
                grad.copy_(full.view(grad.shape))
            start += n
        return buffer

    return _reduce_flat(state, flat).then(unpack)


def register_comm_hook(
    ddp_model: torch.nn.parallel.DistributedDataParallel,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    lowrank: bool = False,
    process_group: Any = None,
) -> HookState:
    """Register ``allreduce_hook`` (or ``lowrank_allreduce_hook`` with the GaLore ``optimizer``'s
    projectors) on ``ddp_model``; returns the hook's state."""
    if lowrank:
        if optimizer is None:
            raise ValueError("low-rank communication needs the GaLore optimizer")
        lookup = ProjectionLookup(optimizer)
        if not lookup.has_galore:
            raise ValueError(
                "low-rank communication: the optimizer has no GaLore parameter group "
                "(a group with 'rank'); use a galore_* method"
            )
        state = HookState(process_group=process_group, lookup=lookup)
        ddp_model.register_comm_hook(state, lowrank_allreduce_hook)
    else:
        state = HookState(process_group=process_group)
        ddp_model.register_comm_hook(state, allreduce_hook)
    return state
