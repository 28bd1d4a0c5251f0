"""The ``power`` refresh — one block power step from the previous projector, Q ← orth(Gᵀ(G·Q))
— at its own ranks: column alignment with the previous projector, the small-rank and
first-refresh paths, determinism, row shards (FSDP2), memory, optimizer round trips; and what
``galore bench`` measures about refreshes (column alignment, the ``--profile`` breakdown). The
properties every mode shares (captured energy included) are tested in tests/test_svd_methods.py."""

from __future__ import annotations

import dataclasses
import functools
import io

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from galorekit.optim.galore_adamw import GaLoreAdamW
from galorekit.projection import SVD_METHODS, Side, compute_projector
from galorekit.projection.randomized import (
    DEFAULT_POWER_CONFIG,
    PowerStepConfig,
    SubspaceIterationConfig,
    orthonormalize_aligned,
    power_factors,
    power_step,
    warm_factors,
)
from galorekit.projection.svd import power_svd
from test_fsdp import _gradient, _sharded_projectors
from test_svd_methods import best, captured, decaying, drifted, orthonormal

RANK = 40  # ≥ DEFAULT_POWER_CONFIG.min_rank: the power steps themselves run


def _basis(left: torch.Tensor | None, right: torch.Tensor | None, *_: object) -> torch.Tensor:
    """The projector's basis as columns (P, or Q for a right/both-sided one); a ``Factors``'
    projection, when one is passed too, is ignored."""
    return right.t() if right is not None else left


def test_rank_is_at_least_min_rank() -> None:
    assert DEFAULT_POWER_CONFIG.min_rank <= RANK


@pytest.mark.parametrize("side", [Side.LEFT, Side.RIGHT, Side.FULL])
def test_factors_are_orthonormal_contiguous_and_only_the_needed_ones(
    side: Side, gen: torch.Generator
) -> None:
    m, n = 150, 200
    g = decaying(m, n, gen)
    prev = compute_projector(drifted(g, gen), RANK, side, method="exact")
    left, right = compute_projector(
        g, RANK, side, method="power", previous_left=prev[0], previous_right=prev[1],
        out_dtype=torch.float64,
    )  # fmt: skip
    assert (left is not None) == (side != Side.RIGHT)
    assert (right is not None) == (side != Side.LEFT)
    eye = torch.eye(RANK, dtype=torch.float64)
    if left is not None:
        assert left.shape == (m, RANK) and left.dtype == torch.float64 and left.is_contiguous()
        torch.testing.assert_close(left.t() @ left, eye, atol=1e-5, rtol=0)
    if right is not None:
        assert right.shape == (RANK, n) and right.dtype == torch.float64 and right.is_contiguous()
        torch.testing.assert_close(right @ right.t(), eye, atol=1e-5, rtol=0)


@pytest.mark.parametrize("side", [Side.LEFT, Side.RIGHT, Side.FULL])
def test_the_exact_subspace_is_a_fixed_point_column_by_column(
    side: Side, gen: torch.Generator
) -> None:
    """From the exact singular vectors of the same gradient one step returns them, signs
    included: GᵀG V = V Σ², and the QR keeps each column's sign."""
    g = decaying(150, 200, gen, kind="geometric", noise=0.0)
    exact = compute_projector(g, RANK, side, method="exact")
    new = compute_projector(
        g, RANK, side, method="power", previous_left=exact[0], previous_right=exact[1]
    )
    for e, p in zip(exact, new):
        if e is not None:
            torch.testing.assert_close(p, e, atol=2e-4, rtol=0)


def test_columns_stay_aligned_with_the_previous_projector(gen: torch.Generator) -> None:
    """After a drift each column of the new basis stays close to the same column of the old one
    (so the moments GaLore keeps across a refresh still mean the same coordinates), while a
    Rayleigh–Ritz refresh re-orders and re-signs its columns freely."""
    before = decaying(320, 192, gen)
    after = drifted(before, gen)
    _, prev = compute_projector(before, RANK, Side.RIGHT, method="exact")
    cosines = {}
    for method in ("power", "warm"):
        _, right = compute_projector(after, RANK, Side.RIGHT, method=method, previous_right=prev)
        cosines[method] = torch.diagonal(prev @ right.t())
    assert float(cosines["power"].min()) > 0.8
    assert float(cosines["power"].mean()) > 0.9
    assert float(cosines["warm"].mean()) < 0.5


def test_orthonormalize_aligned_keeps_column_signs(gen: torch.Generator) -> None:
    block = torch.randn(60, 12, generator=gen)
    q = orthonormalize_aligned(block)
    torch.testing.assert_close(q.t() @ q, torch.eye(12), atol=1e-5, rtol=0)
    assert bool(((q * block).sum(dim=0) > 0).all())  # each column on its input column's side
    # an orthonormal block with negative columns is returned as it is
    signed = orthonormal(60, 12, gen) * torch.where(torch.arange(12) % 2 == 0, -1.0, 1.0)
    torch.testing.assert_close(orthonormalize_aligned(signed), signed, atol=1e-5, rtol=0)
    # a rank-deficient block still gives orthonormal columns
    flat = orthonormalize_aligned(torch.zeros(60, 12))
    torch.testing.assert_close(flat.t() @ flat, torch.eye(12), atol=1e-6, rtol=0)


def test_a_low_rank_matrix_is_found_in_one_step_from_any_start(gen: torch.Generator) -> None:
    m, n = 160, 120
    u, v = orthonormal(m, RANK, gen), orthonormal(n, RANK, gen)
    g = (u * torch.linspace(3.0, 1.0, RANK)) @ v.t()
    start = orthonormal(n, RANK, gen).t()  # unrelated to the gradient
    _, right = compute_projector(g, RANK, Side.RIGHT, method="power", previous_right=start)
    torch.testing.assert_close(right.t() @ right, v @ v.t(), atol=1e-4, rtol=0)


def test_steps_are_repeated_power_steps(gen: torch.Generator) -> None:
    g = decaying(200, 150, gen)
    start = orthonormal(150, RANK, gen)
    twice = power_step(g, start, steps=2)
    assert torch.equal(twice, power_step(g, power_step(g, start)))
    one = power_factors(g, RANK, Side.RIGHT, None, start.t())[1]
    two = power_factors(g, RANK, Side.RIGHT, None, start.t(), config=PowerStepConfig(steps=2))[1]
    assert torch.equal(one, power_step(g, start).t())
    assert captured(g, None, two) > captured(g, None, one)
    with pytest.raises(ValueError, match="steps ≥ 1"):
        power_step(g, start, steps=0)


@pytest.mark.parametrize("side", [Side.LEFT, Side.RIGHT])
def test_below_min_rank_it_is_the_warm_refresh(side: Side, gen: torch.Generator) -> None:
    """Small ranks (fine-tuning's 4–16) get the oversampled iteration with Rayleigh–Ritz."""
    g = decaying(120, 90, gen)
    prev = compute_projector(drifted(g, gen), 8, side, method="exact")
    power = power_factors(g, 8, side, *prev)
    warm = warm_factors(g, 8, side, *prev, config=DEFAULT_POWER_CONFIG.iteration)
    for p, w in zip(power, warm):
        assert (p is None and w is None) or torch.equal(p, w)
    # with min_rank=0 the same rank takes a power step instead
    stepped = power_factors(g, 8, side, *prev, config=PowerStepConfig(min_rank=0))
    assert not torch.equal(_basis(*stepped), _basis(*power))


def test_the_first_refresh_is_randomized(gen: torch.Generator) -> None:
    g = decaying(200, 150, gen)
    config = PowerStepConfig(iteration=SubspaceIterationConfig(oversample=4, power_iters=1))
    from galorekit.projection.randomized import randomized_factors

    first = power_factors(g, RANK, Side.RIGHT, None, None, config=config, seed=5)
    cold = randomized_factors(g, RANK, Side.RIGHT, config=config.iteration, seed=5)
    assert torch.equal(first[1], cold[1])
    # a previous projector of another matrix shape is no start either
    other = power_factors(g, RANK, Side.RIGHT, None, torch.randn(RANK, 99), config=config, seed=5)
    assert torch.equal(other[1], cold[1])


@pytest.mark.parametrize("previous_rank", [24, 40, 56])
def test_a_previous_projector_of_another_rank(previous_rank: int, gen: torch.Generator) -> None:
    """A rank change between runs: the previous columns are cut, or kept and padded with seeded
    random ones (which one step only starts to turn: hence the lower bar when padding)."""
    g = decaying(240, 160, gen, kind="geometric")
    _, prev = compute_projector(g, previous_rank, Side.RIGHT)
    _, right = compute_projector(g, RANK, Side.RIGHT, method="power", previous_right=prev)
    assert right.shape == (RANK, 160)
    torch.testing.assert_close(right @ right.t(), torch.eye(RANK), atol=1e-5, rtol=0)
    quality = 0.95 if previous_rank < RANK else 0.999
    assert captured(g, None, right) >= quality * best(g, RANK, Side.RIGHT)
    kept = min(previous_rank, RANK)  # the previous columns stay where they were
    assert float(torch.diagonal(prev[:kept] @ right[:kept].t()).min()) > 0.99


def test_deterministic_and_leaves_the_global_rng_alone(gen: torch.Generator) -> None:
    g = decaying(200, 150, gen)
    _, prev = compute_projector(drifted(g, gen), RANK - 8, Side.RIGHT, method="exact")  # padded
    torch.manual_seed(1)
    rng = torch.get_rng_state()
    first = compute_projector(g, RANK, Side.RIGHT, method="power", previous_right=prev)[1]
    assert torch.equal(torch.get_rng_state(), rng)
    torch.manual_seed(2)
    assert torch.equal(
        first, compute_projector(g, RANK, Side.RIGHT, method="power", previous_right=prev)[1]
    )
    seeded = compute_projector(g, RANK, Side.RIGHT, method="power", previous_right=prev, seed=9)
    assert not torch.equal(first, seeded[1])  # the padding columns come from the seed


def test_config_validation() -> None:
    for kwargs, field in (
        ({"steps": 0}, "steps"),
        ({"steps": 1.5}, "steps"),
        ({"steps": True}, "steps"),
        ({"min_rank": -1}, "min_rank"),
        ({"iteration": {"oversample": 8}}, "iteration"),
    ):
        with pytest.raises(ValueError, match=field):
            PowerStepConfig(**kwargs)


# ---- row shards (FSDP2) ------------------------------------------------------------------------
@pytest.mark.parametrize("rows", [[80, 80], [54, 53, 53], [100, 60, 0]])
@pytest.mark.parametrize("previous", ["same rank", "smaller rank", "none"])
def test_sharded_power_refresh_equals_the_unsharded_one(rows: list[int], previous: str) -> None:
    grad = _gradient(160, 96, seed=1)
    prev_rank = {"same rank": RANK, "smaller rank": RANK - 8, "none": None}[previous]
    prev = (
        compute_projector(_gradient(160, 96, seed=2), prev_rank, Side.RIGHT, method="exact")[1]
        if prev_rank
        else None
    )
    kwargs = dict(rank=RANK, side=Side.RIGHT, method="power", previous_right=prev)
    _, expected = compute_projector(grad, **kwargs)
    shards = _sharded_projectors(grad, rows, **kwargs)
    for right in shards:  # every process gets the same projector, the single process's
        assert torch.equal(right, shards[0])
        if prev is not None:  # a power step: column by column
            torch.testing.assert_close(right, expected, rtol=0, atol=1e-4)
        else:  # Rayleigh–Ritz (the first refresh): eigenvectors' signs follow rounding
            torch.testing.assert_close(
                right.t() @ right, expected.t() @ expected, rtol=0, atol=1e-4
            )


@pytest.mark.parametrize("side", [Side.LEFT, Side.FULL])
def test_a_row_shard_refuses_left_projections(side: Side) -> None:
    from galorekit.projection import RowShard

    shard = RowShard(0, 96, reduce=lambda t: t)
    prev = torch.linalg.qr(torch.randn(96, RANK)).Q
    with pytest.raises(ValueError, match="right"):
        power_factors(torch.randn(96, 64), RANK, side, prev, prev[:64].t(), shard=shard)


# ---- memory ------------------------------------------------------------------------------------
class _Allocations(TorchDispatchMode):
    """Records the shape and dtype of every new (non-view) tensor an operation returns."""

    def __init__(self) -> None:
        super().__init__()
        self.tensors: list[tuple[torch.Size, torch.dtype]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not func.is_view:  # a view (e.g. a transpose) shares its input's memory
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor):
                    self.tensors.append((t.shape, t.dtype))
        return out


@pytest.mark.parametrize("method", ["power", "warm", "randomized"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_refresh_makes_no_full_size_copy_of_a_float32_gradient(
    method: str, dtype: torch.dtype, gen: torch.Generator
) -> None:
    """Every tensor a fast refresh creates is a block of rank (+ oversample) columns: a float32
    gradient is never copied, a bf16 one once (its float32 copy, freed when the refresh returns),
    so refreshing every matrix of a model never holds a float32 copy of every gradient."""
    m, n = 240, 200
    grad = decaying(m, n, gen).to(dtype)
    prev = compute_projector(grad, RANK, Side.RIGHT, method="exact")
    with _Allocations() as seen:
        compute_projector(
            grad, RANK, Side.RIGHT, method=method, previous_left=prev[0], previous_right=prev[1]
        )
    full = [(s, d) for s, d in seen.tensors if s.numel() >= m * n // 2]
    assert full == ([] if dtype == torch.float32 else [(torch.Size([m, n]), torch.float32)])


# ---- in the optimizer --------------------------------------------------------------------------
def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(96, 128), nn.Tanh(), nn.Linear(128, 112), nn.Tanh(), nn.Linear(112, 8)
    )


def _optimizer(model: nn.Module, svd: str) -> GaLoreAdamW:
    weights = [model[0].weight, model[2].weight]
    others = [p for p in model.parameters() if all(p is not w for w in weights)]
    return GaLoreAdamW(
        [
            {"params": others},
            {"params": weights, "rank": RANK, "update_proj_gap": 3, "scale": 0.25, "svd": svd},
        ],
        lr=1e-2,
    )


def _train(model: nn.Module, opt: GaLoreAdamW, steps: range) -> None:
    for step in steps:
        gen = torch.Generator().manual_seed(2000 + step)
        x, y = torch.randn(64, 96, generator=gen), torch.randn(64, 8, generator=gen)
        opt.zero_grad(set_to_none=True)
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()


def test_power_resumes_bit_identically_through_power_steps(monkeypatch) -> None:
    """At rank 40 the refreshes after the first are power steps: a checkpoint (weights_only
    load) taken between them resumes exactly."""
    calls: list[bool] = []
    real_step = power_step

    def spy(*args, **kwargs):
        calls.append(True)
        return real_step(*args, **kwargs)

    monkeypatch.setattr("galorekit.projection.randomized.power_step", spy)
    straight = _model(0)
    opt = _optimizer(straight, "power")
    _train(straight, opt, range(5))
    buffer = io.BytesIO()
    torch.save({"model": straight.state_dict(), "optim": opt.state_dict()}, buffer)
    _train(straight, opt, range(5, 12))
    assert calls  # the refreshes at steps 3, 6 and 9 took power steps

    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed = _model(1)
    resumed.load_state_dict(saved["model"])
    opt2 = _optimizer(resumed, "power")
    opt2.load_state_dict(saved["optim"])
    assert opt2.param_groups[1]["svd"] == "power"
    _train(resumed, opt2, range(5, 12))
    for a, b in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_power_trains_like_the_exact_svd() -> None:
    """On a learnable task (a fixed random teacher) power steps reduce the loss as the exact SVD
    does, with different bits."""
    teacher = torch.randn(96, 8, generator=torch.Generator().manual_seed(7)) / 96**0.5

    def loss_after(svd: str) -> tuple[float, torch.Tensor]:
        model = _model(0)
        opt = _optimizer(model, svd)
        for step in range(30):
            x = torch.randn(64, 96, generator=torch.Generator().manual_seed(3000 + step))
            opt.zero_grad(set_to_none=True)
            loss = nn.functional.mse_loss(model(x), torch.tanh(x @ teacher))
            loss.backward()
            opt.step()
        return float(loss.detach()), torch.cat([p.detach().flatten() for p in model.parameters()])

    exact_loss, exact_params = loss_after("exact")
    power_loss, power_params = loss_after("power")
    assert not torch.equal(exact_params, power_params)
    x = torch.randn(64, 96, generator=torch.Generator().manual_seed(3000))
    with torch.no_grad():
        untrained = float(nn.functional.mse_loss(_model(0)(x), torch.tanh(x @ teacher)))
    assert exact_loss < 0.5 * untrained
    assert power_loss < 1.1 * exact_loss


def test_more_steps_are_registered_under_a_name_of_ones_own(monkeypatch) -> None:
    two = functools.partial(power_svd, config=PowerStepConfig(steps=2))
    monkeypatch.setitem(SVD_METHODS, "power2", two)
    model = _model(0)
    _train(model, _optimizer(model, "power2"), range(4))
    assert model[0].weight.isfinite().all()


# ---- the benchmark's refresh measurements ------------------------------------------------------
def test_column_alignment(gen: torch.Generator) -> None:
    from galorekit.analysis import column_alignment

    q = orthonormal(50, 6, gen)
    assert column_alignment(q, q) == pytest.approx(1.0, abs=1e-6)
    assert column_alignment(q, -q) == pytest.approx(-1.0, abs=1e-6)
    # the same subspace, columns in another order: the subspace is kept, the coordinates are not
    assert column_alignment(q, q[:, [1, 2, 3, 4, 5, 0]]) == pytest.approx(0.0, abs=1e-6)
    half = q * torch.tensor([1.0, -1.0] * 3)
    assert column_alignment(q, half) == pytest.approx(0.0, abs=1e-6)


def test_bench_reports_alignment_and_the_refresh_profile() -> None:
    from galorekit import bench

    cfg = bench.BenchConfig(
        model="tiny",
        rank=40,
        layers=1,
        steady_steps=1,
        cycles=1,
        svd=("exact", "power"),
        reference=False,
        adamw=False,
        profile=True,
    )
    result = bench.run_benchmark(cfg)
    rows = {row["optimizer"]: row for row in result["results"]}
    # on the drifted synthetic gradients power keeps its columns, the exact SVD does not
    assert rows["galorekit (svd=power)"]["quality"]["aligned"] > 0.5
    assert rows["galorekit (svd=exact)"]["quality"]["aligned"] < 0.5
    profile = result["profile"]
    assert set(profile) == {"galorekit (svd=exact)", "galorekit (svd=power)"}
    for row in profile.values():
        assert row["total"] > 0
        parts = [row[c] for c in (*bench.PROFILE_CATEGORIES, "other")]
        assert all(p >= 0 for p in parts[:-1])
        assert sum(parts) == pytest.approx(row["total"], rel=1e-6)
    # exact: an SVD per matrix; power: QRs and matmuls, no SVD and no eigendecomposition
    assert (
        profile["galorekit (svd=exact)"]["SVD"] > 0 and profile["galorekit (svd=exact)"]["QR"] == 0
    )
    assert (
        profile["galorekit (svd=power)"]["SVD"] == 0
        and profile["galorekit (svd=power)"]["eigh"] == 0
    )
    assert (
        profile["galorekit (svd=power)"]["QR"] > 0
        and profile["galorekit (svd=power)"]["matmul"] > 0
    )
    markdown = bench.format_markdown(result)
    assert "Where a refresh step's time goes" in markdown and "column alignment" in markdown
    without = bench.run_benchmark(
        dataclasses.replace(cfg, svd=("power",), profile=False, quality_layers=0)
    )
    assert "profile" not in without
