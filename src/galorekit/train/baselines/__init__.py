"""The paper's baselines besides full-rank training: LoRA, ReLoRA and Low-Rank."""

from galorekit.train.baselines.lora import LoRAConfig, apply_lora, lora_layers, lora_parameters
from galorekit.train.baselines.low_rank import (
    LowRankConfig,
    LowRankLinear,
    apply_low_rank,
    merge_low_rank,
)
from galorekit.train.baselines.optimizer_pruning import prune_optimizer_state
from galorekit.train.baselines.relora import ReLoRA, ReLoRAConfig, relora_lr_lambda
from galorekit.train.baselines.targets import (
    check_rank,
    max_adapter_rank,
    resolve_target_modules,
)

__all__ = [
    "LoRAConfig",
    "LowRankConfig",
    "LowRankLinear",
    "ReLoRA",
    "ReLoRAConfig",
    "apply_lora",
    "apply_low_rank",
    "check_rank",
    "lora_layers",
    "lora_parameters",
    "max_adapter_rank",
    "merge_low_rank",
    "prune_optimizer_state",
    "relora_lr_lambda",
    "resolve_target_modules",
]
