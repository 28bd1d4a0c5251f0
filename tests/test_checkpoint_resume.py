"""Optimizer checkpoints: weights_only loading, bit-identical resume, and loading onto bf16."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from galorekit import GaLoreAdafactor, GaLoreAdamW, GaLoreAdamW8bit
from galorekit.projection import Side

GAP = 3  # refreshes at steps 0, 3, 6 …
K = 4  # resume after 4 steps: one refresh (3) since the first before it, one (6) after it

# name → optimizer factory; the GaLore matrices are 256×64 and 32×256 at rank 16, so both low-rank
# moments have 4096 elements: 8-bit in GaLoreAdamW8bit (its biases stay 32-bit)
OPTIMIZERS: dict[str, Callable[[list], torch.optim.Optimizer]] = {
    "GaLoreAdamW": lambda groups: GaLoreAdamW(groups, lr=1e-2, weight_decay=0.01),
    "GaLoreAdamW8bit": lambda groups: GaLoreAdamW8bit(groups, lr=1e-2, weight_decay=0.01),
    "GaLoreAdafactor-lr": lambda groups: GaLoreAdafactor(groups, lr=1e-2, weight_decay=0.01),
    "GaLoreAdafactor-relative-beta1": lambda groups: GaLoreAdafactor(groups, beta1=0.9),
}


def make_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 256), nn.Tanh(), nn.Linear(256, 32))


def make_optimizer(name: str, model: nn.Module) -> torch.optim.Optimizer:
    named = list(model.named_parameters())
    groups = [
        {"params": [(n, p) for n, p in named if p.dim() == 1]},
        {
            "params": [(n, p) for n, p in named if p.dim() == 2],
            "rank": 16,
            "update_proj_gap": GAP,
            "scale": 0.25,
        },
    ]
    return OPTIMIZERS[name](groups)


def batch(step: int) -> tuple[Tensor, Tensor]:
    """The data of step ``step`` (independent of how the run was split)."""
    g = torch.Generator().manual_seed(1000 + step)
    return torch.randn(16, 64, generator=g), torch.randn(16, 32, generator=g)


def train(model: nn.Module, opt: torch.optim.Optimizer, start: int, steps: int) -> None:
    dtype = next(model.parameters()).dtype
    for step in range(start, start + steps):
        x, y = batch(step)
        loss = nn.functional.mse_loss(model(x.to(dtype)), y.to(dtype))
        opt.zero_grad()
        loss.backward()
        opt.step()


def galore_states(opt: torch.optim.Optimizer) -> list[dict[str, Any]]:
    return [opt.state[p] for p in opt.param_groups[1]["params"]]


def save(tmp_path: Path, model: nn.Module, opt: torch.optim.Optimizer) -> tuple[Path, Path]:
    model_path, opt_path = tmp_path / "model.pt", tmp_path / "optimizer.pt"
    torch.save(model.state_dict(), model_path)
    torch.save(opt.state_dict(), opt_path)
    return model_path, opt_path


def assert_plain_data(value: Any, where: str = "state_dict") -> None:
    """Only tensors, plain numbers, strings and containers of them."""
    if isinstance(value, dict):
        for k, v in value.items():
            assert isinstance(k, (str, int)), f"{where}: key {k!r}"
            assert_plain_data(v, f"{where}[{k!r}]")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            assert_plain_data(v, f"{where}[{i}]")
    else:
        assert value is None or type(value) in (Tensor, int, float, str, bool), (
            f"{where} holds a {type(value).__name__}"
        )


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_resume_is_bit_identical(name: str, tmp_path: Path) -> None:
    straight = make_model(0)
    straight_opt = make_optimizer(name, straight)
    train(straight, straight_opt, 0, 2 * K)

    first = make_model(0)
    first_opt = make_optimizer(name, first)
    train(first, first_opt, 0, K)
    assert all(s["proj_refresh_step"] == GAP for s in galore_states(first_opt))
    model_path, opt_path = save(tmp_path, first, first_opt)

    resumed = make_model(12345)  # different initial weights: everything must come from the files
    resumed_opt = make_optimizer(name, resumed)
    resumed.load_state_dict(torch.load(model_path, weights_only=True))
    saved = torch.load(opt_path, weights_only=True)
    assert_plain_data(saved)
    resumed_opt.load_state_dict(saved)
    train(resumed, resumed_opt, K, K)

    # a refresh happened after the resume point too
    assert all(s["proj_refresh_step"] == 2 * GAP for s in galore_states(resumed_opt))
    for (n, a), b in zip(straight.named_parameters(), resumed.parameters()):
        assert torch.equal(a, b), f"{n} differs after resume"
    for p_a, p_b in zip(straight.parameters(), resumed.parameters()):
        state_a, state_b = straight_opt.state[p_a], resumed_opt.state[p_b]
        assert state_a.keys() == state_b.keys()
        for key, value in state_a.items():
            if isinstance(value, Tensor):
                assert value.dtype == state_b[key].dtype, key
                assert torch.equal(value, state_b[key]), key
            else:
                assert value == state_b[key], key


def test_8bit_states_stay_8bit_after_load(tmp_path: Path) -> None:
    model = make_model(0)
    opt = make_optimizer("GaLoreAdamW8bit", model)
    train(model, opt, 0, 2)
    _, opt_path = save(tmp_path, model, opt)
    fresh_opt = make_optimizer("GaLoreAdamW8bit", model)
    fresh_opt.load_state_dict(torch.load(opt_path, weights_only=True))
    for state in galore_states(fresh_opt):
        assert state["state1"].dtype == state["state2"].dtype == torch.uint8
        assert state["absmax1"].dtype == state["absmax2"].dtype == torch.float32
        assert state["qmap1"].dtype == torch.float32
    for p in fresh_opt.param_groups[0]["params"]:  # the biases: below the 8-bit threshold
        assert fresh_opt.state[p]["state1"].dtype == torch.float32


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_load_onto_bf16_parameters(name: str, tmp_path: Path) -> None:
    model = make_model(0)
    opt = make_optimizer(name, model)
    train(model, opt, 0, K)
    model_path, opt_path = save(tmp_path, model, opt)
    saved_states = [dict(s) for s in galore_states(opt)]

    bf16 = make_model(1).to(torch.bfloat16)
    bf16.load_state_dict(torch.load(model_path, weights_only=True))
    bf16_opt = make_optimizer(name, bf16)
    bf16_opt.load_state_dict(torch.load(opt_path, weights_only=True))

    for state, before in zip(galore_states(bf16_opt), saved_states):
        assert state["step"] == K and state["proj_side"] == before["proj_side"]
        key = "proj_right" if state["proj_side"] == Side.RIGHT else "proj_left"
        assert state[key].dtype == torch.bfloat16  # projectors follow the parameter dtype
        torch.testing.assert_close(state[key], before[key].bfloat16())
        if name == "GaLoreAdamW":
            assert state["exp_avg"].dtype == state["exp_avg_sq"].dtype == torch.bfloat16
        elif name == "GaLoreAdamW8bit":
            assert state["state1"].dtype == torch.uint8
            assert state["absmax1"].dtype == torch.float32
            assert torch.equal(state["state1"], before["state1"])
        else:
            # float32 statistics for bf16 parameters, as transformers.Adafactor keeps them
            assert state["exp_avg_sq_row"].dtype == torch.float32
            torch.testing.assert_close(state["exp_avg_sq_row"], before["exp_avg_sq_row"])

    train(bf16, bf16_opt, K, 3)  # includes the refresh at step 6, in bf16
    for n, p in bf16.named_parameters():
        assert p.dtype == torch.bfloat16 and torch.isfinite(p).all(), n
    for state in galore_states(bf16_opt):
        assert state["step"] == K + 3 and state["proj_refresh_step"] == 2 * GAP
    x, y = batch(0)
    with torch.no_grad():
        loss32 = float(nn.functional.mse_loss(model(x), y))
        loss16 = float(nn.functional.mse_loss(bf16(x.bfloat16()).float(), y))
    assert loss16 < 2 * loss32, "the bf16 run went astray after loading"
