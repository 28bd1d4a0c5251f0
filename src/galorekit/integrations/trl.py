"""TRL's ``SFTTrainer`` on galorekit's GaLore, the same way as ``transformers.Trainer``::

    from trl import SFTConfig, SFTTrainer
    from galorekit.integrations.trl import GaLoreSFTTrainer as SFTTrainer

    SFTConfig(..., optim="galore_adamw_layerwise", optim_target_modules=["attn", "mlp"],
              optim_args="rank=64")

(``galorekit.integrations.transformers.with_galore`` makes any other TRL trainer the same.)
"""

from __future__ import annotations

from typing import Any

from galorekit.extras import needs_extra
from galorekit.integrations.transformers import with_galore


def __getattr__(name: str) -> Any:
    # trl is imported when the trainer is asked for, not with this module
    if name == "GaLoreSFTTrainer":
        with needs_extra("integrations"):
            from trl import SFTTrainer

        cls = with_galore(SFTTrainer)
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
