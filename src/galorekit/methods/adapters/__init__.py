"""The paper's baselines besides full-rank training: LoRA, ReLoRA and Low-Rank.

Loaded lazily: ``low_rank`` and ``optimizer_pruning`` need only torch, ``lora`` and ``relora``
need peft (``galorekit[train]``), so importing the package, or ``LowRankLinear``, must not import
peft."""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "LoRAConfig": "lora",
    "apply_lora": "lora",
    "lora_layers": "lora",
    "lora_parameters": "lora",
    "LowRankConfig": "low_rank",
    "LowRankLinear": "low_rank",
    "apply_low_rank": "low_rank",
    "merge_low_rank": "low_rank",
    "prune_optimizer_state": "optimizer_pruning",
    "ReLoRA": "relora",
    "ReLoRAConfig": "relora",
    "relora_lr_lambda": "relora",
}
# the target resolver lives in galorekit.models; re-exported for the adapters' users
_FROM_MODELS = ("check_rank", "max_adapter_rank", "resolve_target_modules")

__all__ = sorted([*_LAZY, *_FROM_MODELS])


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    if name in _FROM_MODELS:
        return getattr(importlib.import_module("galorekit.models.targets"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
