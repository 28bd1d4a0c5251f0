"""Fast subspace refreshes: a randomized range finder, a warm-started subspace iteration and a
single block power step.

``randomized`` and ``warm`` find the top-``rank`` singular subspace of one side of a gradient G
without a full SVD, by block power (subspace) iteration on GᵀG followed by a Rayleigh–Ritz step:

1. start from a block Y (q×l, l = rank + oversample) in the space wanted (the row space of G for
   the right factor, the column space for the left one): the randomized range finder's sketch
   orth(GᵀΩ) for ``randomized`` (Halko, Martinsson & Tropp 2011, Alg. 4.4), the previous projector
   padded with random columns for ``warm``;
2. iterate Y ← orth(Gᵀ(G Y)) (Householder QR keeps Y orthonormal however fast the spectrum
   decays): ``power_iters`` times for ``randomized``; for ``warm`` at least ``warm_iters`` times and
   then until an iteration adds less than ``warm_tol``·‖G‖² to the energy captured by the block's
   first ``rank`` columns (the previous projector's span at the start), at most
   ``warm_max_iters`` times. Gradients' subspaces drift slowly, so one iteration usually suffices;
   a gradient that turned (or a flat spectrum) gets more. The energies come from the products the
   iteration computes anyway, so the test costs nothing;
3. Rayleigh–Ritz: with W = G Y (already computed), the eigendecomposition of the small Gram
   WᵀW = E Λ Eᵀ orders the basis Y E by Ritz value (squared singular-value estimate), as the exact
   SVD orders its vectors; the first ``rank`` columns are kept.

Cost per matrix (m×n, l columns, k iterations): 2k + 1 (warm) or 2k + 2 (randomized) matmuls of
2mnl flops, k + 1 QRs of a max(m, n)×l block and an l×l eigendecomposition, against
O(mn·min(m, n)) for the SVD. The error shrinks like (σ_{l+1}/σ_rank)^{2k}; captured energy converges
much faster than the vectors themselves.

The ``power`` refresh (``power_factors``) keeps one iteration of step 2 and drops the rest: no
oversampled columns and no Rayleigh–Ritz, only Q ← orth(Gᵀ(G·Q_prev)) — two matmuls and one QR whose column
signs are kept (``orthonormalize_aligned``), so that each column of the new basis stays close to
the same column of the previous one. Adam's moments, which GaLore keeps across a refresh, then still
refer to nearly the same directions, where a Rayleigh–Ritz or SVD basis re-orders and re-signs its
columns. Small ranks keep the oversampled iteration (``PowerStepConfig.min_rank``).

The random blocks come from a private ``torch.Generator`` seeded from ``seed`` (the caller's, or one
derived from the matrix's shape and the rank), so a refresh is a pure function of its inputs:
deterministic, continuous in the gradient, independent of and invisible to the global RNG
(switching ``svd`` modes does not change dropout or data order), and bit-identical after a
checkpoint resume.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from galorekit.projection.projector import Factors, Side
from galorekit.projection.sharded import RowShard, global_shape, sum_over


@dataclass(frozen=True)
class SubspaceIterationConfig:
    """Knobs of the ``randomized`` and ``warm`` refreshes (defaults: benchmarks/README.md).

    Attributes:
        oversample: extra columns beyond ``rank`` carried through the iteration and dropped by
            Rayleigh–Ritz; they make the top ``rank`` directions converge faster.
        power_iters: subspace iterations after a cold (random) start.
        warm_iters: least subspace iterations from the previous projector.
        warm_max_iters: most subspace iterations from the previous projector.
        warm_tol: after ``warm_iters``, stop once an iteration adds less than this fraction of ‖G‖²
            to the captured energy.
        exact_above: use the exact SVD when ``rank + oversample`` exceeds this fraction of
            min(m, n): there the iteration is no cheaper.
    """

    oversample: int = 8
    power_iters: int = 2
    warm_iters: int = 1
    warm_max_iters: int = 2
    warm_tol: float = 1e-3
    exact_above: float = 0.75

    def __post_init__(self) -> None:
        for name in ("oversample", "power_iters", "warm_iters", "warm_max_iters"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be an integer ≥ 0, got {value!r}")
        if self.warm_iters == 0:
            raise ValueError("warm_iters must be ≥ 1: zero iterations would never update the basis")
        if self.warm_max_iters < self.warm_iters:
            raise ValueError(
                f"warm_max_iters ({self.warm_max_iters}) must be ≥ warm_iters ({self.warm_iters})"
            )
        if not self.warm_tol >= 0.0:
            raise ValueError(f"warm_tol must be ≥ 0, got {self.warm_tol!r}")
        if not 0.0 < self.exact_above <= 1.0:
            raise ValueError(f"exact_above must be in (0, 1], got {self.exact_above!r}")


DEFAULT_CONFIG = SubspaceIterationConfig()


@dataclass(frozen=True)
class PowerStepConfig:
    """Knobs of the ``power`` refresh (measurements: benchmarks/README.md).

    Attributes:
        steps: block power steps from the previous projector, each two matmuls with G and one QR
            of a min(m, n)×rank block.
        min_rank: below this rank the refresh is ``warm``'s oversampled subspace iteration with
            Rayleigh–Ritz (``iteration``) instead: there ``oversample`` extra columns are a large
            part of the block and cost little, and without them a step from a stale projector
            can miss a direction that has turned into the top ``rank`` (real gradients at rank
            2–8: 69–95% of the exact energy after one step, ≥ 99.9% with them).
        iteration: the settings of that subspace iteration, also used for a matrix's first
            refresh (no previous projector: a ``randomized`` start); its ``oversample`` and
            ``exact_above`` decide, as for the other modes, when the exact SVD is used instead.
    """

    steps: int = 1
    min_rank: int = 32
    iteration: SubspaceIterationConfig = DEFAULT_CONFIG

    def __post_init__(self) -> None:
        for name, least in (("steps", 1), ("min_rank", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ValueError(f"{name} must be an integer ≥ {least}, got {value!r}")
        if not isinstance(self.iteration, SubspaceIterationConfig):
            raise ValueError(f"iteration must be a SubspaceIterationConfig, got {self.iteration!r}")


DEFAULT_POWER_CONFIG = PowerStepConfig()


@dataclass(frozen=True)
class RitzResult:
    """The top-``rank`` Ritz pairs of one side: ``basis`` (q×rank, orthonormal columns, ordered by
    decreasing ``values``), ``values`` (squared singular-value estimates, float64: they square
    the gradient's scale), the number of
    subspace ``iterations`` run and ``image`` = a·basis (p×rank; this process's rows for a shard),
    which the Rayleigh–Ritz step gets from the last iteration's product at r×l cost."""

    basis: Tensor
    values: Tensor
    iterations: int
    image: Tensor


def default_seed(shape: tuple[int, int] | torch.Size, rank: int) -> int:
    """The random blocks' seed when the caller gives none: a function of the shape and the rank
    only, so that the projector depends continuously on the gradient (a seed drawn from its
    entries would turn rounding-level differences, e.g. another reduction order, into a different
    random block and a visibly different projector) and a resumed run replays it."""
    m, n = shape
    # tuples of ints hash identically in every process (str hashing is randomised: no str here)
    return hash((0x6A10E, m, n, rank)) & 0x7FFF_FFFF_FFFF_FFFF


def _orthonormalize(block: Tensor) -> Tensor:
    return torch.linalg.qr(block, mode="reduced").Q


def _random_block(rows: int, cols: int, like: Tensor, gen: torch.Generator) -> Tensor:
    return torch.randn(rows, cols, generator=gen, device=like.device, dtype=like.dtype)


def _start_block(
    a: Tensor, width: int, start: Tensor | None, gen: torch.Generator, shard: RowShard | None
) -> Tensor:
    """A q×width starting block: ``start``'s columns (up to ``width``) padded with Gaussian ones.

    Without a start it is the range finder's sketch orth(aᵀΩ) for a Gaussian p×width Ω (one
    multiplication already points it at the dominant row space; a row shard draws the whole Ω and
    multiplies its own rows). A warm start is not orthonormalised here: the iteration's QR does
    that, and the previous projector plus independent random columns has full column rank."""
    p, q = a.shape
    if start is None:
        rows = p if shard is None else shard.total_rows
        omega = _random_block(rows, width, a, gen)
        if shard is not None:
            omega = omega[shard.row_offset : shard.row_offset + p]
        return _orthonormalize(sum_over(shard, a.t() @ omega))
    start = start[:, :width].to(a.dtype)
    if start.shape[1] < width:
        # unit-norm columns like the projector's, so that no column dominates the first QR
        extra = _random_block(q, width - start.shape[1], a, gen).mul_(q**-0.5)
        start = torch.cat([start, extra], dim=1)
    return start


def orthonormalize_aligned(block: Tensor) -> Tensor:
    """An orthonormal basis of span(``block``) (Householder QR: orthonormal however ill-conditioned
    or rank-deficient the block) whose j-th column has a positive inner product with the block's
    j-th column: the signs of R's diagonal are moved into Q, where LAPACK leaves them arbitrary.
    A column whose direction persists therefore keeps its sign, and with it the sign of its
    coordinate in the low-rank moments."""
    q, r = torch.linalg.qr(block, mode="reduced")
    diagonal = torch.diagonal(r)
    # a zero diagonal (a rank-deficient block) keeps its sign: any sign is right there
    return q.mul_(torch.where(diagonal < 0, -1.0, 1.0).to(q.dtype))


def magnitude(a: Tensor, shard: RowShard | None = None) -> float:
    """A normaliser for ``a``'s scale: its largest |entry| (for a row shard, the shards' largest
    entries summed: within a factor of the world size of the true one, and the same number on
    every process); 1 for a zero or non-finite matrix.

    The iterations divide their small blocks (a·Y, never ``a`` itself: no full-size temporary) by
    it, so that no product squares G's scale: unscaled, aᵀ(a·Y) and the Gram overflow float32 from
    entries of ~1e19 and underflow below ~1e-19 (83% of the exact energy captured at 1e-22)."""
    # an empty row shard (more processes than rows) still takes part in the sum
    largest = torch.linalg.vector_norm(a, ord=float("inf")) if a.numel() else a.new_zeros(())
    largest = largest.reshape(1)
    value = float(sum_over(shard, largest.float()))
    return value if 0.0 < value < float("inf") else 1.0


def _squared_norm(a: Tensor, scale: float, shard: RowShard | None) -> float:
    """‖a / scale‖²_F, summed over the shards, computed in row blocks."""
    # blocks of at most an eighth of the matrix (and 4M elements): a scaled copy, but never a
    # full-size one
    rows = max(1, min((1 << 22) // max(1, a.shape[1]), -(-a.shape[0] // 8)))
    local = (
        sum(torch.linalg.vector_norm(block.div(scale)).square() for block in a.split(rows))
        if a.numel()
        else a.new_zeros(())
    )
    return float(sum_over(shard, torch.as_tensor(local, dtype=a.dtype).reshape(1)))


def power_step(
    a: Tensor,
    start: Tensor,
    *,
    steps: int = 1,
    shard: RowShard | None = None,
    scale: float | None = None,
) -> Tensor:
    """``steps`` block power steps on aᵀa from the q×k ``start``: Y ← orth(aᵀ(a·Y)), each two
    matmuls with ``a`` and one q×k QR (``orthonormalize_aligned``), no oversampling and no
    Rayleigh–Ritz: the result is orthonormal and column-aligned with ``start``, not ordered by
    singular value. With ``shard``, ``a`` is this process's rows and aᵀ(a·Y) is summed over the
    processes (``galorekit.projection.sharded``): every process gets the same basis. The product
    is formed as aᵀ((a·Y)/s)/s with s = ``scale`` (default ``magnitude(a)``), which QR does not
    see, so that it stays in float32's range whatever the gradient's scale."""
    if steps < 1:
        raise ValueError(f"power_step needs steps ≥ 1 to orthonormalise its start, got {steps}")
    inv = 1.0 / (magnitude(a, shard) if scale is None else scale)
    y = start
    for _ in range(steps):
        y = orthonormalize_aligned(sum_over(shard, (a.t() @ (a @ y).mul_(inv)).mul_(inv)))
    return y


def _check_rank(shape: tuple[int, int], rank: int) -> None:
    if not 1 <= rank <= min(shape):
        raise ValueError(f"rank must be in [1, min(m, n) = {min(shape)}], got {rank}")


def top_right_subspace(
    a: Tensor,
    rank: int,
    *,
    iters: int,
    oversample: int,
    start: Tensor | None = None,
    seed: int = 0,
    max_iters: int | None = None,
    tol: float = 0.0,
    shard: RowShard | None = None,
) -> RitzResult:
    """Top-``rank`` right singular subspace of the float32 p×q matrix ``a`` by subspace iteration
    on aᵀa with a Rayleigh–Ritz finish (see the module docstring).

    ``start`` (q×k) warm-starts it; without one the start is the randomized range finder's sketch.
    ``iters`` iterations are always run; up to ``max_iters`` (default ``iters``) while one adds at
    least ``tol``·‖a‖² to the energy of the block's first ``rank`` columns. With ``shard``, ``a``
    is this process's rows of the matrix and every product with aᵀ is summed over the processes
    (``galorekit.projection.sharded``); the result is the same on every process."""
    p, q = global_shape(a, shard)
    _check_rank((p, q), rank)
    max_iters = iters if max_iters is None else max_iters
    if start is not None and max_iters == 0:
        raise ValueError("a warm start needs at least one iteration to orthonormalise it")
    width = min(rank + oversample, p, q)
    gen = torch.Generator(device=a.device).manual_seed(seed)
    # every product with aᵀ and every Gram is formed from w/s (``magnitude``): the iteration is
    # then the same at any scale of the gradient (QR and eigh's vectors do not see s)
    scale = magnitude(a, shard)
    inv = 1.0 / scale
    y = _start_block(a, width, start, gen, shard)
    w = a @ y
    adaptive = max_iters > iters
    if adaptive:
        # energies in units of s²: the norm in row blocks, without a squared (or scaled) copy
        # of the whole matrix (that would be a full-size float32 temporary per refresh)
        threshold = tol * _squared_norm(a, scale, shard)
        energy = float(sum_over(shard, (w[:, :rank] * inv).square().sum()))
    done = 0
    while done < max_iters:
        y = _orthonormalize(sum_over(shard, (a.t() @ (w * inv)).mul_(inv)))
        w = a @ y
        done += 1
        if adaptive and done >= iters:
            # span(y[:, :rank]) is the first rank columns' own subspace iteration (QR keeps
            # leading spans), so its energy gain measures how far the iteration still moves
            new_energy = float(sum_over(shard, (w[:, :rank] * inv).square().sum()))
            if new_energy - energy < threshold:
                break
            energy = new_energy
    # Rayleigh–Ritz on span(y), reusing w = a·y: eigh of the small Gram instead of an SVD of w is
    # several times cheaper, and y·E stays orthonormal whatever eigh's accuracy on the tiny
    # eigenvalues (they only decide which oversampled directions are dropped)
    u = w * inv
    values, vectors = torch.linalg.eigh(sum_over(shard, u.t() @ u))
    order = torch.argsort(values, descending=True)[:rank]
    kept = vectors[:, order]
    return RitzResult(
        basis=y @ kept,
        values=values[order].clamp_(min=0.0).double().mul_(scale**2),
        iterations=done,
        image=w @ kept,
    )


def _factors(
    matrix: Tensor,
    rank: int,
    side: Side,
    start: Tensor | None,
    seed: int,
    shard: RowShard | None = None,
    **iteration: int | float,
) -> Factors:
    # R comes with the factors (the Ritz image): R = G·Q = image, Pᵀ·G = (Gᵀ·P)ᵀ = imageᵀ
    if shard is not None:
        if side != Side.RIGHT:
            raise ValueError(_SHARD_SIDE_ERROR)
        ritz = top_right_subspace(matrix, rank, start=start, seed=seed, shard=shard, **iteration)
        return Factors(None, ritz.basis.t(), ritz.image)
    if side == Side.LEFT:
        # the left singular vectors of G are the right ones of Gᵀ (a transposed view: no copy)
        ritz = top_right_subspace(matrix.t(), rank, start=start, seed=seed, **iteration)
        return Factors(ritz.basis, None, ritz.image.t())
    ritz = top_right_subspace(matrix, rank, start=start, seed=seed, **iteration)
    right = ritz.basis.t()
    if side == Side.RIGHT:
        return Factors(None, right, ritz.image)
    # FULL: the left factor is G V Σ⁻¹ orthonormalised; a thin SVD of the m×rank block G V gives it
    # without dividing by small singular values, paired with a rotation of the right factor
    u, _, vh = torch.linalg.svd(ritz.image, full_matrices=False)
    return Factors(u, vh @ right)


_SHARD_SIDE_ERROR = (
    "a row-sharded matrix (FSDP2) is projected on the right (R = G·Q is local to each row "
    "shard); the left or both-sided factors need the columns of G, which no shard holds"
)


def use_exact(
    shape: tuple[int, int] | torch.Size, rank: int, config: SubspaceIterationConfig
) -> bool:
    """Whether the iteration would cost about as much as the exact SVD (rank near min(m, n))."""
    return rank + config.oversample > config.exact_above * min(shape)


def randomized_factors(
    matrix: Tensor,
    rank: int,
    side: Side,
    *,
    config: SubspaceIterationConfig = DEFAULT_CONFIG,
    seed: int | None = None,
    shard: RowShard | None = None,
) -> Factors:
    """Cold-start factors: randomized range finder + ``config.power_iters`` subspace iterations."""
    shape = global_shape(matrix, shard)
    seed = default_seed(shape, rank) if seed is None else seed
    return _factors(
        matrix,
        rank,
        side,
        None,
        seed,
        shard,
        iters=config.power_iters,
        oversample=config.oversample,
    )


def warm_factors(
    matrix: Tensor,
    rank: int,
    side: Side,
    previous_left: Tensor | None,
    previous_right: Tensor | None,
    *,
    config: SubspaceIterationConfig = DEFAULT_CONFIG,
    seed: int | None = None,
    shard: RowShard | None = None,
) -> Factors:
    """Factors by adaptive subspace iteration started from the previous projector of the same side
    (``FULL`` starts from the right one); a cold ``randomized_factors`` start when there is none
    (the first refresh) or it does not fit the matrix."""
    # the global shape: every shard must draw the same random blocks
    shape = global_shape(matrix, shard)
    seed = default_seed(shape, rank) if seed is None else seed
    start = _previous_start(matrix, side, previous_left, previous_right)
    if start is None:
        return randomized_factors(matrix, rank, side, config=config, seed=seed, shard=shard)
    return _factors(
        matrix,
        rank,
        side,
        start,
        seed,
        shard,
        iters=config.warm_iters,
        max_iters=config.warm_max_iters,
        tol=config.warm_tol,
        oversample=config.oversample,
    )


def _previous_start(
    matrix: Tensor, side: Side, previous_left: Tensor | None, previous_right: Tensor | None
) -> Tensor | None:
    """The previous projector as a q×k block on the side the iteration runs on (the right one for
    ``FULL``), or None when there is none or it does not fit the matrix (another shape)."""
    if side == Side.LEFT:
        start, dim = previous_left, matrix.shape[0]
    else:
        start, dim = (previous_right.t() if previous_right is not None else None), matrix.shape[1]
    if start is None or start.dim() != 2 or start.shape[0] != dim:
        return None
    return start


def power_factors(
    matrix: Tensor,
    rank: int,
    side: Side,
    previous_left: Tensor | None,
    previous_right: Tensor | None,
    *,
    config: PowerStepConfig = DEFAULT_POWER_CONFIG,
    seed: int | None = None,
    shard: RowShard | None = None,
) -> Factors:
    """Factors by ``config.steps`` block power steps from the previous projector of the same side
    (``FULL``: from the right one; the left factor is then orth(G·Q), one more matmul): for the
    right factor Q ← orth(Gᵀ(G·Q)). No oversampling, no Rayleigh–Ritz: the basis is not ordered
    by singular value — GaLore does not need it to be, Adam's moments are per coordinate — and it
    stays column-aligned with the previous one, so the moments GaLore keeps across a refresh
    still point along (nearly) the same directions. A previous projector of another rank is cut
    to ``rank`` columns or padded with seeded random ones.

    ``warm_factors`` with ``config.iteration`` instead below ``config.min_rank`` and when there is
    no previous projector (the first refresh: a randomized start)."""
    if rank < config.min_rank:
        return warm_factors(
            matrix,
            rank,
            side,
            previous_left,
            previous_right,
            config=config.iteration,
            seed=seed,
            shard=shard,
        )
    shape = global_shape(matrix, shard)
    seed = default_seed(shape, rank) if seed is None else seed
    start = _previous_start(matrix, side, previous_left, previous_right)
    if start is None:
        return randomized_factors(
            matrix, rank, side, config=config.iteration, seed=seed, shard=shard
        )
    if shard is not None and side != Side.RIGHT:
        raise ValueError(_SHARD_SIDE_ERROR)
    _check_rank(shape, rank)
    # the left factor of G is the right one of Gᵀ (a transposed view: no copy)
    a = matrix.t() if side == Side.LEFT else matrix
    # a previous projector of a smaller rank is padded with seeded random columns (the power
    # step's aligned QR orthonormalises them after the previous ones, which stay as they are)
    gen = torch.Generator(device=matrix.device).manual_seed(seed)
    basis = power_step(a, _start_block(a, rank, start, gen, shard), steps=config.steps, shard=shard)
    # no R on the way: the last product was with the previous basis, not this one
    if side == Side.LEFT:
        return Factors(basis, None)
    if side == Side.RIGHT:
        return Factors(None, basis.t())
    # FULL: P = orth(G·Q), column-aligned with Q (G q_j ≈ σ_j p_j for a converged pair)
    return Factors(orthonormalize_aligned(matrix @ basis), basis.t())
