"""Stochastic rounding of bf16 weight updates: unbiased, exact where exact, honoured by every
galorekit optimizer (GaLore and plain groups, layer-wise), refused where it cannot apply."""

from __future__ import annotations

import pytest
import torch

from galorekit.methods import MethodConfig
from galorekit.optim import create_optimizer
from galorekit.optim.rounding import rounds_stochastically, stochastic_round


def test_rounds_to_the_two_neighbours_without_bias():
    torch.manual_seed(0)
    x = torch.full((100_000,), 1.0 + 2**-9)  # a quarter of the way from 1 to 1 + 2^-7
    r = stochastic_round(x).float()
    assert set(r.unique().tolist()) == {1.0, 1.0 + 2**-7}
    assert r.mean().item() == pytest.approx(x[0].item(), abs=6e-5)  # 5 sigma
    assert stochastic_round(-x).float().mean().item() == pytest.approx(
        -x[0].item(), abs=6e-5
    )  # 5 sigma
    # nearest rounding of the same value is biased: always 1.0
    assert x.to(torch.bfloat16).float().unique().tolist() == [1.0]


def test_representable_and_special_values_are_kept():
    exact = torch.tensor([0.0, -0.0, 1.0, -2.5, 3.0e38, 1e-40]).to(torch.bfloat16).float()
    assert torch.equal(stochastic_round(exact).float(), exact)
    special = stochastic_round(torch.tensor([float("inf"), -float("inf"), float("nan")]))
    assert special[0] == float("inf") and special[1] == -float("inf") and special[2].isnan()
    with pytest.raises(TypeError, match="float32"):
        stochastic_round(torch.ones(2, dtype=torch.bfloat16))


def _model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 32, bias=False), torch.nn.LayerNorm(32))
    return model.to(torch.bfloat16)


@pytest.mark.parametrize(
    "name,layerwise",
    [
        ("adamw", False),
        ("galore_adamw", False),
        ("galore_adamw8bit", True),
        ("galore_adafactor", False),
    ],
)
def test_small_updates_survive_only_with_stochastic_rounding(name, layerwise):
    """lr 1e-4 moves the LayerNorm gains (1.0, bf16 spacing 2^-7) by far less than half the
    spacing: rounded to nearest they never move; stochastically they drift as fp32's would."""
    moved = {}
    for rounding in ("nearest", "stochastic"):
        model = _model()
        extra = (
            {"rank": 4, "update_proj_gap": 5, "target_modules": ["0"]} if "galore" in name else {}
        )
        if rounding == "stochastic":
            extra["weight_rounding"] = rounding
        opt = create_optimizer(model, name, lr=1e-4, layerwise=layerwise, **extra)
        if layerwise:  # layer-wise: the update happens inside backward
            assert all(g.get("weight_rounding", "nearest") == rounding for g in opt.param_groups)
        gain = model[1].weight
        start = gain.detach().clone()
        for _ in range(30):
            x = torch.randn(8, 32, dtype=torch.bfloat16)
            model(x).square().mean().backward()
            opt.step()
            opt.zero_grad()
        moved[rounding] = (gain.detach() != start).float().mean().item()
    assert moved["nearest"] == 0.0
    assert moved["stochastic"] > 0.1


def test_applies_to_bf16_weights_only():
    group = {"weight_rounding": "stochastic"}
    assert rounds_stochastically(group, torch.ones(1, dtype=torch.bfloat16))
    assert not rounds_stochastically(group, torch.ones(1))
    assert not rounds_stochastically({}, torch.ones(1, dtype=torch.bfloat16))


def test_method_config_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="valid: nearest, stochastic"):
        MethodConfig(weight_rounding="up")
    with pytest.raises(ValueError, match="rounds its updates to nearest"):
        MethodConfig(method="galore_torch_adamw", weight_rounding="stochastic")
