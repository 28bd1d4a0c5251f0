"""Validating an optimizer's param groups and hyper-parameters, and the matrix a GaLore parameter
is projected as (shared by every galorekit optimizer; torch only)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from galorekit.names import (
    GALORE_DEFAULTS,
    MOMENT_POLICIES,
    PROJECTIONS,
    PROJECTOR_BITS,
    RESIDUALS,
    SCALINGS,
    STATE_DTYPES,
    SUCCESSOR_DEFAULTS,
)
from galorekit.projection import PROJ_TYPES, SVD_METHODS


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def validate_galore_group(group: dict[str, Any]) -> None:
    """Fill GaLore defaults into a group that has ``rank`` and check every hyper-parameter."""
    for key, value in SUCCESSOR_DEFAULTS.items():
        group.setdefault(key, value)
    # a random projection is no rotation of the previous one: its moments are kept (APOLLO)
    group.setdefault("moments", "keep" if group["projection"] == "random" else "project")
    for key, value in GALORE_DEFAULTS.items():
        group.setdefault(key, value)
    rank, gap, scale = group["rank"], group["update_proj_gap"], group["scale"]
    if not isinstance(rank, int) or isinstance(rank, bool) or rank <= 0:
        raise ValueError(f"GaLore rank must be a positive integer, got {rank!r}")
    if not isinstance(gap, int) or isinstance(gap, bool) or gap <= 0:
        raise ValueError(f"GaLore update_proj_gap must be a positive integer, got {gap!r}")
    if not _is_number(scale) or scale <= 0:
        raise ValueError(f"GaLore scale must be a positive finite number, got {scale!r}")
    if group["proj_type"] not in PROJ_TYPES:
        raise ValueError(
            f"unknown proj_type {group['proj_type']!r}; valid: {', '.join(PROJ_TYPES)}"
        )
    if group["svd"] not in SVD_METHODS:
        raise ValueError(f"unknown svd method {group['svd']!r}; valid: {', '.join(SVD_METHODS)}")
    if not isinstance(group["stagger"], bool):
        raise ValueError(f"GaLore stagger must be True or False, got {group['stagger']!r}")
    if group["moments"] not in MOMENT_POLICIES:
        raise ValueError(
            f"unknown GaLore moments policy {group['moments']!r}; valid: "
            f"{', '.join(MOMENT_POLICIES)}"
        )
    validate_successor_keys(group)
    names = group.get("param_names")
    for i, p in enumerate(group["params"]):
        if p.dim() < 2:
            name = names[i] if names else f"parameter {i} of the group"
            raise ValueError(
                f"GaLore projects weight matrices (and tensors of more dimensions, as their "
                f"out × rest unfolding), but the group with rank={rank} holds {name} of shape "
                f"{tuple(p.shape)}. Put biases, norms and scalars in a group without 'rank' "
                "(galorekit.param_groups(model) does this)."
            )


def _choice(group: dict[str, Any], key: str, valid: tuple, *, none: bool) -> None:
    value = group[key]
    if (value is None and none) or (value in valid and not isinstance(value, bool)):
        return
    allowed = ", ".join(repr(v) for v in ((None, *valid) if none else valid))
    raise ValueError(f"GaLore {key} must be one of {allowed}, got {value!r}")


def validate_successor_keys(group: dict[str, Any]) -> None:
    """Check the successors' group keys (``galorekit.names.SUCCESSOR_DEFAULTS``) and that they
    combine: Fira's residual and APOLLO's scaling both make the update full-rank (one or the
    other); a random projection stores no projector to quantize, has no singular vectors to
    compare lazily and no basis the moments could be carried into."""
    _choice(group, "residual", RESIDUALS, none=True)
    _choice(group, "projection", PROJECTIONS, none=False)
    _choice(group, "scaling", SCALINGS, none=True)
    _choice(group, "projector_bits", PROJECTOR_BITS, none=True)
    if not isinstance(group["lazy_refresh"], bool):
        raise ValueError(
            f"GaLore lazy_refresh must be True or False, got {group['lazy_refresh']!r}"
        )
    limit = group["norm_growth_limit"]
    if limit is not None and (not _is_number(limit) or limit < 1.0):
        raise ValueError(
            f"GaLore norm_growth_limit must be None (no limiter) or a number ≥ 1 (Fira's and "
            f"APOLLO's 1.01), got {limit!r}"
        )
    after = group["random_after"]
    if after is not None and (not isinstance(after, int) or isinstance(after, bool) or after < 0):
        raise ValueError(
            f"GaLore random_after must be None or a step count ≥ 0 (refreshes from that step "
            f"on draw random orthonormal projections, GoLore), got {after!r}"
        )
    seed = group["projection_seed"]
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"GaLore projection_seed must be an integer ≥ 0, got {seed!r}")
    if group["residual"] is not None and group["scaling"] is not None:
        raise ValueError(
            "GaLore residual='fira' and scaling=... both make the update full-rank (Fira adds "
            "the scaled residual to the projected update, APOLLO scales the whole gradient): "
            "set one of them"
        )
    if group["projection"] == "random":
        for key, off in (("projector_bits", None), ("lazy_refresh", False), ("random_after", None)):
            if group[key] != off:
                raise ValueError(
                    f"GaLore {key}={group[key]!r} needs projection='svd': a random projection "
                    "is regenerated from its seed (nothing stored to quantize, no singular "
                    "vectors to compare, and it is random from the start)"
                )
        if group["moments"] not in ("keep", "reset"):
            raise ValueError(
                f"GaLore moments={group['moments']!r} needs an orthonormal basis to carry the "
                "moments into; a random projection (projection='random') keeps them ('keep', "
                "APOLLO's choice) or zeroes them ('reset')"
            )


def matrix_shape(shape: tuple[int, ...] | torch.Size) -> tuple[int, int]:
    """The matrix GaLore projects for a parameter of ``shape``: itself for a matrix, the mode-0
    unfolding (first dimension × the product of the rest) for more dimensions — a convolution
    kernel out×in×kh×kw becomes out × in·kh·kw, the matrix it applies to im2col patches, so its
    gradient is a sum of outer products there exactly as a linear layer's is."""
    return (shape[0], math.prod(shape[1:]))


def as_matrix(t: Tensor) -> Tensor:
    """``t`` as ``matrix_shape`` (a view when ``t`` is contiguous)."""
    return t if t.dim() == 2 else t.reshape(matrix_shape(t.shape))


def normalize_state_dtype(value: Any) -> str | None:
    """``state_dtype`` as stored in a group: None (the parameter's dtype) or a name of
    ``STATE_DTYPES`` (a string: it survives ``torch.load(weights_only=True)`` and HF's
    ``optim_args``); a ``torch.dtype`` is accepted and named."""
    if value is None:
        return None
    if isinstance(value, torch.dtype):
        value = str(value).removeprefix("torch.")
    if value not in STATE_DTYPES:
        raise ValueError(
            f"state_dtype must be None (the parameter's dtype) or one of "
            f"{', '.join(STATE_DTYPES)}, got {value!r}"
        )
    return value


def state_dtype(group: dict[str, Any], p: Tensor) -> torch.dtype:
    """The dtype of ``p``'s moments in ``group``: its ``state_dtype``, else ``p``'s dtype."""
    name = group.get("state_dtype")
    return p.dtype if name is None else getattr(torch, name)


def validate_lr(lr: Any, *, allow_none: bool = False) -> None:
    if lr is None and allow_none:
        return
    if isinstance(lr, Tensor):
        lr = float(lr)
    if not _is_number(lr) or lr < 0:
        raise ValueError(f"learning rate must be a finite number ≥ 0, got {lr!r}")


def validate_betas(betas: Any) -> None:
    if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
        raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    for b in betas:
        if not _is_number(b) or not 0.0 <= b < 1.0:
            raise ValueError(f"each beta must be in [0, 1), got {betas!r}")


def param_name(p: Tensor, group: dict[str, Any], fallback: str) -> str:
    """``p``'s name in ``group["param_names"]`` (where the group has them), else ``fallback``."""
    for name, q in zip(group.get("param_names") or (), group["params"]):
        if q is p:
            return name
    return fallback
