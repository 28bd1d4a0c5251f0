"""How much of a gradient a GaLore subspace keeps, and how the subspace moves between refreshes.

All in float64 (a ratio of squared norms loses digits in float32 on large matrices); a zero
matrix gives NaN rather than a division error. Shared by ``galore bench`` (projector quality) and
``galore reproduce``'s theory run (low-rank gradients, overlap at refreshes)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from galorekit.projection import Side, project


def _f64(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.detach().to(torch.float64)


def _squared_singular_values(matrix: Tensor) -> Tensor:
    return torch.linalg.svdvals(matrix.detach().to(torch.float64)) ** 2


def captured_energy(matrix: Tensor, side: Side, left: Tensor | None, right: Tensor | None) -> float:
    """Fraction of ‖G‖_F² the projector keeps: ‖PᵀG‖² (left), ‖G Q‖² (right; ``right`` is Qᵀ,
    r×n, as GaLore stores it) or ‖PᵀG Q‖² (full), over ‖G‖²; NaN for a zero matrix."""
    g = matrix.detach().to(torch.float64)
    total = float(g.square().sum())
    if total <= 0:
        return math.nan
    return float(project(g, side, _f64(left), _f64(right)).square().sum()) / total


def energy_fraction(matrix: Tensor, rank: int) -> float:
    """Σ_{i≤r} σ_i² / Σ σ_i² of ``matrix``: the largest fraction of ‖G‖² any rank-``rank``
    one-sided projection captures (NaN for a zero matrix)."""
    s2 = _squared_singular_values(matrix)
    total = float(s2.sum())
    return float(s2[:rank].sum()) / total if total > 0 else math.nan


#: the exact top-r SVD's captured energy, the ceiling of :func:`captured_energy`
exact_energy = energy_fraction


def stable_rank(matrix: Tensor) -> float:
    """‖A‖_F² / ‖A‖_2² (NaN for a zero matrix)."""
    s2 = _squared_singular_values(matrix)
    return float(s2.sum() / s2[0]) if float(s2[0]) > 0 else math.nan


def spectrum_metrics(matrix: Tensor, rank: int) -> tuple[float, float]:
    """``(energy_fraction, stable_rank)`` from one SVD."""
    s2 = _squared_singular_values(matrix)
    total = float(s2.sum())
    if total <= 0:
        return math.nan, math.nan
    return float(s2[:rank].sum()) / total, total / float(s2[0])


def column_alignment(previous: Tensor, new: Tensor) -> float:
    """Mean cosine between the j-th columns of two orthonormal bases (pass Qᵀ-shaped right
    factors transposed): 1 when every direction kept its place and sign. GaLore keeps Adam's
    moments across a refresh, coordinate by coordinate, so this says how much of them still
    points the way it did; a re-ordered or re-signed basis scores near 0 (or below)."""
    return float((previous * new).sum(dim=0).mean())


def subspace_overlap(a: Tensor, b: Tensor, *, rows: bool = False) -> float:
    """‖AᵀB‖_F² / r for two orthonormal column bases A, B (m×r), or ‖A Bᵀ‖_F² / r for row bases
    (r×n, ``rows=True``, GaLore's right projectors Qᵀ): 1 for the same subspace, 0 for orthogonal
    ones."""
    a64, b64 = a.detach().to(torch.float64), b.detach().to(torch.float64)
    if rows:
        a64, b64 = a64.T, b64.T
    if a64.shape != b64.shape:
        raise ValueError(f"bases of different shapes: {tuple(a.shape)} vs {tuple(b.shape)}")
    r = a64.shape[1]
    return float((a64.T @ b64).pow(2).sum()) / r


def random_overlap(dim: int, rank: int) -> float:
    """Expected overlap of two independent uniformly random r-dimensional subspaces of ℝ^dim."""
    return min(rank, dim) / dim


def projector_overlap(old: dict[str, Any], new: dict[str, Any]) -> float:
    """Overlap of two projectors of one matrix (``side``/``left``/``right`` dicts); for a two-sided
    projector the mean of both sides'."""
    values = []
    if old["left"] is not None and new["left"] is not None:
        values.append(subspace_overlap(old["left"], new["left"]))
    if old["right"] is not None and new["right"] is not None:
        values.append(subspace_overlap(old["right"], new["right"], rows=True))
    if not values:
        raise ValueError("the projectors have no common side")
    return sum(values) / len(values)
