"""Subspace math: projection sides, projecting and projecting back, and the subspace refresh."""

from galorekit.projection.projector import (
    PROJ_TYPES,
    Factors,
    Side,
    add_projected_,
    choose_side,
    effective_rank,
    low_rank_shape,
    project,
    project_back,
)
from galorekit.projection.sharded import RowShard
from galorekit.projection.svd import (
    SVD_METHODS,
    NonFiniteGradientError,
    check_finite,
    compute_projector,
    refresh_projector,
)

__all__ = [
    "PROJ_TYPES",
    "SVD_METHODS",
    "Factors",
    "NonFiniteGradientError",
    "RowShard",
    "Side",
    "add_projected_",
    "check_finite",
    "choose_side",
    "compute_projector",
    "effective_rank",
    "low_rank_shape",
    "project",
    "project_back",
    "refresh_projector",
]
