"""Keeping a refreshed projector consistent with the one it replaces, and moving Adam's moments
from the old subspace into the new one.

GaLore keeps the inner optimizer's moments across a subspace refresh, coordinate by coordinate:
the j-th row (left side) or column (right side) of the low-rank moments refers to the j-th column
of the projector. That is only meaningful when the new projector's j-th column points the way the
old one did. An SVD, an ``eigh`` or a QR leaves every column's sign arbitrary (and, between nearly
equal singular values, their order): refreshing an *unchanged* gradient flips about half of them,
which reverses the first moment in those coordinates.

- ``align_factors`` re-orders and re-signs the new basis so that each column is matched one to one
  with the previous column it is closest to (largest |inner product|) and has a non-negative inner
  product with it; the projected gradient R that a refresh hands over is permuted and re-signed
  with it. The subspace is unchanged, so is every projection's span: only the coordinates move.
- ``transition`` is C = B_newᵀ·B_old (r×r) for one side's bases; ``rotate_first`` and
  ``rotate_second`` carry low-rank moments into the new coordinates, as LDAdam does:
  M ← C·M (first moment) and V ← |(C∘C)(V − M²) + (C·M)²| (second moment of a rotated
  coordinate under independent coordinates; ≥ 0, and |M| ≤ √V is kept). On the right side the
  moments' columns rotate.

Every function is deterministic in its inputs: on a row-sharded (FSDP2) matrix the projectors are
replicated, so every process makes the same choice without communicating.
"""

from __future__ import annotations

import torch
from torch import Tensor

from galorekit.projection.projector import Factors, Side

__all__ = [
    "align_factors",
    "match_columns",
    "rank_changed",
    "rotate_first",
    "rotate_second",
    "transition",
    "transitions",
]


def match_columns(previous: Tensor, new: Tensor) -> tuple[Tensor, Tensor]:
    """``(order, signs)`` such that ``new[:, order] * signs`` has, in each column i, the column of
    ``new`` closest to ``previous[:, i]`` (one to one, by largest |inner product|), signed so that
    the inner product is ≥ 0. Both are q×r with orthonormal columns."""
    overlap = previous.t().float() @ new.float()  # (old, new)
    strength = overlap.abs()
    r = strength.shape[0]
    best = strength.argmax(dim=0)  # for each new column, the old column it is closest to
    claimed = torch.bincount(best, minlength=r)
    if bool((claimed == 1).all()):  # the usual case: already a permutation
        order = torch.empty_like(best)
        order[best] = torch.arange(r, device=best.device)
    else:
        order = _greedy_match(strength)
    signs = torch.where(overlap[torch.arange(r, device=order.device), order] < 0, -1.0, 1.0)
    return order, signs


def _greedy_match(strength: Tensor) -> Tensor:
    """``order[i]`` = the new column given to old column i, by greedy matching (the strongest
    remaining pair first), computed in rounds that each take every *mutually* strongest pair at
    once (a pair strongest in both its row and its column is one greedy takes too, whatever it
    takes before): a few vectorised rounds instead of a loop over r² pairs."""
    r = strength.shape[0]
    order = torch.full((r,), -1, dtype=torch.long, device=strength.device)
    free_old = torch.ones(r, dtype=torch.bool, device=strength.device)
    free_new = torch.ones(r, dtype=torch.bool, device=strength.device)
    work = strength.clone()
    rows = torch.arange(r, device=strength.device)
    while bool(free_old.any()):
        work[~free_old] = -1.0
        work[:, ~free_new] = -1.0
        best_new = work.argmax(dim=1)  # per old column
        best_old = work.argmax(dim=0)  # per new column
        mutual = free_old & (best_old[best_new] == rows)
        order[mutual] = best_new[mutual]
        free_old &= ~mutual
        free_new[best_new[mutual]] = False
    return order


def _matches(previous: Tensor | None, new: Tensor | None) -> bool:
    return previous is not None and new is not None and previous.shape == new.shape


def align_factors(
    factors: Factors, side: Side, previous_left: Tensor | None, previous_right: Tensor | None
) -> Factors:
    """``factors`` with each basis re-ordered and re-signed to match the previous one of the same
    shape (a factor without a previous one of its shape is returned as it is), and ``projected``
    (R) permuted and re-signed to match. ``left`` is P (m×r), ``right`` is Qᵀ (r×n)."""
    left, right, projected = factors
    if side in (Side.LEFT, Side.FULL) and _matches(previous_left, left):
        order, signs = match_columns(previous_left, left)
        left = left[:, order] * signs.to(left.dtype)
        if projected is not None:  # R = PᵀG…: its rows follow P's columns
            projected = projected[order] * signs.to(projected.dtype)[:, None]
    if side in (Side.RIGHT, Side.FULL) and _matches(previous_right, right):
        order, signs = match_columns(previous_right.t(), right.t())
        right = right[order] * signs.to(right.dtype)[:, None]
        if projected is not None:  # R = …GQ: its columns follow Q's columns
            projected = projected[:, order] * signs.to(projected.dtype)
    return Factors(left, right, projected)


def transition(previous: Tensor, new: Tensor) -> Tensor:
    """C = B_newᵀ·B_old for two q×r bases (float32): a moment's coordinates in the old basis,
    multiplied by C, are its coordinates in the new one (the part outside the new span is lost)."""
    return new.t().float() @ previous.float()


def transitions(
    side: Side,
    left: Tensor | None,
    right: Tensor | None,
    previous_left: Tensor | None,
    previous_right: Tensor | None,
) -> tuple[Tensor | None, Tensor | None] | None:
    """``(c_left, c_right)`` for the factors ``side`` uses, or None when a previous factor is
    missing or of another shape (then moments cannot be carried over)."""
    c_left = c_right = None
    if side in (Side.LEFT, Side.FULL):
        if not _matches(previous_left, left):
            return None
        c_left = transition(previous_left, left)
    if side in (Side.RIGHT, Side.FULL):
        if not _matches(previous_right, right):
            return None
        c_right = transition(previous_right.t(), right.t())
    return c_left, c_right


def rank_changed(
    left: Tensor | None,
    right: Tensor | None,
    previous_left: Tensor | None,
    previous_right: Tensor | None,
) -> bool:
    """Whether a refresh changed a projector factor's shape (the rank), so that moments of the
    old projected shape no longer fit."""
    return any(
        new is not None and old is not None and new.shape != old.shape
        for new, old in ((left, previous_left), (right, previous_right))
    )


def _rotate(moment: Tensor, c_left: Tensor | None, c_right: Tensor | None) -> Tensor:
    out = moment.float()
    if c_left is not None:
        out = c_left @ out
    if c_right is not None:
        out = out @ c_right.t()
    return out


def rotate_first(moment: Tensor, c_left: Tensor | None, c_right: Tensor | None) -> Tensor:
    """M in the new coordinates: C_L·M (left), M·C_Rᵀ (right), both for ``full``; float32."""
    return _rotate(moment, c_left, c_right)


def rotate_second(
    moment: Tensor,
    c_left: Tensor | None,
    c_right: Tensor | None,
    first: Tensor | None = None,
    mean_weight: float = 1.0,
) -> Tensor:
    """V in the new coordinates, float32. With the first moment ``first`` (M, before rotation),
    LDAdam's transfer: the second moment of a rotated coordinate of a gradient with independent
    coordinates of mean m and second moment v is Σ_j C_ij²(v_j − m_j²) + (Σ_j C_ij m_j)², so
    V ← |(C∘C)(V − w·M²) + w·(C M)²| with w = ``mean_weight`` (w·M² is m̂²'s share of V when the
    moments carry different bias corrections: w = (1−β₂ᵗ)/(1−β₁ᵗ)²). It keeps Adam's
    |m̂| ≤ √v̂ bound through the refresh, where (C∘C)·V alone lets a direction combining
    consistent old momenta get |m̂|/√v̂ up to √r. Without ``first``: (C∘C)·V (zero-mean
    coordinates), which is all a factored or momentum-free statistic allows."""
    squared = (
        c_left.square() if c_left is not None else None,
        c_right.square() if c_right is not None else None,
    )
    if first is None:
        return _rotate(moment, *squared)
    mean_sq = first.float().square().mul_(mean_weight)
    centred = _rotate(moment.float() - mean_sq, *squared)
    return centred.add_(_rotate(first, c_left, c_right).square_().mul_(mean_weight)).abs_()
