"""Magnitude pruning of optimizer states, ReLoRA's optimizer reset.

Lives here, not in the loop, so that loops never reach into an optimizer's state.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

# bitsandbytes keeps these next to its quantized states; they are scales and maps, not moments
_BNB_METADATA = {
    "qmap1",
    "qmap2",
    "absmax1",
    "absmax2",
    "max1",
    "max2",
    "new_max1",
    "new_max2",
    "gnorm_vec",
    "unorm_vec",
}
_BNB_BLOCKSIZES = (64, 128, 256, 512, 1024, 2048, 4096)


def _block_scales(absmax: torch.Tensor, n: int) -> torch.Tensor:
    """Per-element scale of a blockwise-quantized state of ``n`` entries."""
    blocks = absmax.numel()
    if blocks == 1:
        return absmax.reshape(1).expand(n)
    for size in _BNB_BLOCKSIZES:
        if math.ceil(n / size) == blocks:
            return absmax.reshape(-1).repeat_interleave(size)[:n]
    raise ValueError(f"cannot infer the block size of a {n}-entry state with {blocks} scales")


def _is_quantized(key: str, value: torch.Tensor) -> bool:
    return value.dtype == torch.uint8 and key in ("state1", "state2")


def _zero_code(state: dict, key: str) -> int:
    qmap = state.get(f"qmap{key[-1]}")
    if qmap is None:
        raise ValueError(f"8-bit state {key!r} has no quantization map 'qmap{key[-1]}'")
    zero = int(qmap.abs().argmin())
    if qmap[zero] != 0:
        raise ValueError(f"the quantization map of {key!r} has no exact zero; cannot prune it")
    return zero


def _magnitude(state: dict, key: str) -> torch.Tensor:
    """Flat magnitudes of a state tensor (8-bit states: of the values their codes stand for)."""
    value = state[key]
    if not _is_quantized(key, value):
        return value.detach().abs().reshape(-1).float()
    i = key[-1]
    flat = value.reshape(-1)
    magnitude = state[f"qmap{i}"][flat.long()].abs().float()
    absmax = state.get(f"absmax{i}")
    if absmax is not None:  # blockwise; otherwise one scale for the tensor, irrelevant to ranking
        magnitude = magnitude * _block_scales(absmax.float(), flat.numel())
    return magnitude


@torch.no_grad()
def _zero_entries_(state: dict, key: str, mask: torch.Tensor) -> None:
    """Set the masked (flat) entries to zero in place; 8-bit states get the code of 0.0."""
    value = state[key]
    fill = _zero_code(state, key) if _is_quantized(key, value) else 0
    value.masked_fill_(mask.view(value.shape), fill)


def _prunable_keys(state: dict, p: torch.Tensor, optimizer_name: str) -> list[str]:
    keys = []
    for key, value in state.items():
        if not torch.is_tensor(value) or value.dim() == 0 or key in _BNB_METADATA:
            continue
        if _is_quantized(key, value) or (value.is_floating_point() and value.shape == p.shape):
            keys.append(key)
        else:
            raise ValueError(
                f"cannot prune optimizer state {key!r} ({value.dtype}, shape "
                f"{tuple(value.shape)}) of a parameter of shape {tuple(p.shape)} in "
                f"{optimizer_name}: supported are states shaped like the parameter "
                "(torch Adam/AdamW/SGD) and bitsandbytes 8-bit states"
            )
    return keys


def prune_optimizer_state(
    optimizer: torch.optim.Optimizer, params: Iterable[torch.nn.Parameter], ratio: float
) -> float:
    """Zero the ``ratio`` fraction of smallest-magnitude entries of the optimizer states of ``params``.

    Magnitude pruning as in ReLoRA's optimizer reset, in place, per parameter: the entries whose
    first moment (Adam's ``exp_avg``, bitsandbytes' ``state1``; else the only state, e.g. SGD
    momentum) is among the ``ratio`` smallest in magnitude are zeroed in *every* state of that
    parameter, so the moments stay paired (ReLoRA's code prunes each moment on its own; an entry
    keeping its momentum without its second moment then gets an update of ``lr·m/eps`` — with
    B = 0 after a reset, the gradient of A is exactly zero and such entries blow up). Step
    counters are kept. ``ratio=1`` zeroes the states (a full reset); ``ratio=0`` changes nothing. Supports the torch.optim optimizers whose states
    are shaped like their parameter (Adam, AdamW, SGD, ...) and bitsandbytes' 8-bit optimizers
    (pruned in the quantized domain: pruned entries get the code of 0.0, the others keep theirs).
    Parameters without state yet are skipped. Returns the fraction of the states' entries that
    were pruned.

    Raises ``ValueError`` for a ratio outside [0, 1], a parameter the optimizer does not hold, or a
    state layout it cannot prune (e.g. Adafactor's factored second moment).
    """
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"prune ratio must be in [0, 1], got {ratio!r}")
    states = getattr(optimizer, "state", None)
    groups = getattr(optimizer, "param_groups", None)
    if states is None or groups is None:
        raise ValueError(
            f"{type(optimizer).__name__} exposes no per-parameter state/param_groups to prune"
        )
    held = {id(p) for group in groups for p in group["params"]}
    pruned = total = 0
    for p in params:
        if id(p) not in held:
            raise ValueError(
                f"a parameter of shape {tuple(p.shape)} is not in {type(optimizer).__name__}'s "
                "param_groups; build the optimizer over the parameters you prune"
            )
        state = states.get(p)
        if not state:
            continue
        keys = _prunable_keys(state, p, type(optimizer).__name__)
        if not keys:
            continue
        # one mask per parameter, ranked by the first moment, applied to every state: an entry
        # that kept its momentum but lost its second moment would make Adam divide by ~eps
        ref = next((k for k in ("exp_avg", "state1") if k in keys), keys[0])
        magnitude = _magnitude(state, ref)
        n = magnitude.numel()
        k = math.floor(ratio * n)
        if k == 0:
            mask = torch.zeros_like(magnitude, dtype=torch.bool)
        elif k >= n:
            mask = torch.ones_like(magnitude, dtype=torch.bool)
        else:
            mask = magnitude <= magnitude.kthvalue(k).values
        for key in keys:
            _zero_entries_(state, key, mask.to(state[key].device))
        pruned += int(mask.sum()) * len(keys)
        total += n * len(keys)
    return pruned / total if total else 0.0
