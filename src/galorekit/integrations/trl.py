"""TRL's ``SFTTrainer`` on galorekit's GaLore, the same way as ``transformers.Trainer``::

    from trl import SFTConfig, SFTTrainer
    from galorekit.integrations.trl import GaLoreSFTTrainer as SFTTrainer

    SFTConfig(..., optim="galore_adamw_layerwise", optim_target_modules=["attn", "mlp"],
              optim_args="rank=64")

(``galorekit.integrations.transformers.with_galore`` makes any other TRL trainer the same.)
"""

from __future__ import annotations

from galorekit.extras import needs_extra
from galorekit.integrations.transformers import lazy_trainer


def _sft_trainer() -> type:
    with needs_extra("integrations"):
        from trl import SFTTrainer
    return SFTTrainer


# trl is imported when the trainer is asked for, not with this module
__getattr__ = lazy_trainer(globals(), "GaLoreSFTTrainer", _sft_trainer)
