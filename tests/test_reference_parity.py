"""Same trajectory as the reference implementation galore-torch 1.0 (so that its users can switch by
changing one import). galore-torch is a test dependency: CI installs it, and its absence is a failure,
not a skip."""

from __future__ import annotations

import warnings
from types import ModuleType
from typing import Any

import pytest
import torch
from torch import nn

from galorekit import GaLoreAdafactor, GaLoreAdamW

STEPS, GAP = 10, 4  # refreshes at steps 0, 4 and 8


def reference() -> ModuleType:
    """galore_torch, or a test failure (never a skip) saying how to install it."""
    try:
        import galore_torch
    except ImportError as err:
        pytest.fail(
            f"galore-torch is required for the reference-parity tests ({err}); "
            "install it with `pip install galore-torch==1.0` (CI does)",
            pytrace=False,
        )
    return galore_torch


def regression_batch(step: int, n_in: int, n_out: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(500 + step)
    return torch.randn(32, n_in, generator=g), torch.randn(32, n_out, generator=g)


def train_both(ours_cls, ref_cls, shape: tuple[int, int], group: dict[str, Any], **kwargs: Any):
    """Two identical bias-free linear layers (weight m×n = shape), trained on the same batches."""
    m, n = shape
    torch.manual_seed(0)
    ours = nn.Linear(n, m, bias=False)
    ref = nn.Linear(n, m, bias=False)
    ref.load_state_dict(ours.state_dict())
    initial = ours.weight.detach().clone()
    ours_opt = ours_cls([{"params": [ours.weight], **group}], **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # galore-torch's deprecation notice
        ref_opt = ref_cls([{"params": [ref.weight], **group}], **kwargs)
    for step in range(STEPS):
        x, y = regression_batch(step, n, m)
        for layer, opt in ((ours, ours_opt), (ref, ref_opt)):
            loss = nn.functional.mse_loss(layer(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert not torch.equal(ours.weight, initial), "the weight did not train"
    return ours.weight.detach(), ref.weight.detach(), ours_opt.state[ours.weight]


CASES = [
    ((24, 16), "std", 4),  # m > n: right projection
    ((16, 24), "std", 4),  # m < n: left projection
    ((16, 16), "std", 4),  # m == n: ties go right, as galore-torch
    ((24, 16), "reverse_std", 4),  # left projection of a tall matrix, R 4×16
    ((16, 24), "reverse_std", 4),  # right projection of a wide matrix, R 16×4
]
IDS = [f"{m}x{n}-{pt}" for (m, n), pt, _ in CASES]
EXPECTED_SIDE_KEY = ["proj_right", "proj_left", "proj_right", "proj_left", "proj_right"]


@pytest.mark.parametrize(("case", "side_key"), list(zip(CASES, EXPECTED_SIDE_KEY)), ids=IDS)
def test_galore_adamw_matches_galore_torch(case, side_key: str) -> None:
    galore_torch = reference()
    shape, proj_type, rank = case
    group = {
        "rank": rank,
        "update_proj_gap": GAP,
        "scale": 0.25,
        "proj_type": proj_type,
        "svd": "exact",
        "moments": "keep",  # galore-torch keeps the moments and LAPACK's column signs
    }
    ours, ref, state = train_both(
        GaLoreAdamW,
        lambda params, **kw: galore_torch.GaLoreAdamW(params, no_deprecation_warning=True, **kw),
        shape,
        group,
        lr=0.01,
        betas=(0.9, 0.999),
        eps=1e-6,
        weight_decay=0.01,
    )
    assert side_key in state and state["proj_refresh_step"] == 8
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"lr": 0.01, "relative_step": False, "scale_parameter": False},
        {"lr": None, "relative_step": True, "weight_decay": 0.01},
        {"lr": 0.01, "relative_step": False, "beta1": 0.9},
    ],
    ids=["lr", "relative-step", "beta1"],
)
@pytest.mark.parametrize(("case", "side_key"), list(zip(CASES[:3], EXPECTED_SIDE_KEY)), ids=IDS[:3])
def test_galore_adafactor_matches_galore_torch(case, side_key, kwargs) -> None:
    galore_torch = reference()
    shape, proj_type, rank = case
    group = {
        "rank": rank,
        "update_proj_gap": GAP,
        "scale": 0.25,
        "proj_type": proj_type,
        "svd": "exact",
        "moments": "keep",  # galore-torch keeps the moments and LAPACK's column signs
    }
    ours, ref, state = train_both(
        GaLoreAdafactor, galore_torch.GaLoreAdafactor, shape, group, **kwargs
    )
    assert side_key in state and state["proj_refresh_step"] == 8
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
