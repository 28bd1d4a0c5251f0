"""Which DeepSpeed configurations GaLore can run under (measured: benchmarks/deepspeed_zero.py).

GaLore projects each weight *matrix*'s gradient. DeepSpeed's ZeRO (stages 1-3) and its bf16/fp16
optimizer wrappers flatten the parameters into 1-D partitions before the client optimizer sees
them, so there is no matrix left to project; a DeepSpeed ``optimizer`` section replaces the
client optimizer altogether. What runs is ZeRO stage 0 in fp32 with a client optimizer — plain
data parallelism, which DDP gives without DeepSpeed. The supported sharded path is FSDP2.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

SHARDED_HINT = (
    "for sharded training use FSDP2 (galore pretrain --distributed fsdp, or torch's fully_shard "
    "with a galorekit optimizer), which keeps each weight a row-sharded matrix GaLore can project"
)


def _enabled(section: Any) -> bool:
    if not isinstance(section, Mapping):
        return False
    value = section.get("enabled", False)
    return value is True or (isinstance(value, str) and value.lower() == "true")


def deepspeed_refusal(config: Mapping[str, Any], *, layerwise: bool = False) -> str | None:
    """Why GaLore cannot run under this DeepSpeed ``config`` (a dict), or None when it can."""
    if "optimizer" in config:
        return (
            "the DeepSpeed config has an 'optimizer' section, which replaces the Trainer's "
            "optimizer: GaLore would silently not run; remove that section"
        )
    if layerwise:
        return (
            "layer-wise GaLore updates each parameter inside backward, but under DeepSpeed its "
            "engine owns backward, gradient reduction and accumulation; use DDP (layer-wise GaLore "
            "reduces gradients itself) or drop '_layerwise'"
        )
    zero = config.get("zero_optimization") or {}
    stage = zero.get("stage", 0) if isinstance(zero, Mapping) else 0
    if stage not in (0, "0"):
        return (
            f"ZeRO stage {stage} flattens the parameters into 1-D partitions before the optimizer "
            "sees them, so GaLore has no weight matrix to project; only ZeRO stage 0 in fp32 can "
            f"run it (that is plain data parallelism: DDP does the same); {SHARDED_HINT}"
        )
    for half in ("bf16", "fp16"):
        if _enabled(config.get(half)):
            return (
                f"DeepSpeed's {half} optimizer wrapper flattens the parameters into 1-D fp32 "
                "master copies, so GaLore has no weight matrix to project; run DeepSpeed in fp32 "
                f"(ZeRO stage 0) or train in {half} with DDP or FSDP2 instead; {SHARDED_HINT}"
            )
    return None


def check_deepspeed(config: Mapping[str, Any], *, layerwise: bool = False) -> None:
    """``ValueError`` with the explanation when GaLore cannot run under ``config``."""
    why = deepspeed_refusal(config, layerwise=layerwise)
    if why is not None:
        raise ValueError(f"GaLore cannot run under this DeepSpeed configuration: {why}")
