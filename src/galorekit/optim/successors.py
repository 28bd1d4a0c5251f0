"""GaLore's successors' update math as pure functions (no state, no loops; the optimizers decide
when to call them and keep what they return).

- Fira (Chen et al. 2024): the update adds back the part of the gradient outside the subspace,
  G − P·R, scaled per channel by how much the low-rank optimizer scaled R: φ = ‖N‖/‖R‖ over the
  rank dimension (``norm_ratio``), so that the residual gets Adam-like magnitudes without
  moments of its own.
- APOLLO (Zhu et al. 2024): the update is the *full* gradient scaled by that ratio, per channel
  or (APOLLO-Mini) per tensor; the projection (random) only serves to estimate it.
- Both pass the full-rank term through the norm-growth limiter (``limit_norm_growth_``): its norm
  may grow by at most γ (1.01) per step, which tames the loss spikes of an unmomentumed term.
- Q-GaLore's lazy refresh compares successive projectors (``basis_similarity``).

Norms over a tensor sharded by rows (FSDP2) are global: ``total`` sums a local sum of squares
over the shards (identity when unsharded).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from galorekit.projection import Side

#: added to ‖R‖ in the ratio (Fira's and APOLLO's code)
RATIO_EPS = 1e-8


def _identity(t: Tensor) -> Tensor:
    return t


def norm_ratio(
    direction: Tensor,
    low_rank: Tensor,
    side: Side,
    mode: str,
    *,
    total: Callable[[Tensor], Tensor] = _identity,
) -> Tensor:
    """‖N‖/(‖R‖ + 1e-8) in float32, shaped to broadcast over the m×n matrix: per channel
    (``mode="channel"``: for a left projection R is r×n and each of the n columns gets its
    ratio, 1×n; for a right one R is m×r and each row, m×1) or one for the whole tensor
    (``"tensor"``, and always for a two-sided projection, which has no whole channel)."""
    d, r = direction.float(), low_rank.float()
    if mode == "tensor" or side == Side.FULL:
        num = total(d.square().sum()).sqrt()
        den = total(r.square().sum()).sqrt()
        return num / (den + RATIO_EPS)
    if mode != "channel":
        raise ValueError(f"unknown scaling mode {mode!r}; valid: channel, tensor")
    dim = 0 if side == Side.LEFT else 1  # a row of a right projection is local to its shard
    return d.norm(dim=dim, keepdim=True) / (r.norm(dim=dim, keepdim=True) + RATIO_EPS)


def limit_norm_growth_(
    term: Tensor,
    previous: Tensor | None,
    gamma: float,
    *,
    total: Callable[[Tensor], Tensor] = _identity,
) -> Tensor:
    """Divide ``term`` in place by max(‖term‖/previous, γ)/γ, so that its norm grows by at most γ
    over the previous step's; returns the norm to compare the next step with (``term``'s after
    the division). Without ``previous`` (the first step) nothing is divided."""
    norm = total(term.float().square().sum()).sqrt()
    if previous is None:
        return norm
    limiter = torch.clamp(norm / (previous.to(norm.device) + RATIO_EPS), min=gamma) / gamma
    term.div_(limiter.to(term.dtype))
    return norm / limiter


def outside_subspace(
    grad: Tensor, low_rank: Tensor, side: Side, left: Tensor | None, right: Tensor | None
) -> Tensor:
    """G − P·R (or G − R·Qᵀ, G − P·R·Qᵀ): the part of the gradient the projection discards, as a
    new tensor (one fused ``addmm``)."""
    r = low_rank.to(grad.dtype)
    if side == Side.LEFT:
        return torch.addmm(grad, left.to(grad.dtype), r, alpha=-1.0)
    if side == Side.RIGHT:
        return torch.addmm(grad, r, right.to(grad.dtype), alpha=-1.0)
    return torch.addmm(grad, left.to(grad.dtype) @ r, right.to(grad.dtype), alpha=-1.0)


def fira_residual(
    grad: Tensor,
    low_rank: Tensor,
    direction: Tensor,
    side: Side,
    left: Tensor | None,
    right: Tensor | None,
    *,
    total: Callable[[Tensor], Tensor] = _identity,
) -> Tensor:
    """Fira's compensation term φ ⊙ (G − P·R) with φ the channel-wise ``norm_ratio`` of the
    low-rank update ``direction`` (N) to R (before the limiter)."""
    residual = outside_subspace(grad, low_rank, side, left, right)
    ratio = norm_ratio(direction, low_rank, side, "channel", total=total)
    return residual.mul_(ratio.to(residual.dtype))


def apollo_update(
    grad: Tensor,
    low_rank: Tensor,
    direction: Tensor,
    side: Side,
    mode: str,
    *,
    total: Callable[[Tensor], Tensor] = _identity,
) -> Tensor:
    """APOLLO's update before the limiter: the full gradient G scaled by ``norm_ratio`` (per
    channel, or per tensor for APOLLO-Mini), as a new tensor."""
    ratio = norm_ratio(direction, low_rank, side, mode, total=total)
    return grad * ratio.to(grad.dtype)


def basis_similarity(
    old_left: Tensor | None,
    old_right: Tensor | None,
    new_left: Tensor | None,
    new_right: Tensor | None,
) -> float:
    """|cos| between the first basis vectors of two projectors (P's first column, or Qᵀ's first
    row; P's for a two-sided one): Q-GaLore's measure of how far a refresh moved the subspace.
    Absolute, because a singular vector's sign is arbitrary."""
    if old_left is not None and new_left is not None:
        a, b = old_left[:, 0], new_left[:, 0]
    else:
        a, b = old_right[0], new_right[0]
    a, b = a.float(), b.float()
    return float((a @ b).abs() / (a.norm() * b.norm()).clamp_min(1e-12))
