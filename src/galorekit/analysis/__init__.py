"""Measurements shared by ``galore bench``, ``galore reproduce``, ``galore memory`` and the training
loops: how much of a gradient a GaLore subspace keeps (``subspace``) and how many bytes an
optimizer's state holds (``state_bytes``, the one counter). torch only."""

from galorekit.analysis.state_bytes import state_bytes
from galorekit.analysis.subspace import (
    captured_energy,
    column_alignment,
    energy_fraction,
    exact_energy,
    projector_overlap,
    random_overlap,
    spectrum_metrics,
    stable_rank,
    subspace_overlap,
)

__all__ = [
    "captured_energy",
    "column_alignment",
    "energy_fraction",
    "exact_energy",
    "projector_overlap",
    "random_overlap",
    "spectrum_metrics",
    "stable_rank",
    "state_bytes",
    "subspace_overlap",
]
