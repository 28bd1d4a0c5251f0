"""The subspace-refresh methods: exact, randomized, warm and power (quality, conventions,
determinism, optimizer round trips) and the fast non-finite check. What only ``power`` does (its
own ranks, column alignment, row shards, memory) and the benchmark's refresh measurements:
tests/test_fast_refresh.py."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from galorekit.optim.galore_adamw import GaLoreAdamW
from galorekit.projection import (
    SVD_METHODS,
    NonFiniteGradientError,
    Side,
    check_finite,
    compute_projector,
    project,
    refresh_projector,
)
from galorekit.projection.randomized import (
    DEFAULT_CONFIG,
    SubspaceIterationConfig,
    default_seed,
    power_factors,
    randomized_factors,
    top_right_subspace,
    use_exact,
    warm_factors,
)

FAST = ("randomized", "warm", "power")
#: the methods whose factors are ordered by singular value (``power`` keeps the previous order)
ORDERED = ("exact", "randomized", "warm")


def orthonormal(rows: int, cols: int, gen: torch.Generator) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(rows, cols, generator=gen)).Q


def decaying(
    m: int, n: int, gen: torch.Generator, *, kind: str = "power", noise: float = 0.05
) -> torch.Tensor:
    """U diag(σ) Vᵀ with a decaying spectrum (σ_i = 1/i or 0.93^i) plus a little Gaussian noise."""
    k = min(m, n)
    i = torch.arange(1, k + 1, dtype=torch.float32)
    values = 1.0 / i if kind == "power" else 0.93**i
    g = (orthonormal(m, k, gen) * values) @ orthonormal(n, k, gen).t()
    return g + noise * values[0] * torch.randn(m, n, generator=gen) / math.sqrt(m * n) * 10


def drifted(g: torch.Tensor, gen: torch.Generator, amount: float = 0.2) -> torch.Tensor:
    return g + amount * g.norm() * torch.randn(g.shape, generator=gen) / math.sqrt(g.numel())


def captured(g: torch.Tensor, left: torch.Tensor | None, right: torch.Tensor | None) -> float:
    r = g
    if left is not None:
        r = left.t() @ r
    if right is not None:
        r = r @ right.t()
    return float(r.square().sum() / g.square().sum())


def best(g: torch.Tensor, rank: int, side: Side) -> float:
    """The exact SVD's captured energy (two-sided for FULL: the same top-r singular values)."""
    s2 = torch.linalg.svdvals(g).square()
    return float(s2[:rank].sum() / s2.sum())


def test_registry_lists_the_methods() -> None:
    from galorekit.names import SVD_METHOD_NAMES

    assert set(SVD_METHODS) == {"exact", "randomized", "warm", "power"}
    assert tuple(SVD_METHODS) == SVD_METHOD_NAMES  # the torch-free names the CLIs offer


# ``power`` runs its own steps from rank 32 (``PowerStepConfig.min_rank``), ``warm``'s below
@pytest.mark.parametrize(
    ("method", "rank"), [("randomized", 16), ("warm", 16), ("power", 16), ("power", 40)]
)
@pytest.mark.parametrize("kind", ["power", "geometric"])
@pytest.mark.parametrize(
    ("shape", "side"),
    [
        ((96, 160), Side.LEFT),
        ((160, 96), Side.RIGHT),
        ((96, 96), Side.RIGHT),
        ((96, 128), Side.FULL),
    ],
)
def test_fast_methods_capture_99_percent_of_the_exact_energy(
    method: str, rank: int, kind: str, shape: tuple[int, int], side: Side, gen: torch.Generator
) -> None:
    assert not use_exact(shape, rank, DEFAULT_CONFIG)  # the fast path itself is what is tested
    before = decaying(*shape, gen, kind=kind)
    after = drifted(before, gen)
    prev = compute_projector(before, rank, side, method=method)
    left, right = compute_projector(
        after, rank, side, method=method, previous_left=prev[0], previous_right=prev[1]
    )
    assert captured(after, left, right) >= 0.99 * best(after, rank, side)


@pytest.mark.parametrize("method", ORDERED)
@pytest.mark.parametrize("side", [Side.LEFT, Side.RIGHT, Side.FULL])
def test_factor_convention(method: str, side: Side, gen: torch.Generator) -> None:
    """left = U[:, :r] (m×r, orthonormal columns), right = Vᵀ[:r] (r×n, orthonormal rows), both
    contiguous, ordered by decreasing singular value, only the ones the side needs."""
    m, n, rank = 80, 120, 12
    g = decaying(m, n, gen, kind="geometric", noise=0.0)
    left, right = compute_projector(g, rank, side, method=method, out_dtype=torch.float64)
    assert (left is not None) == (side != Side.RIGHT)
    assert (right is not None) == (side != Side.LEFT)
    eye = torch.eye(rank, dtype=torch.float64)
    if left is not None:
        assert left.shape == (m, rank) and left.dtype == torch.float64 and left.is_contiguous()
        torch.testing.assert_close(left.t() @ left, eye, atol=1e-5, rtol=0)
        # ordered: the energy along each successive direction does not increase
        energy = (left.t() @ g.double()).square().sum(dim=1)
        assert bool((energy[1:] <= energy[:-1] * (1 + 1e-4)).all())
    if right is not None:
        assert right.shape == (rank, n) and right.dtype == torch.float64 and right.is_contiguous()
        torch.testing.assert_close(right @ right.t(), eye, atol=1e-5, rtol=0)
        energy = (g.double() @ right.t()).square().sum(dim=0)
        assert bool((energy[1:] <= energy[:-1] * (1 + 1e-4)).all())
    if side == Side.FULL:
        # paired: PᵀGQ is (nearly) diagonal, as UᵀGV = Σ is
        core = left.t() @ g.double() @ right.t()
        off = core - torch.diag(torch.diagonal(core))
        assert float(off.norm()) < 1e-3 * float(core.norm())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("side", [Side.LEFT, Side.RIGHT, Side.FULL])
@pytest.mark.parametrize("method", ["exact", *FAST])
def test_refresh_gives_the_projection_it_computed_on_the_way(
    method: str, side: Side, dtype: torch.dtype, gen: torch.Generator
) -> None:
    """randomized and warm return R = project(G) from their Rayleigh–Ritz products (the optimizer
    then skips that matmul), for one-sided projections; exact and power compute none."""
    g = decaying(120, 90, gen).to(dtype)
    prev = compute_projector(drifted(g.float(), gen), 40, side, method="exact")
    left, right, projected = refresh_projector(
        g, 40, side, method=method, previous_left=prev[0], previous_right=prev[1]
    )
    if method in ("exact", "power") or side == Side.FULL:
        assert projected is None
        return
    assert projected.dtype == dtype and projected.is_contiguous()
    expected = project(
        g.float(),
        side,
        None if left is None else left.float(),
        None if right is None else right.float(),
    )
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(
        projected.float(), expected, rtol=tol, atol=tol * float(g.abs().max())
    )


def test_the_optimizer_uses_the_refresh_projection(monkeypatch: pytest.MonkeyPatch) -> None:
    """A warm refresh step projects nothing itself; a power one does (one matmul per matrix),
    except at the first refresh, which is a randomized one."""
    import galorekit.optim.refresh as base  # where the optimizer projects

    calls: list[int] = []
    real = base.project
    monkeypatch.setattr(base, "project", lambda *a: calls.append(1) or real(*a))
    for svd, expected in (("warm", [0, 1, 0, 1]), ("power", [0, 1, 1, 1])):
        w = nn.Parameter(torch.zeros(128, 96))
        opt = GaLoreAdamW([{"params": [w], "rank": 32, "update_proj_gap": 2, "svd": svd}])
        counts = []
        for step in range(4):  # refreshes at steps 0 and 2
            w.grad = decaying(128, 96, torch.Generator().manual_seed(step))
            calls.clear()
            opt.step()
            counts.append(len(calls))
        assert counts == expected, svd


@pytest.mark.parametrize("method", FAST)
def test_exactly_low_rank_matrix_gives_the_exact_subspace(
    method: str, gen: torch.Generator
) -> None:
    m, n, rank = 120, 90, 10
    u, v = orthonormal(m, rank, gen), orthonormal(n, rank, gen)
    g = (u * torch.linspace(3.0, 1.0, rank)) @ v.t()
    left, _ = compute_projector(g, rank, Side.LEFT, method=method)
    _, right = compute_projector(g, rank, Side.RIGHT, method=method)
    torch.testing.assert_close(left @ left.t(), u @ u.t(), atol=1e-4, rtol=0)
    torch.testing.assert_close(right.t() @ right, v @ v.t(), atol=1e-4, rtol=0)


@pytest.mark.parametrize("method", FAST)
def test_deterministic_and_leaves_the_global_rng_alone(method: str, gen: torch.Generator) -> None:
    g = decaying(100, 70, gen)
    prev = compute_projector(drifted(g, gen), 12, Side.RIGHT, method="exact")
    kwargs = dict(method=method, previous_left=prev[0], previous_right=prev[1])
    torch.manual_seed(123)
    rng = torch.get_rng_state()
    first = compute_projector(g, 12, Side.RIGHT, **kwargs)
    assert torch.equal(torch.get_rng_state(), rng)
    torch.manual_seed(999)  # a different global seed does not matter
    second = compute_projector(g, 12, Side.RIGHT, **kwargs)
    assert torch.equal(first[1], second[1])
    seeded = compute_projector(g, 12, Side.RIGHT, seed=7, **kwargs)
    assert torch.equal(seeded[1], compute_projector(g, 12, Side.RIGHT, seed=7, **kwargs)[1])


def test_seed_changes_the_random_block_but_not_the_quality(gen: torch.Generator) -> None:
    g = decaying(100, 70, gen)
    a = randomized_factors(g, 12, Side.RIGHT, seed=1)[1]
    b = randomized_factors(g, 12, Side.RIGHT, seed=2)[1]
    assert not torch.equal(a, b)
    for right in (a, b):
        assert captured(g, None, right) >= 0.99 * best(g, 12, Side.RIGHT)


def test_default_seed_depends_on_shape_and_rank_only() -> None:
    assert default_seed((40, 30), 4) == default_seed(torch.Size([40, 30]), 4)
    assert (
        len({default_seed((40, 30), 4), default_seed((30, 40), 4), default_seed((40, 30), 5)}) == 3
    )


@pytest.mark.parametrize("method", FAST)
def test_projector_is_continuous_in_the_gradient(method: str, gen: torch.Generator) -> None:
    """A rounding-level change of the gradient (another reduction order, a clipping done
    differently) changes the projector at rounding level too: no gradient-derived random seed."""
    g = decaying(100, 70, gen)
    prev = compute_projector(drifted(g, gen), 12, Side.RIGHT, method="exact")
    kwargs = dict(method=method, previous_left=prev[0], previous_right=prev[1])
    a = compute_projector(g, 12, Side.RIGHT, **kwargs)[1]
    b = compute_projector(g * (1 + 1e-6), 12, Side.RIGHT, **kwargs)[1]
    assert not torch.equal(a, b)
    torch.testing.assert_close(a.t() @ a, b.t() @ b, atol=1e-4, rtol=0)


@pytest.mark.parametrize("factors", [warm_factors, power_factors])
def test_without_previous_is_randomized(factors, gen: torch.Generator) -> None:
    g = decaying(90, 60, gen)
    for side in (Side.LEFT, Side.RIGHT):
        warm = factors(g, 8, side, None, None, seed=3)
        cold = randomized_factors(g, 8, side, seed=3)
        for w, c in zip(warm, cold):
            assert (w is None and c is None) or torch.equal(w, c)


def test_warm_starts_from_the_previous_projector(gen: torch.Generator) -> None:
    """One iteration from the exact subspace stays on it; from a random start it does not get
    there: so the previous projector is really used."""
    m, n, rank = 150, 100, 10
    g = decaying(m, n, gen, noise=0.0)
    exact_left, _ = compute_projector(g, rank, Side.LEFT, method="exact")
    config = SubspaceIterationConfig(oversample=0, warm_iters=1)
    from_exact = warm_factors(g, rank, Side.LEFT, exact_left, None, config=config).left
    from_random = warm_factors(
        g, rank, Side.LEFT, orthonormal(m, rank, gen), None, config=config
    ).left
    target = exact_left @ exact_left.t()
    assert float((from_exact @ from_exact.t() - target).norm()) < 1e-3
    assert float((from_random @ from_random.t() - target).norm()) > 1e-2


def test_warm_iterates_again_only_when_the_subspace_moved(gen: torch.Generator) -> None:
    g = decaying(150, 100, gen, noise=0.0)
    exact_left, _ = compute_projector(g, 10, Side.LEFT, method="exact")
    kwargs = dict(iters=1, max_iters=3, tol=1e-3, oversample=4)
    settled = top_right_subspace(g.t(), 10, start=exact_left, **kwargs)
    moved = top_right_subspace(g.t(), 10, start=orthonormal(150, 10, gen), **kwargs)
    fixed = top_right_subspace(g.t(), 10, start=orthonormal(150, 10, gen), iters=1, oversample=4)
    assert settled.iterations == 1
    assert moved.iterations > 1 and fixed.iterations == 1
    assert captured(g, moved.basis, None) > captured(g, fixed.basis, None)


@pytest.mark.parametrize(("previous_rank", "quality"), [(4, 0.95), (8, 0.99), (20, 0.99)])
def test_warm_accepts_a_previous_projector_of_another_rank(
    previous_rank: int, quality: float, gen: torch.Generator
) -> None:
    """A rank change between runs: the previous columns are used up to the new width, padded with
    random ones (which need more than one iteration, hence the lower bar for a smaller one)."""
    g = decaying(120, 80, gen, kind="geometric")
    _, prev_right = compute_projector(g, previous_rank, Side.RIGHT)
    _, right = compute_projector(g, 8, Side.RIGHT, method="warm", previous_right=prev_right)
    assert right.shape == (8, 80)
    assert captured(g, None, right) >= quality * best(g, 8, Side.RIGHT)


@pytest.mark.parametrize("method", FAST)
def test_rank_near_min_dimension_falls_back_to_exact(method: str, gen: torch.Generator) -> None:
    g = torch.randn(40, 24, generator=gen)
    assert use_exact(g.shape, 16, DEFAULT_CONFIG)
    fast = compute_projector(g, 16, Side.RIGHT, method=method)[1]
    exact = compute_projector(g, 16, Side.RIGHT, method="exact")[1]
    assert torch.equal(fast, exact)


@pytest.mark.parametrize("method", FAST)
def test_bf16_gradient_is_refreshed_in_float32(method: str, gen: torch.Generator) -> None:
    g = decaying(96, 160, gen, kind="geometric").bfloat16()
    left, _ = compute_projector(g, 12, Side.LEFT, method=method)
    assert left.dtype == torch.bfloat16
    assert captured(g.float(), left.float(), None) >= 0.99 * best(g.float(), 12, Side.LEFT)


def test_top_right_subspace_checks_its_input(gen: torch.Generator) -> None:
    a = torch.randn(30, 20, generator=gen)
    with pytest.raises(ValueError, match="at least one iteration"):
        top_right_subspace(a, 5, iters=0, oversample=2, start=torch.randn(20, 5, generator=gen))
    with pytest.raises(ValueError, match="rank"):
        top_right_subspace(a, 25, iters=1, oversample=2)
    ritz = top_right_subspace(a, 5, iters=2, oversample=4)
    assert ritz.basis.shape == (20, 5)
    assert bool((ritz.values[1:] <= ritz.values[:-1]).all())


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("oversample", -1),
        ("power_iters", 1.5),
        ("warm_iters", 0),
        ("warm_max_iters", 0),
        ("warm_tol", -0.1),
        ("exact_above", 0.0),
    ],
)
def test_config_validation(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        SubspaceIterationConfig(**{field: value})


# ---- the fast non-finite check -------------------------------------------------------------------
def test_check_finite_tolerates_a_sum_that_overflows() -> None:
    big = torch.full((4, 4), 3e38)
    check_finite(big, "w")  # every entry is finite although their sum is +inf


def test_check_finite_catches_cancelling_infinities() -> None:
    grad = torch.zeros(3, 3)
    grad[0, 0], grad[1, 1] = float("inf"), float("-inf")
    with pytest.raises(NonFiniteGradientError, match="2 non-finite"):
        check_finite(grad, "w")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_check_finite_half_precision(dtype: torch.dtype) -> None:
    check_finite(torch.full((64, 64), 60000.0, dtype=torch.float16).to(dtype), "w")
    bad = torch.ones(4, 4, dtype=dtype)
    bad[2, 2] = float("nan")
    with pytest.raises(NonFiniteGradientError, match="1 non-finite"):
        check_finite(bad, "w")


# ---- optimizer round trip --------------------------------------------------------------------
def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(48, 64), nn.Tanh(), nn.Linear(64, 40), nn.Tanh(), nn.Linear(40, 8)
    )


def _optimizer(model: nn.Module, svd: str) -> GaLoreAdamW:
    weights = [model[0].weight, model[2].weight, model[4].weight]
    others = [p for p in model.parameters() if all(p is not w for w in weights)]
    return GaLoreAdamW(
        [
            {"params": others},
            {"params": weights, "rank": 6, "update_proj_gap": 3, "scale": 0.25, "svd": svd},
        ],
        lr=1e-2,
    )


def _train(model: nn.Module, opt: GaLoreAdamW, steps: range) -> None:
    for step in steps:
        gen = torch.Generator().manual_seed(1000 + step)  # the data depends on the step only
        x, y = torch.randn(32, 48, generator=gen), torch.randn(32, 8, generator=gen)
        opt.zero_grad(set_to_none=True)
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()


@pytest.mark.parametrize("svd", ["exact", "randomized", "warm", "power"])
def test_every_mode_resumes_bit_identically(svd: str) -> None:
    """Train 5 steps, checkpoint (weights_only load), train 7 more through two refreshes: the resumed
    run matches the uninterrupted one exactly."""
    straight = _model(0)
    opt = _optimizer(straight, svd)
    _train(straight, opt, range(5))
    buffer = io.BytesIO()
    torch.save({"model": straight.state_dict(), "optim": opt.state_dict()}, buffer)
    _train(straight, opt, range(5, 12))

    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed = _model(1)  # different init: everything must come from the checkpoint
    resumed.load_state_dict(saved["model"])
    opt2 = _optimizer(resumed, svd)
    opt2.load_state_dict(saved["optim"])
    assert opt2.param_groups[1]["svd"] == svd
    _train(resumed, opt2, range(5, 12))
    for a, b in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_svd_mode_changes_the_trajectory_only_slightly() -> None:
    """The fast modes really run (different bits) yet train like the exact SVD."""
    finals = {}
    for svd in ("exact", *FAST):
        model = _model(0)
        _train(model, _optimizer(model, svd), range(12))
        finals[svd] = torch.cat([p.detach().flatten() for p in model.parameters()])
    for svd in FAST:
        assert not torch.equal(finals[svd], finals["exact"])
        change = float((finals[svd] - finals["exact"]).norm() / finals["exact"].norm())
        assert change < 0.05


# ---- real gradients ---------------------------------------------------------------------------
@pytest.mark.slow
def test_fast_methods_on_real_llama_gradients() -> None:
    """A small LLaMA trained on KJV bytes: on its attention/MLP gradients, randomized, warm
    and power (started from the projector of 8 steps earlier) capture ≥ 99% of the exact SVD's
    energy."""
    from galorekit.bench import RealGradConfig, real_gradient_quality

    cfg = RealGradConfig(
        hidden=128,
        intermediate=352,
        layers=2,
        heads=4,
        batch=8,
        seq_len=64,
        steps=24,
        every=8,
        train_rank=32,
        ranks=(2, 4, 8, 32),  # power's own steps from rank 32 (min_rank), warm's below
    )
    result = real_gradient_quality(cfg, ["exact", *FAST])
    assert result["pairs"] == 2 * 2 * 7
    for rank, entry in result["by_rank"].items():
        assert entry["exact_captured"] < 1.0
        exact = entry["methods"]["galorekit (svd=exact)"]
        assert exact["vs_exact_min"] == pytest.approx(1.0, abs=1e-4), rank
        for method in FAST:
            assert entry["methods"][f"galorekit (svd={method})"]["vs_exact_min"] >= 0.99, (
                rank,
                method,
            )


def test_a_registered_variant_runs_in_the_optimizer(monkeypatch: pytest.MonkeyPatch) -> None:
    """Other iteration settings are registered under a new name (the svd.py docstring's recipe)
    and used through the group key like the built-in ones."""
    import functools

    from galorekit.projection.svd import warm_svd

    calls: list[SubspaceIterationConfig] = []
    one_iteration = SubspaceIterationConfig(warm_max_iters=1)

    def spy(*args, **kwargs):
        calls.append(kwargs["config"])
        return warm_svd(*args, **kwargs)

    monkeypatch.setitem(SVD_METHODS, "warm1", functools.partial(spy, config=one_iteration))
    model = _model(0)
    _train(model, _optimizer(model, "warm1"), range(4))
    assert calls and all(c is one_iteration for c in calls)
