"""Subspace refresh: the top-``rank`` singular vectors of a gradient.

Always computed in float32 whatever the gradient's dtype (bf16 SVDs are not supported by torch and
would be too inaccurate anyway); the projector is returned in ``out_dtype``.

Each method is a function ``(matrix_f32, rank, side, previous_left, previous_right) -> (left, right)``
registered in ``SVD_METHODS``; ``left`` is U[:, :r] (m×r), ``right`` is Vᵀ[:r] (r×n), and only the
factors that ``side`` needs are returned (the other is None).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import Tensor

from galorekit.projection.projector import Side


class NonFiniteGradientError(FloatingPointError):
    """A gradient holding NaN or Inf reached a GaLore subspace refresh or update."""


SvdFn = Callable[
    [Tensor, int, Side, Tensor | None, Tensor | None], tuple[Tensor | None, Tensor | None]
]


def _svd_with_fallbacks(matrix: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """torch.linalg.svd, retried with another driver / precision when it does not converge.

    Ill-conditioned gradients occasionally make LAPACK/cuSOLVER fail to converge; a second driver
    (CUDA) or float64 (CPU) nearly always succeeds, and a refresh is rare enough to afford it.
    """
    attempts: list[tuple[str, Callable[[], tuple[Tensor, Tensor, Tensor]]]] = [
        ("float32", lambda: torch.linalg.svd(matrix, full_matrices=False))
    ]
    if matrix.is_cuda:
        attempts.append(
            ("gesvd", lambda: torch.linalg.svd(matrix, full_matrices=False, driver="gesvd"))
        )
    attempts.append(("float64", lambda: torch.linalg.svd(matrix.double(), full_matrices=False)))
    errors = []
    for name, attempt in attempts:
        try:
            u, s, vh = attempt()
            if errors:
                warnings.warn(
                    f"GaLore SVD did not converge ({errors[0]}); succeeded with the {name} retry",
                    RuntimeWarning,
                    stacklevel=4,
                )
            return u.float(), s.float(), vh.float()
        except RuntimeError as err:  # torch.linalg.LinAlgError subclasses RuntimeError
            errors.append(f"{name}: {err}")
    raise torch.linalg.LinAlgError(
        "GaLore subspace refresh failed: the SVD did not converge with any driver ("
        + "; ".join(errors)
        + ")"
    )


def exact_svd(
    matrix: Tensor,
    rank: int,
    side: Side,
    previous_left: Tensor | None = None,
    previous_right: Tensor | None = None,
) -> tuple[Tensor | None, Tensor | None]:
    """Exact truncated SVD (the paper's method)."""
    u, _, vh = _svd_with_fallbacks(matrix)
    left = u[:, :rank] if side in (Side.LEFT, Side.FULL) else None
    right = vh[:rank] if side in (Side.RIGHT, Side.FULL) else None
    return left, right


SVD_METHODS: dict[str, SvdFn] = {"exact": exact_svd}


def check_finite(grad: Tensor, name: str) -> None:
    """Raise a clear error instead of letting NaN/Inf reach the SVD (LAPACK's own message,
    'the algorithm failed to converge', does not say why) or the weights."""
    if not bool(torch.isfinite(grad).all()):
        bad = int((~torch.isfinite(grad)).sum())
        raise NonFiniteGradientError(
            f"GaLore: the gradient of {name} has {bad} non-finite (NaN/Inf) entries. "
            "Lower the learning rate, enable gradient clipping, check the loss for overflow "
            "(bf16/fp16), or construct the optimizer with on_nonfinite='skip' to skip such updates."
        )


def compute_projector(
    grad: Tensor,
    rank: int,
    side: Side,
    *,
    method: str = "exact",
    previous_left: Tensor | None = None,
    previous_right: Tensor | None = None,
    out_dtype: torch.dtype | None = None,
) -> tuple[Tensor | None, Tensor | None]:
    """New projector factors for ``grad`` (checked finite by the caller)."""
    try:
        fn = SVD_METHODS[method]
    except KeyError:
        raise ValueError(
            f"unknown svd method {method!r}; valid: {', '.join(SVD_METHODS)}"
        ) from None
    matrix = grad.float()
    prev_l = previous_left.float() if previous_left is not None else None
    prev_r = previous_right.float() if previous_right is not None else None
    left, right = fn(matrix, rank, side, prev_l, prev_r)
    dtype = out_dtype or grad.dtype
    # contiguous: the projectors are multiplied every step, and a transposed view would make every
    # matmul (and the checkpoint) pay for it
    left = left.to(dtype).contiguous() if left is not None else None
    right = right.to(dtype).contiguous() if right is not None else None
    return left, right
