"""Which DeepSpeed configurations GaLore can run under (measured: benchmarks/deepspeed_zero.py).

GaLore projects each weight *matrix*'s gradient. ZeRO stages 1 and 2 hand the client optimizer
one flattened 1-D partition per param group instead of the matrices (GaLore would "project" a
meaningless n×1 column), stage 3 hands it no parameters at all; a DeepSpeed ``optimizer`` section
replaces the client optimizer altogether. What runs is ZeRO stage 0 with a client optimizer (fp32,
and bf16, whose unfused wrapper keeps each parameter's shape) — plain data parallelism, which DDP
gives without DeepSpeed. The supported sharded path is FSDP2.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

SHARDED_HINT = (
    "for sharded training use FSDP2 (galore pretrain --distributed fsdp, or torch's fully_shard "
    "with a galorekit optimizer), which keeps each weight a row-sharded matrix GaLore can project"
)


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
            f"ZeRO stage {stage} hands the optimizer flattened 1-D partitions instead of the "
            "weight matrices, so GaLore has no matrix to project; only ZeRO stage 0 can run it "
            f"(that is plain data parallelism: DDP does the same); {SHARDED_HINT}"
        )
    return None


def check_deepspeed(config: Mapping[str, Any], *, layerwise: bool = False) -> None:
    """``ValueError`` with the explanation when GaLore cannot run under ``config``."""
    why = deepspeed_refusal(config, layerwise=layerwise)
    if why is not None:
        raise ValueError(f"GaLore cannot run under this DeepSpeed configuration: {why}")
