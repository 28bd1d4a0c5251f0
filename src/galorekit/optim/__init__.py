"""GaLore optimizers, the layer-wise wrapper, parameter grouping and the by-name factory."""

from galorekit.optim.base import GaLoreOptimizer, ProjectionView
from galorekit.optim.factory import (
    OPTIMIZER_NAMES,
    create_optimizer,
    optimizer_class,
)
from galorekit.optim.galore_adafactor import GaLoreAdafactor
from galorekit.optim.galore_adamw import GaLoreAdamW
from galorekit.optim.param_groups import DEFAULT_TARGET_MODULES, param_groups

__all__ = [
    "DEFAULT_TARGET_MODULES",
    "OPTIMIZER_NAMES",
    "GaLoreAdafactor",
    "GaLoreAdamW",
    "GaLoreAdamW8bit",
    "GaLoreOptimizer",
    "ProjectionView",
    "create_optimizer",
    "optimizer_class",
    "param_groups",
]


def __getattr__(name: str):
    # bitsandbytes is imported only when the 8-bit optimizer is asked for
    if name == "GaLoreAdamW8bit":
        from galorekit.optim.galore_adamw8bit import GaLoreAdamW8bit

        return GaLoreAdamW8bit
    raise AttributeError(f"module 'galorekit.optim' has no attribute {name!r}")
