"""Names shared by the library and the command lines, importable without torch: ``galore --help``
builds every parser from them."""

from __future__ import annotations

#: optimizer methods (``galorekit.optim.create_optimizer``); plain names optimize full-rank
OPTIMIZER_NAMES = (
    "adamw",
    "adamw8bit",
    "adafactor",
    "galore_adamw",
    "galore_adamw8bit",
    "galore_adafactor",
)
#: the paper's baselines that change the model (``galorekit.train.baselines``)
BASELINES = ("lora", "relora", "low_rank")
#: every method of ``galore pretrain``
METHODS = (*OPTIMIZER_NAMES, *BASELINES)
#: GaLore's projection types (``galorekit.projection.choose_side``)
PROJ_TYPES = ("std", "reverse_std", "left", "right", "full")
