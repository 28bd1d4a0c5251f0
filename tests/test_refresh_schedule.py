"""The refresh schedule (stagger) and the cheap non-finite pre-check of GaLore optimizers."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from galorekit.optim.galore_adamw import GaLoreAdamW
from galorekit.projection import NonFiniteGradientError


def _weights(n: int, seed: int = 0) -> list[nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    return [nn.Parameter(torch.randn(12, 10, generator=gen)) for _ in range(n)]


def _refresh_steps(stagger: bool, n: int = 6, gap: int = 4, steps: int = 13) -> list[list[int]]:
    params = _weights(n)
    opt = GaLoreAdamW(
        [{"params": params, "rank": 3, "update_proj_gap": gap, "stagger": stagger}], lr=1e-3
    )
    seen: list[list[int]] = [[] for _ in params]
    gen = torch.Generator().manual_seed(1)
    for step in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        opt.step()
        for i, p in enumerate(params):
            if opt.state[p]["proj_refresh_step"] == step:
                seen[i].append(step)
    return seen


def test_without_stagger_every_matrix_refreshes_together() -> None:
    assert _refresh_steps(False) == [[0, 4, 8, 12]] * 6


def test_stagger_spreads_the_refreshes() -> None:
    seen = _refresh_steps(True)
    # offsets ⌊i·4/6⌋ = 0, 0, 1, 2, 2, 3: matrix i refreshes at steps ≡ -offset (mod 4)
    assert seen == [
        [0, 4, 8, 12],
        [0, 4, 8, 12],
        [0, 3, 7, 11],
        [0, 2, 6, 10],
        [0, 2, 6, 10],
        [0, 1, 5, 9],
    ]
    per_step = [sum(step in s for s in seen) for step in range(1, 13)]
    assert max(per_step) == 2  # ⌈6/4⌉, instead of 6 on the same step


def test_stagger_survives_a_resume() -> None:
    params = _weights(5)
    opt = GaLoreAdamW(
        [{"params": params, "rank": 3, "update_proj_gap": 3, "stagger": True}], lr=1e-2
    )
    gen = torch.Generator().manual_seed(2)
    grads = [[torch.randn(12, 10, generator=gen) for _ in params] for _ in range(8)]
    for g in grads[:4]:
        for p, gi in zip(params, g):
            p.grad = gi
        opt.step()
    buf = io.BytesIO()
    torch.save({"w": [p.detach().clone() for p in params], "o": opt.state_dict()}, buf)
    for g in grads[4:]:
        for p, gi in zip(params, g):
            p.grad = gi
        opt.step()
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    params2 = [nn.Parameter(w) for w in saved["w"]]
    opt2 = GaLoreAdamW(
        [{"params": params2, "rank": 3, "update_proj_gap": 3, "stagger": True}], lr=1e-2
    )
    opt2.load_state_dict(saved["o"])
    for g in grads[4:]:
        for p, gi in zip(params2, g):
            p.grad = gi
        opt2.step()
    for a, b in zip(params, params2):
        assert torch.equal(a, b)


def test_stagger_must_be_a_bool() -> None:
    with pytest.raises(ValueError, match="stagger"):
        GaLoreAdamW([{"params": _weights(1), "rank": 2, "stagger": "yes"}])


def test_precheck_still_names_the_bad_gradient_and_lets_overflowing_sums_pass() -> None:
    params = _weights(3)
    opt = GaLoreAdamW([{"params": params, "rank": 2, "param_names": ["a", "b", "c"]}], lr=1e-3)
    for p in params:
        p.grad = torch.full_like(p, 3e38)  # finite, but the sum overflows
    opt.step()
    params[1].grad[0, 0] = float("nan")
    with pytest.raises(NonFiniteGradientError, match="gradient of b has 1 non-finite"):
        opt.step()
