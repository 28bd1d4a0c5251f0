"""Stochastic rounding of bf16 weight updates (pure functions).

A bfloat16 weight keeps 8 significant bits: around ``w`` its spacing is ``|w|·2⁻⁷`` or so, and
``w + Δ`` rounded to nearest is ``w`` again whenever ``|Δ|`` is below half of it. Late in
training (small learning rates) or for large weights (norm gains near 1) most updates are that
small and are lost: bf16 training stalls where float32 training still moves. Rounding the exact
sum *stochastically* — up with probability equal to the distance from the lower neighbour, in
units of the spacing — makes the stored weight equal the exact one in expectation, so the small
updates accumulate (Gupta et al. 2015; Zamirai et al. 2020, "Revisiting BFloat16 Training").

The optimizers honour a parameter group's ``weight_rounding`` key (``"nearest"``, the default, or
``"stochastic"``; :data:`WEIGHT_ROUNDINGS`): with ``"stochastic"`` and a bfloat16 parameter,
``GaLoreOptimizer._apply_update`` computes ``w + Δ`` in float32
(:func:`stochastically_rounded`) and stores :func:`stochastic_round` of it. The random bits come from torch's global generator, whose state
every checkpoint keeps, so a resumed run draws the same bits.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from galorekit.names import WEIGHT_ROUNDINGS

__all__ = [
    "WEIGHT_ROUNDINGS",
    "rounds_stochastically",
    "stochastic_round",
    "stochastically_rounded",
]

_LOW_BITS = 1 << 16  # float32 bits below bfloat16's mantissa


def stochastic_round(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """``x`` (float32) rounded to bfloat16 stochastically: to the neighbour of larger magnitude
    with probability (distance from the smaller one) / spacing, so ``E[result] = x``.

    A float32's top 16 bits are its bfloat16 truncation; adding a uniform random integer in
    [0, 2¹⁶) to the bits before truncating rounds the magnitude up with exactly that probability
    (sign-magnitude layout: the sign bit is untouched). Non-finite values round to nearest."""
    if x.dtype != torch.float32:
        raise TypeError(f"stochastic_round takes float32, got {x.dtype}")
    bits = x.view(torch.int32)
    noise = torch.randint(
        0, _LOW_BITS, x.shape, dtype=torch.int32, device=x.device, generator=generator
    )
    rounded = ((bits + noise) & -_LOW_BITS).view(torch.float32).to(torch.bfloat16)
    return torch.where(torch.isfinite(x), rounded, x.to(torch.bfloat16))


@contextlib.contextmanager
def stochastically_rounded(weight: Tensor) -> Iterator[Tensor]:
    """A float32 copy of the bfloat16 ``weight`` to update exactly; on leaving the block it is
    stored back into ``weight`` with :func:`stochastic_round`."""
    exact = weight.float()
    yield exact
    weight.copy_(stochastic_round(exact))


def rounds_stochastically(group: dict[str, Any], weight: Tensor) -> bool:
    """Whether ``group`` asks for stochastic rounding and ``weight`` is bfloat16 (the only dtype
    it applies to: float32 weights need no rounding of their own)."""
    return group.get("weight_rounding", "nearest") == "stochastic" and (
        weight.dtype == torch.bfloat16
    )
