"""galorekit — GaLore (Gradient Low-Rank Projection) for memory-efficient full-parameter training.

The public optimizers and helpers are imported lazily so that ``import galorekit.data`` (or the
CLI's ``--help``) does not pay for importing bitsandbytes and friends.
"""

from __future__ import annotations

from galorekit import extras as _extras  # noqa: F401  (silences one bitsandbytes notice: see there)
from galorekit.lazy import lazy_exports

__version__ = "0.1.0"

_LAZY = {
    "GaLoreAdamW": "galorekit.optim.galore_adamw",
    "GaLoreAdamW8bit": "galorekit.optim.galore_adamw8bit",
    "GaLoreAdafactor": "galorekit.optim.galore_adafactor",
    "LayerwiseOptimizer": "galorekit.optim.layerwise",
    "param_groups": "galorekit.optim.param_groups",
}

__all__ = ["__version__", *_LAZY]


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, eager=["__version__"])
