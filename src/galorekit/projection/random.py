"""Random projections, regenerated from a seed: APOLLO's Gaussian projection (never stored: drawn
again at every step from its seed) and GoLore's uniformly random orthonormal basis.

A seed is a deterministic function of the group's ``projection_seed``, the parameter's index in
its optimizer and the step of the refresh (``projection_seed_for``), so that every process of a
data-parallel run draws the same matrix, and a resumed run the same as the run it continues.
Draws use a private ``torch.Generator`` on the gradient's device (the global RNG is left alone).
"""

from __future__ import annotations

import torch
from torch import Tensor

from galorekit.projection.projector import Side

_MASK = (1 << 63) - 1


def projection_seed_for(base: int, index: int, step: int) -> int:
    """The seed of parameter ``index``'s random projection drawn at ``step`` (a SplitMix64-style
    mix: nearby inputs give unrelated seeds)."""
    x = (base * 0x9E3779B97F4A7C15 + index * 0xBF58476D1CE4E5B9 + step * 0x94D049BB133111EB) & _MASK
    x ^= x >> 31
    x = (x * 0xBF58476D1CE4E5B9) & _MASK
    x ^= x >> 27
    return x


def _normal(shape: tuple[int, int], seed: int, device: torch.device) -> Tensor:
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return torch.randn(shape, generator=gen, device=device, dtype=torch.float32)


def gaussian_projector(
    shape: tuple[int, int], rank: int, side: Side, seed: int, *, device: torch.device, dtype
) -> tuple[Tensor | None, Tensor | None]:
    """APOLLO's random projection for an m×n matrix: ``(left, right)`` with entries N(0, 1/r)
    (a Johnson–Lindenstrauss sketch: E[PPᵀ] = I, not orthonormal), P m×r or Qᵀ r×n as ``side``
    needs (``FULL``: both, P's seed ``seed`` and Qᵀ's ``seed + 1``)."""
    m, n = shape
    left = right = None
    if side in (Side.LEFT, Side.FULL):
        left = _normal((m, rank), seed, device).div_(rank**0.5).to(dtype)
    if side in (Side.RIGHT, Side.FULL):
        right = _normal((rank, n), seed + 1 if side == Side.FULL else seed, device)
        right = right.div_(rank**0.5).to(dtype)
    return left, right


def orthonormal_projector(
    shape: tuple[int, int], rank: int, side: Side, seed: int, *, device: torch.device, dtype
) -> tuple[Tensor | None, Tensor | None]:
    """GoLore's projection: a basis drawn uniformly from the Stiefel manifold (the Q of a Gaussian
    matrix's QR with R's diagonal made positive), P m×r or Qᵀ r×n as ``side`` needs."""
    m, n = shape

    def stiefel(rows: int, s: int) -> Tensor:
        q, r = torch.linalg.qr(_normal((rows, rank), s, device))
        return q * torch.sign(torch.diagonal(r)).where(torch.diagonal(r) != 0, 1.0)

    left = right = None
    if side in (Side.LEFT, Side.FULL):
        left = stiefel(m, seed).to(dtype).contiguous()
    if side in (Side.RIGHT, Side.FULL):
        right = stiefel(n, seed + 1 if side == Side.FULL else seed).t().to(dtype).contiguous()
    return left, right
