"""Subspace refresh: the top-``rank`` singular vectors of a gradient.

Methods (the optimizer group key ``svd``; all return the same factors, computed in float32 whatever
the gradient's dtype and cast to ``out_dtype``: ``left`` = U[:, :r] (m×r), ``right`` = Vᵀ[:r] (r×n),
only those that ``side`` needs):

- ``"exact"``: ``torch.linalg.svd`` (the paper's method), retried with another driver / float64
  when LAPACK does not converge. O(mn·min(m, n)).
- ``"randomized"``: Halko et al.'s randomized range finder with ``oversample`` (8) extra columns
  and ``power_iters`` (2) subspace iterations, then Rayleigh–Ritz
  (``galorekit.projection.randomized``): 6 matmuls with the gradient; needs no previous projector.
- ``"warm"``: subspace iteration started from the previous projector (gradients' subspaces drift
  slowly), then Rayleigh–Ritz: one iteration, and a second one only when the first still added
  ≥ 0.1% of ‖G‖² to the captured energy (``warm_iters``/``warm_max_iters``/``warm_tol``);
  3 or 5 matmuls. The first refresh of a matrix (no previous projector) is a ``randomized`` one.
- ``"power"``: one block power step from the previous projector, Q ← orth(Gᵀ(G·Q_prev)) — no
  oversampling, no Rayleigh–Ritz: 2 matmuls and one min(m, n)×r QR, whose column signs are kept
  so that the new basis stays column-aligned with the previous one (Adam's moments, kept across
  refreshes, still refer to nearly the same directions; the basis is not ordered by singular
  value, which GaLore does not need). Below rank 32 (``min_rank``) and at a matrix's first refresh
  it is ``warm``/``randomized``: there one step without oversampling can miss a direction that
  turned into the top r (``galorekit.projection.randomized.PowerStepConfig``).

``randomized``, ``warm`` and ``power`` fall back to ``exact`` when rank + oversample exceeds 3/4 of
min(m, n), where they stop being cheaper. Their random blocks come from a private generator seeded
from ``seed`` or, by default, from the matrix's (global) shape and the rank: a refresh is a
deterministic function of its inputs, leaves the global RNG alone and replays bit-identically on
resume. Quality and speed against the exact SVD: benchmarks/README.md.

Each method is a function ``(matrix_f32, rank, side, previous_left, previous_right, *, seed)
-> (left, right)`` or ``-> Factors(left, right, projected)`` registered in ``SVD_METHODS`` (the
built-in ones return a ``Factors``: take ``.left``/``.right`` from them); a ``Factors``' ``projected``
is the projection R of the gradient when it computes that on the way (``randomized`` and ``warm``
do: their Rayleigh–Ritz step gives G·Q from the last iteration's product, which saves the optimizer
one full matmul per refreshed matrix). Other settings of the iteration can be registered
under a name of your own (before building the optimizer, and before loading a checkpoint that
uses it), e.g. one warm iteration always, or two power steps::

    SVD_METHODS["warm1"] = functools.partial(
        warm_svd, config=SubspaceIterationConfig(warm_max_iters=1)
    )
    SVD_METHODS["power2"] = functools.partial(power_svd, config=PowerStepConfig(steps=2))
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from galorekit.projection.alignment import align_factors
from galorekit.projection.projector import Factors, Side
from galorekit.projection.randomized import (
    DEFAULT_CONFIG,
    DEFAULT_POWER_CONFIG,
    PowerStepConfig,
    SubspaceIterationConfig,
    power_factors,
    use_exact,
    warm_factors,
)
from galorekit.projection.sharded import RowShard, global_shape, sum_over


class NonFiniteGradientError(FloatingPointError):
    """A gradient holding NaN or Inf reached a GaLore subspace refresh or update."""


SvdFn = Callable[..., tuple[Tensor | None, Tensor | None] | Factors]


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
    *,
    seed: int | None = None,
    shard: RowShard | None = None,
) -> Factors:
    """Exact truncated SVD (the paper's method); ``previous_*`` and ``seed`` are unused.

    A row shard (``shard``) gets the right factor from the eigenvectors of the Gram GᵀG summed over
    the shards (n×n traffic, never the matrix itself): the same subspace, computed in float64 so
    that squaring the singular values costs no accuracy in the directions kept."""
    if shard is not None:
        if side != Side.RIGHT:
            raise ValueError(
                "a row-sharded matrix (FSDP2) is projected on the right only (proj_type 'std' or "
                f"'right'), got side {side.name}"
            )
        local = matrix.double()
        values, vectors = torch.linalg.eigh(sum_over(shard, local.t() @ local))
        order = torch.argsort(values, descending=True)[:rank]
        return Factors(None, vectors[:, order].t().to(matrix.dtype))
    u, _, vh = _svd_with_fallbacks(matrix)
    left = u[:, :rank] if side in (Side.LEFT, Side.FULL) else None
    right = vh[:rank] if side in (Side.RIGHT, Side.FULL) else None
    return Factors(left, right)


_FALLBACK_WARNED: set[str] = set()


def _fast_or_exact(
    name: str,
    fast: Callable[[], Factors],
    matrix: Tensor,
    rank: int,
    side: Side,
    shard: RowShard | None,
) -> Factors:
    """``fast()``, or the exact SVD (with a warning, once per method) when the iteration fails
    or returns a non-finite basis: a refresh must never end a run that the exact SVD can serve."""
    try:
        factors = fast()
        bases = [f for f in (factors.left, factors.right) if f is not None]
        if all(bool(torch.isfinite(f).all()) for f in bases):
            return factors
        problem = "a non-finite basis"
    except RuntimeError as err:  # torch.linalg.LinAlgError subclasses RuntimeError
        problem = f"{type(err).__name__}: {err}"
    if name not in _FALLBACK_WARNED:
        _FALLBACK_WARNED.add(name)
        warnings.warn(
            f"GaLore {name!r} subspace refresh failed on a {tuple(matrix.shape)} gradient "
            f"({problem}); used the exact SVD instead. This warning is shown once per method.",
            RuntimeWarning,
            stacklevel=5,
        )
    return exact_svd(matrix, rank, side, shard=shard)


def randomized_svd(
    matrix: Tensor,
    rank: int,
    side: Side,
    previous_left: Tensor | None = None,
    previous_right: Tensor | None = None,
    *,
    seed: int | None = None,
    config: SubspaceIterationConfig = DEFAULT_CONFIG,
    shard: RowShard | None = None,
) -> Factors:
    """Randomized range finder + power iterations + Rayleigh–Ritz: ``warm`` with nothing to
    start from; ``previous_*`` are ignored."""
    return warm_svd(matrix, rank, side, None, None, seed=seed, config=config, shard=shard)


def warm_svd(
    matrix: Tensor,
    rank: int,
    side: Side,
    previous_left: Tensor | None = None,
    previous_right: Tensor | None = None,
    *,
    seed: int | None = None,
    config: SubspaceIterationConfig = DEFAULT_CONFIG,
    shard: RowShard | None = None,
) -> Factors:
    """Subspace iteration warm-started from the previous projector (randomized without one)."""
    shape = global_shape(matrix, shard)
    if use_exact(shape, rank, config):
        return exact_svd(matrix, rank, side, shard=shard)
    name = "warm" if previous_left is not None or previous_right is not None else "randomized"
    return _fast_or_exact(
        name,
        lambda: warm_factors(
            matrix, rank, side, previous_left, previous_right, config=config, seed=seed, shard=shard
        ),
        matrix,
        rank,
        side,
        shard,
    )


def power_svd(
    matrix: Tensor,
    rank: int,
    side: Side,
    previous_left: Tensor | None = None,
    previous_right: Tensor | None = None,
    *,
    seed: int | None = None,
    config: PowerStepConfig = DEFAULT_POWER_CONFIG,
    shard: RowShard | None = None,
) -> Factors:
    """One block power step from the previous projector, Q ← orth(Gᵀ(G·Q_prev)) (randomized
    without one); see ``galorekit.projection.randomized.power_factors``."""
    shape = global_shape(matrix, shard)
    if use_exact(shape, rank, config.iteration):
        return exact_svd(matrix, rank, side, shard=shard)
    return _fast_or_exact(
        "power",
        lambda: power_factors(
            matrix, rank, side, previous_left, previous_right, config=config, seed=seed, shard=shard
        ),
        matrix,
        rank,
        side,
        shard,
    )


SVD_METHODS: dict[str, SvdFn] = {
    "exact": exact_svd,
    "randomized": randomized_svd,
    "warm": warm_svd,
    "power": power_svd,
}


def nonfinite_probe(tensor: Tensor) -> Tensor:
    """A 0-d tensor that is NaN or ±Inf whenever ``tensor`` holds a NaN or an Inf: its sum (they
    propagate into it), in float32 for half precision so that it cannot overflow there.

    One reduction pass, no temporaries — ``isfinite(t).all()`` makes three element-wise passes and
    a bool temporary, as much as an AdamW update of ``t``. A finite float32 tensor whose sum
    overflows also gives Inf: confirm with ``check_finite`` before raising."""
    return tensor.sum(dtype=torch.float32) if tensor.element_size() < 4 else tensor.sum()


def nonfinite_error(name: str, count: int) -> NonFiniteGradientError:
    """The error for a gradient of ``name`` holding ``count`` NaN/Inf entries."""
    return NonFiniteGradientError(
        f"GaLore: the gradient of {name} has {count} non-finite (NaN/Inf) entries. "
        "Lower the learning rate, enable gradient clipping, check the loss for overflow "
        "(bf16/fp16), or construct the optimizer with on_nonfinite='skip' to skip such updates."
    )


def check_finite(grad: Tensor, name: str) -> None:
    """Raise a clear error instead of letting NaN/Inf reach the SVD (LAPACK's own message,
    'the algorithm failed to converge', does not say why) or the weights."""
    if bool(torch.isfinite(nonfinite_probe(grad))):  # the cheap test first: every step calls this
        return
    if not bool(torch.isfinite(grad).all()):
        raise nonfinite_error(name, int((~torch.isfinite(grad)).sum()))


def refresh_projector(
    grad: Tensor,
    rank: int,
    side: Side,
    *,
    method: str = "exact",
    previous_left: Tensor | None = None,
    previous_right: Tensor | None = None,
    out_dtype: torch.dtype | None = None,
    seed: int | None = None,
    shard: RowShard | None = None,
    align: bool = False,
) -> Factors:
    """New projector factors for ``grad`` (checked finite by the caller), and the projection R of
    ``grad`` when the method computed it on the way (else ``projected`` is None).

    With ``align``, each new basis is re-ordered and re-signed to match the previous one
    (``galorekit.projection.alignment.align_factors``; R is permuted with it), so that moments
    kept coordinate by coordinate still refer to the same directions; without it the factors are
    the method's own (an SVD's signs are LAPACK's: galore-torch's trajectory).

    ``method`` is a key of ``SVD_METHODS``; ``previous_*`` are the projector being replaced (used
    by ``"warm"``/``"power"``); ``seed`` seeds the random blocks (default: derived from the shape,
    see the module docstring). With ``shard``, ``grad`` is this process's rows of a row-sharded
    gradient (``galorekit.projection.sharded``; ``side`` must be ``RIGHT``): the factor, identical
    on every process, is computed without gathering it, and R is this process's rows. The factors
    are contiguous, in ``out_dtype`` (default ``grad.dtype``); R is contiguous, in ``grad.dtype``."""
    try:
        fn = SVD_METHODS[method]
    except KeyError:
        raise ValueError(
            f"unknown svd method {method!r}; valid: {', '.join(SVD_METHODS)}"
        ) from None
    matrix = grad.float()
    prev_l = previous_left.float() if previous_left is not None else None
    prev_r = previous_right.float() if previous_right is not None else None
    if shard is None:
        result = fn(matrix, rank, side, prev_l, prev_r, seed=seed)
    else:  # only methods that understand shards take the keyword (registered ones may not)
        result = fn(matrix, rank, side, prev_l, prev_r, seed=seed, shard=shard)
    left, right, projected = Factors(*result)
    if align:
        left, right, projected = align_factors(
            Factors(left, right, projected), side, prev_l, prev_r
        )
    dtype = out_dtype or grad.dtype
    # contiguous: the projectors are multiplied every step, and a transposed view would make every
    # matmul (and the checkpoint) pay for it
    return Factors(
        left.to(dtype).contiguous() if left is not None else None,
        right.to(dtype).contiguous() if right is not None else None,
        projected.to(grad.dtype).contiguous() if projected is not None else None,
    )


def compute_projector(
    grad: Tensor, rank: int, side: Side, **kwargs: Any
) -> tuple[Tensor | None, Tensor | None]:
    """``(left, right)``: the factors of ``refresh_projector`` (the same arguments), without R."""
    factors = refresh_projector(grad, rank, side, **kwargs)
    return factors.left, factors.right
