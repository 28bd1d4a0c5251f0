"""Adam's moments across a subspace refresh: every refresh method's basis is aligned with the
previous one (every ``moments`` policy but ``"keep"``), the moments are projected into the new
basis (``"project"``, the default), kept or reset, and a refresh of an unchanged gradient changes
neither the projector nor the trajectory.
Also: the fast refreshes are scale-invariant and fall back to the exact SVD when they fail."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from galorekit import GaLoreAdafactor, GaLoreAdamW, GaLoreAdamW8bit
from galorekit.names import MOMENT_POLICIES, SVD_METHOD_NAMES
from galorekit.projection import Side, compute_projector, refresh_projector
from galorekit.projection import svd as svd_module
from galorekit.projection.alignment import (
    align_factors,
    match_columns,
    rotate_first,
    rotate_second,
    transition,
)
from galorekit.projection.projector import Factors

SHAPES = {"left": (64, 96), "right": (96, 64), "full": (96, 64)}
PROJ_TYPES = {"left": "left", "right": "right", "full": "full"}
RANK = 32  # ≥ the power refresh's min_rank, so that its own step runs


def low_rank_gradient(m: int, n: int, k: int, seed: int = 0) -> torch.Tensor:
    """U diag(σ) Vᵀ with k evenly spaced singular values (1 … 0.3): every refresh method finds
    the same singular vectors, so only the signs and order of the columns can differ."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.linalg.qr(torch.randn(m, k, generator=gen)).Q
    v = torch.linalg.qr(torch.randn(n, k, generator=gen)).Q
    values = torch.linspace(1.0, 0.3, k)
    return (u * values) @ v.t()


def train_constant(
    svd: str, side: str, policy: str, steps: int = 9, gap: int = 2, seed: int = 0
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """A weight trained on one constant gradient; returns it and the projector after each step."""
    m, n = SHAPES[side]
    grad = low_rank_gradient(m, n, RANK + 6, seed)
    w = torch.nn.Parameter(torch.zeros(m, n))
    group = {
        "params": [w],
        "rank": RANK,
        "update_proj_gap": gap,
        "proj_type": PROJ_TYPES[side],
        "svd": svd,
        "moments": policy,
    }
    # eps well above float32 noise: Adam maps a coordinate of R that is ~0 (the off-diagonal of a
    # two-sided projection of an exact low-rank gradient) to ±1 by its rounding noise alone
    opt = GaLoreAdamW([group], lr=1e-2, eps=1e-3)
    projectors = []
    for _ in range(steps):
        w.grad = grad.clone()
        opt.step()
        state = opt.state[w]
        basis = state["proj_right"].t() if "proj_right" in state else state["proj_left"]
        projectors.append(basis.clone())
    return w.detach(), projectors


@pytest.mark.parametrize("side", list(SHAPES))
@pytest.mark.parametrize("svd", SVD_METHOD_NAMES)
@pytest.mark.parametrize("policy", ["align", "project"])
def test_an_unchanged_gradient_keeps_projector_and_trajectory(svd, side, policy) -> None:
    """Refreshing an unchanged gradient must leave the projector where it was (today's QR/eigh
    bases flipped about half of the columns, reversing Adam's first moment there), so a constant
    gradient over several refresh periods trains exactly as the exact SVD does."""
    w, projectors = train_constant(svd, side, policy)
    for step, basis in enumerate(projectors[1:], start=1):
        torch.testing.assert_close(basis, projectors[0], atol=2e-5, rtol=0, msg=f"step {step}")
    reference, _ = train_constant("exact", side, "align")
    torch.testing.assert_close(w, reference, atol=1e-5, rtol=1e-4)


def test_without_alignment_a_fast_refresh_flips_columns() -> None:
    """The control: ``moments="keep"`` (galore-torch's behaviour) with the ``warm`` refresh of an
    unchanged gradient does flip columns, and the trajectory leaves the exact one."""
    _, projectors = train_constant("warm", "right", "keep")
    overlaps = torch.diagonal(projectors[0].t() @ projectors[2])
    assert bool((overlaps < -0.99).any())
    w, _ = train_constant("warm", "right", "keep")
    reference, _ = train_constant("exact", "right", "keep")
    assert (w - reference).abs().max() > 1e-3


def test_match_columns_undoes_a_signed_permutation() -> None:
    gen = torch.Generator().manual_seed(3)
    previous = torch.linalg.qr(torch.randn(40, 6, generator=gen)).Q
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    signs = torch.tensor([1.0, -1.0, -1.0, 1.0, -1.0, 1.0])
    new = previous[:, perm] * signs
    order, found = match_columns(previous, new)
    torch.testing.assert_close(new[:, order] * found, previous)


def test_align_factors_moves_the_projection_with_the_basis() -> None:
    gen = torch.Generator().manual_seed(4)
    g = torch.randn(30, 20, generator=gen)
    for side in (Side.LEFT, Side.RIGHT, Side.FULL):
        previous = compute_projector(g, 5, side, method="exact")
        flipped = Factors(
            previous[0][:, [1, 0, 2, 4, 3]].neg() if previous[0] is not None else None,
            previous[1][[2, 1, 0, 3, 4]] * -1 if previous[1] is not None else None,
        )
        projected = _project(g, side, flipped)
        aligned = align_factors(Factors(flipped.left, flipped.right, projected), side, *previous)
        for new, old in zip(aligned[:2], previous):
            if old is not None:
                torch.testing.assert_close(new, old)
        torch.testing.assert_close(aligned.projected, _project(g, side, aligned))


def _project(g: torch.Tensor, side: Side, factors) -> torch.Tensor:
    left, right = factors[0], factors[1]
    out = g
    if side in (Side.LEFT, Side.FULL):
        out = left.t() @ out
    if side in (Side.RIGHT, Side.FULL):
        out = out @ right.t()
    return out


def test_rotations_follow_a_signed_permutation_exactly() -> None:
    gen = torch.Generator().manual_seed(5)
    previous = torch.linalg.qr(torch.randn(20, 4, generator=gen)).Q
    new = previous[:, [2, 0, 3, 1]] * torch.tensor([1.0, -1.0, 1.0, -1.0])
    c = transition(previous, new)
    m = torch.randn(4, 7, generator=gen)
    v = torch.rand(4, 7, generator=gen)
    # the moment of new coordinate j is the old coordinate it came from, re-signed
    torch.testing.assert_close(rotate_first(m, c, None), (new.t() @ previous) @ m)
    torch.testing.assert_close(rotate_first(m, c, None)[0], m[2])
    torch.testing.assert_close(rotate_first(m, c, None)[1], -m[0])
    torch.testing.assert_close(rotate_second(v, c, None)[1], v[0])
    torch.testing.assert_close(rotate_first(m.t(), None, c)[:, 3], -m.t()[:, 1])
    assert bool((rotate_second(v, torch.randn(4, 4, generator=gen), None) >= 0).all())


@pytest.mark.parametrize("cls", [GaLoreAdamW, GaLoreAdamW8bit, GaLoreAdafactor])
@pytest.mark.parametrize("policy", MOMENT_POLICIES)
def test_every_policy_resumes_bit_identically(cls, policy, tmp_path) -> None:
    """Refreshes after a resume align with (or project onto) the loaded projector."""
    gen = torch.Generator().manual_seed(6)
    grads = [torch.randn(80, 72, generator=gen) for _ in range(7)]
    kwargs = {"lr": 1e-2}

    def make() -> tuple[torch.nn.Parameter, torch.optim.Optimizer]:
        w = torch.nn.Parameter(torch.ones(80, 72))
        group = {"params": [w], "rank": 8, "update_proj_gap": 3, "moments": policy, "svd": "warm"}
        return w, cls([group], **kwargs)

    w, opt = make()
    for g in grads:
        w.grad = g.clone()
        opt.step()
    w2, opt2 = make()
    for g in grads[:4]:
        w2.grad = g.clone()
        opt2.step()
    torch.save(opt2.state_dict(), tmp_path / "opt.pt")
    w3, opt3 = make()
    with torch.no_grad():
        w3.copy_(w2)
    opt3.load_state_dict(torch.load(tmp_path / "opt.pt", weights_only=True))
    for g in grads[4:]:
        w3.grad = g.clone()
        opt3.step()
    assert torch.equal(w3, w)


def test_reset_zeroes_the_moments_and_restarts_bias_correction() -> None:
    gen = torch.Generator().manual_seed(7)
    w = torch.nn.Parameter(torch.zeros(40, 30))
    group = {"params": [w], "rank": 4, "update_proj_gap": 3, "moments": "reset", "svd": "exact"}
    opt = GaLoreAdamW([group], lr=1e-2, betas=(0.9, 0.999))
    for _ in range(3):
        w.grad = torch.randn(40, 30, generator=gen)
        opt.step()
    grad = torch.randn(40, 30, generator=gen)
    w.grad = grad.clone()
    opt.step()  # step 4 refreshes: the moments start again from this gradient alone
    state = opt.state[w]
    r = grad @ state["proj_right"].t()
    torch.testing.assert_close(state["exp_avg"], 0.1 * r)
    torch.testing.assert_close(state["exp_avg_sq"], 0.001 * r * r)
    assert state["moment_origin"] == 3 and state["step"] == 4


def test_project_keeps_moments_of_directions_that_persist() -> None:
    """With ``project``, moments along a direction the new subspace still holds survive even when
    the refresh reorders and flips the basis (an exact SVD of a rotated spectrum)."""
    gen = torch.Generator().manual_seed(8)
    m, n, k = 50, 40, 4
    u = torch.linalg.qr(torch.randn(m, k, generator=gen)).Q
    v = torch.linalg.qr(torch.randn(n, k, generator=gen)).Q
    first = (u * torch.tensor([4.0, 3.0, 2.0, 1.0])) @ v.t()
    second = (u * torch.tensor([1.0, 2.0, 3.0, 4.0])) @ v.t()  # same subspace, order reversed
    results = {}
    for policy in ("keep", "project"):
        w = torch.nn.Parameter(torch.zeros(m, n))
        group = {"params": [w], "rank": k, "update_proj_gap": 2, "moments": policy}
        opt = GaLoreAdamW([{**group, "svd": "exact"}], lr=1e-2)
        for grad in (first, first, second):
            w.grad = grad.clone()
            opt.step()
        results[policy] = opt.state[w]
    state = results["project"]
    basis = state["proj_right"]  # the new basis, ordered for the second gradient
    # the first moment, mapped back to the full space, is still 0.9·0.1·first + 0.1·second
    # (β₁ = 0.9 over three steps) — the same matrix whatever the basis's order and signs
    expected = (0.9 * 0.9 * 0.1 + 0.9 * 0.1) * first + 0.1 * second
    torch.testing.assert_close(state["exp_avg"] @ basis, expected, atol=1e-5, rtol=1e-4)
    kept = results["keep"]
    assert (kept["exp_avg"] @ kept["proj_right"] - expected).abs().max() > 1e-2


@pytest.mark.parametrize("cls", [GaLoreAdamW8bit, GaLoreAdafactor])
def test_project_runs_for_quantized_and_factored_moments(cls) -> None:
    gen = torch.Generator().manual_seed(9)
    w = torch.nn.Parameter(torch.zeros(300, 200))
    group = {"params": [w], "rank": 32, "update_proj_gap": 2, "moments": "project"}
    opt = cls([group], lr=1e-3)
    before = None
    for _ in range(5):
        w.grad = torch.randn(300, 200, generator=gen)
        opt.step()
        shapes = {k: tuple(v.shape) for k, v in opt.state[w].items() if torch.is_tensor(v)}
        assert before is None or shapes == before
        before = shapes
    assert bool(torch.isfinite(w).all()) and w.abs().sum() > 0


# ---- scale invariance and the exact fallback ------------------------------------------------------
def _energy(g: torch.Tensor, left, right) -> float:
    g = g.double() / g.double().abs().max()
    r = g
    if left is not None:
        r = left.double().t() @ r
    if right is not None:
        r = r @ right.double().t()
    return float(r.square().sum() / g.square().sum())


def _decaying(m: int, n: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(10)
    k = min(m, n)
    values = 1.0 / torch.arange(1, k + 1, dtype=torch.float32)
    u = torch.linalg.qr(torch.randn(m, k, generator=gen)).Q
    v = torch.linalg.qr(torch.randn(n, k, generator=gen)).Q
    return (u * values) @ v.t() + 0.002 * torch.randn(m, n, generator=gen)


@pytest.mark.parametrize("scale", [1e-30, 1e-22, 1e-10, 1.0, 1e10, 1e20, 1e30])
@pytest.mark.parametrize("method", ["randomized", "warm", "power"])
def test_fast_refreshes_are_scale_invariant(method: str, scale: float, monkeypatch) -> None:
    # a fresh once-per-method record: an earlier fallback must not hide this one's warning
    monkeypatch.setattr(svd_module, "_FALLBACK_WARNED", set())
    base = _decaying(160, 120)
    g = (base.double() * scale).float()
    exact = _energy(g, *compute_projector(g, RANK, Side.RIGHT, method="exact"))
    previous = compute_projector(
        (base.double() * scale * 1.01).float(), RANK, Side.RIGHT, method="exact"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback: the iteration itself must work
        left, right = compute_projector(
            g,
            RANK,
            Side.RIGHT,
            method=method,
            previous_left=previous[0],
            previous_right=previous[1],
        )
    assert bool(torch.isfinite(right).all())
    assert _energy(g, left, right) >= 0.99 * exact


def test_a_failing_fast_refresh_falls_back_to_exact_once(monkeypatch) -> None:
    def broken(*args, **kwargs):
        raise torch.linalg.LinAlgError("simulated: eigh did not converge")

    monkeypatch.setattr(svd_module, "warm_factors", broken)
    monkeypatch.setattr(svd_module, "_FALLBACK_WARNED", set())
    g = _decaying(100, 80)
    with pytest.warns(RuntimeWarning, match="used the exact SVD instead"):
        factors = refresh_projector(g, 8, Side.RIGHT, method="warm")
    exact = refresh_projector(g, 8, Side.RIGHT, method="exact")
    torch.testing.assert_close(factors.right, exact.right)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per method: the second failure is silent
        refresh_projector(g, 8, Side.RIGHT, method="warm")
    assert math.isfinite(_energy(g, None, factors.right))


def test_create_optimizer_passes_moments_and_state_dtype() -> None:
    from galorekit.optim import create_optimizer

    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Linear(16, 4))
    opt = create_optimizer(
        model,
        "galore_adamw",
        lr=1e-2,
        rank=4,
        moments="project",
        state_dtype="float32",
        target_modules="all-linear",
    )
    galore = next(g for g in opt.param_groups if "rank" in g)
    assert galore["moments"] == "project"
    assert all(g["state_dtype"] == "float32" for g in opt.param_groups)


def test_column_matching_is_the_greedy_matching() -> None:
    """The vectorised rounds pair columns exactly as greedy matching does (strongest pair
    first), on random overlaps and on noisy permutations where argmax collides."""
    from galorekit.projection.alignment import _greedy_match

    def greedy(strength: torch.Tensor) -> torch.Tensor:
        r = strength.shape[0]
        order, used = [-1] * r, set()
        for index in torch.argsort(strength.flatten(), descending=True).tolist():
            old, new = divmod(index, r)
            if order[old] < 0 and new not in used:
                order[old] = new
                used.add(new)
        return torch.tensor(order)

    gen = torch.Generator().manual_seed(11)
    for r in (3, 8, 40, 130):
        for trial in range(6):
            strength = torch.rand(r, r, generator=gen)
            if trial % 2:
                perm = torch.randperm(r, generator=gen)
                strength = 0.9 * torch.eye(r)[perm] + 0.3 * strength
            assert torch.equal(_greedy_match(strength), greedy(strength)), (r, trial)


def test_projected_second_moment_keeps_adams_bound() -> None:
    """LDAdam's transfer keeps |m| ≤ √v (Adam's step bound) where (C∘C)·V alone lets a direction
    that combines consistent old momenta reach |m|/√v = √r."""
    r = 8
    m, v = torch.ones(r, 5), torch.ones(r, 5)  # every coordinate: |m| = √v
    mixing = torch.linalg.qr(torch.cat([torch.ones(r, 1), torch.randn(r, r - 1)], 1)).Q.t()
    rotated_m = rotate_first(m, mixing, None)
    naive = rotate_second(v, mixing, None)
    assert float((rotated_m.abs() / naive.sqrt()).max()) == pytest.approx(math.sqrt(r), rel=1e-4)
    ldadam = rotate_second(v, mixing, None, first=m)
    assert bool((rotated_m.abs() <= ldadam.sqrt() * (1 + 1e-5) + 1e-6).all())
    # zero-mean coordinates: the two agree
    torch.testing.assert_close(rotate_second(v, mixing, None, first=torch.zeros(r, 5)), naive)


@pytest.mark.parametrize("cls", [GaLoreAdamW8bit, GaLoreAdafactor])
def test_project_moves_quantized_and_factored_moments_with_the_basis(cls) -> None:
    """A refresh to a basis rotated inside the same subspace (which no re-ordering or re-signing
    undoes) carries the 8-bit moments (de-quantized, rotated by LDAdam's rule, quantized again)
    and Adafactor's column statistics (the side that rotates) into the new coordinates."""
    gen = torch.Generator().manual_seed(12)
    m, n, k = 300, 240, 4
    u = torch.linalg.qr(torch.randn(m, k, generator=gen)).Q
    v = torch.linalg.qr(torch.randn(n, k, generator=gen)).Q
    turn = torch.linalg.qr(torch.randn(k, k, generator=gen)).Q
    values = torch.tensor([4.0, 3.0, 2.0, 1.0])
    first, second = (u * values) @ v.t(), (u * values) @ (v @ turn).t()
    w = torch.nn.Parameter(torch.zeros(m, n))
    group = {"params": [w], "rank": k, "update_proj_gap": 2, "svd": "exact", "moments": "project"}
    extra = {"min_8bit_size": 0} if cls is GaLoreAdamW8bit else {}
    opt = cls([group], lr=1e-3, **extra)
    for grad in (first, first * 0.5):
        w.grad = grad.clone()
        opt.step()
    state, group = opt.state[w], opt.param_groups[0]
    old_basis = state["proj_right"].clone()
    if cls is GaLoreAdamW8bit:
        before = [opt._moment(state, i) for i in (1, 2)]
        assert state["state1"].dtype == torch.uint8
    else:
        before = [state["exp_avg_sq_row"].clone(), state["exp_avg_sq_col"].clone()]
    opt._project_grad(w, second, group, state)  # the refresh alone, no moment update
    c = transition(old_basis.t(), state["proj_right"].t())
    assert (c - torch.eye(k)).abs().max() > 0.1  # a real rotation
    if cls is GaLoreAdamW8bit:
        weight = opt._mean_weight(state, group)
        expected = [
            rotate_first(before[0], None, c),
            rotate_second(before[1], None, c, first=before[0], mean_weight=weight),
        ]
        for index, want in zip((1, 2), expected):  # within the 8-bit quantization error
            got = opt._moment(state, index)
            torch.testing.assert_close(got, want, rtol=0.05, atol=0.02 * float(want.abs().max()))
    else:
        torch.testing.assert_close(state["exp_avg_sq_row"], before[0])
        want = rotate_second(before[1].unsqueeze(0), None, c).squeeze(0)
        torch.testing.assert_close(state["exp_avg_sq_col"], want)
