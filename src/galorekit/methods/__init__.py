"""Training methods: what a method name means for the model and its optimizer.

``MethodConfig`` describes a method and its hyper-parameters (the single source of their
defaults; torch-free, so that command lines can be generated from it for ``galore --help``);
:func:`setup` applies it to a model and builds the optimizer (``methods.build``, loaded on first
use because it imports torch); ``adapters`` holds the baselines that change the model (LoRA,
ReLoRA, Low-Rank; LoRA and ReLoRA need ``galorekit[train]``)."""

from __future__ import annotations

from galorekit.lazy import lazy_exports
from galorekit.methods.config import MethodConfig, field_help

_FROM_BUILD = (
    "MethodSetup",
    "adapter_rank",
    "apply_adapters",
    "build_optimizer",
    "default_rank",
    "setup",
)

__all__ = [
    "MethodConfig",
    "MethodSetup",
    "adapter_rank",
    "apply_adapters",
    "build_optimizer",
    "default_rank",
    "field_help",
    "setup",
]


__getattr__, __dir__ = lazy_exports(
    __name__, dict.fromkeys(_FROM_BUILD, "galorekit.methods.build"), eager=__all__
)
