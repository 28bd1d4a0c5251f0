"""GaLore projection math: choosing the side, projecting a gradient, projecting an update back.

Conventions (m×n weight, rank r):
- ``left``:  P (m×r), R = Pᵀ G (r×n), ΔW = P N.
- ``right``: Qᵀ stored as an r×n matrix (rows of Vᵀ), R = G Q (m×r), ΔW = N Qᵀ.
- ``full``:  both, R = Pᵀ G Q (r×r), ΔW = P N Qᵀ.

The side is decided once from the weight's shape and ``proj_type`` and then *recorded*; the
back-projection never guesses it from the low-rank shape (galore-torch does, which breaks when the
low-rank gradient happens to be square).
"""

from __future__ import annotations

from enum import IntEnum
from typing import NamedTuple

import torch
from torch import Tensor

from galorekit.names import PROJ_TYPES

__all__ = [
    "PROJ_TYPES",
    "Factors",
    "Side",
    "add_projected_",
    "choose_side",
    "effective_rank",
    "low_rank_shape",
    "project",
    "project_back",
]


class Side(IntEnum):
    """Projection side. Stored in optimizer state as a plain int (state dicts hold no strings that
    torch's ``Optimizer.load_state_dict`` would mangle, and no Python objects)."""

    LEFT = 0
    RIGHT = 1
    FULL = 2


class Factors(NamedTuple):
    """A subspace refresh's result: the projector's factors that its side needs (``left`` = P,
    ``right`` = Qᵀ) and, when the refresh computed it on the way, ``projected``: R, the projection
    of the gradient it was computed from (``project``'s result up to rounding; it saves the caller
    that matmul on a refresh step). ``refresh_projector`` returns it in the gradient's dtype."""

    left: Tensor | None
    right: Tensor | None
    projected: Tensor | None = None


def choose_side(proj_type: str, shape: tuple[int, int] | torch.Size) -> Side:
    """The projection side for an m×n matrix.

    ``std`` keeps the moments at r×max(m, n) by projecting the smaller side; ties (m == n) go to the
    right projection exactly as galore-torch does, so its users get the same trajectory.
    ``reverse_std`` is the opposite choice.
    """
    m, n = shape
    if proj_type == "std":
        return Side.RIGHT if m >= n else Side.LEFT
    if proj_type == "reverse_std":
        return Side.LEFT if m >= n else Side.RIGHT
    if proj_type == "left":
        return Side.LEFT
    if proj_type == "right":
        return Side.RIGHT
    if proj_type == "full":
        return Side.FULL
    raise ValueError(f"unknown proj_type {proj_type!r}; valid: {', '.join(PROJ_TYPES)}")


def effective_rank(rank: int, shape: tuple[int, int] | torch.Size) -> int:
    """The rank GaLore actually uses for an m×n matrix: ``rank`` clamped to min(m, n)."""
    return min(rank, min(shape))


def low_rank_shape(shape: tuple[int, int] | torch.Size, rank: int, side: Side) -> tuple[int, int]:
    """Shape of the projected gradient R (and so of the optimizer's moments)."""
    m, n = shape
    if side == Side.LEFT:
        return (rank, n)
    if side == Side.RIGHT:
        return (m, rank)
    return (rank, rank)


def project(grad: Tensor, side: Side, left: Tensor | None, right: Tensor | None) -> Tensor:
    """R = Pᵀ G, G Q or Pᵀ G Q. ``right`` is Qᵀ (r×n)."""
    if side == Side.LEFT:
        return left.t() @ grad
    if side == Side.RIGHT:
        return grad @ right.t()
    return left.t() @ grad @ right.t()


def project_back(
    update: Tensor, side: Side, left: Tensor | None, right: Tensor | None, scale: float = 1.0
) -> Tensor:
    """ΔW = scale · P N, N Qᵀ or P N Qᵀ as a new full-size tensor (see ``add_projected_``)."""
    if side == Side.LEFT:
        full = left @ update
    elif side == Side.RIGHT:
        full = update @ right
    else:
        full = left @ update @ right
    return full.mul_(scale) if scale != 1.0 else full


def add_projected_(
    param: Tensor,
    update: Tensor,
    side: Side,
    left: Tensor | None,
    right: Tensor | None,
    alpha: float,
) -> Tensor:
    """param += alpha · (P N | N Qᵀ | P N Qᵀ), fused into one ``addmm_`` so that no full-size
    temporary for the update is allocated (it would be as large as the weight itself)."""
    if side == Side.LEFT:
        return param.addmm_(left, update, alpha=alpha)
    if side == Side.RIGHT:
        return param.addmm_(update, right, alpha=alpha)
    return param.addmm_(left @ update, right, alpha=alpha)
