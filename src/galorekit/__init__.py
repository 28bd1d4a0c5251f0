"""galorekit — GaLore (Gradient Low-Rank Projection) for memory-efficient full-parameter training.

The public optimizers and helpers are imported lazily so that ``import galorekit.data`` (or the
CLI's ``--help``) does not pay for importing bitsandbytes and friends.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "GaLoreAdamW": "galorekit.optim.galore_adamw",
    "GaLoreAdamW8bit": "galorekit.optim.galore_adamw8bit",
    "GaLoreAdafactor": "galorekit.optim.galore_adafactor",
    "LayerwiseOptimizer": "galorekit.optim.layerwise",
    "param_groups": "galorekit.optim.param_groups",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'galorekit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
