"""The paper's baselines besides full-rank training: LoRA, ReLoRA and Low-Rank.

Loaded lazily: ``low_rank`` and ``optimizer_pruning`` need only torch, ``lora`` and ``relora``
need peft (``galorekit[train]``), so importing the package, or ``LowRankLinear``, must not import
peft."""

from __future__ import annotations

from galorekit.lazy import lazy_exports

_LAZY = {
    "LoRAConfig": "lora",
    "apply_lora": "lora",
    "apply_classifier_lora": "lora",
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


__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        **{name: f"{__name__}.{module}" for name, module in _LAZY.items()},
        **dict.fromkeys(_FROM_MODELS, "galorekit.models.targets"),
    },
)
