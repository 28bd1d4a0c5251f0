"""The methods of ``galore finetune``: which matrices they act on, and their optimizer (+ adapters).

``adamw``: AdamW on every weight (``full`` is its former name, refused with a pointer).
``galore_*``: GaLore on the target matrices, plain updates elsewhere. ``lora``: peft adapters on
the target matrices, the classification head trained fully. The optimizers come from
:func:`galorekit.methods.build_optimizer`, the same as every other command's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from galorekit.methods.config import MethodConfig
from galorekit.names import method_info
from galorekit.train.finetune_config import ConfigError, FinetuneConfig

if TYPE_CHECKING:
    from torch import nn

# galorekit.methods and galorekit.models import torch: they are imported in the functions below,
# because ``galore --help`` imports this module (through finetune_loop) and must stay torch-free


def target_modules(model: nn.Module) -> list[str]:
    """Full names of the matrices GaLore/LoRA act on: ``galorekit.models.default_target_modules``,
    the backbone's attention and MLP layers — for BERT and RoBERTa exactly the paper's query, key,
    value, attention.output.dense, intermediate.dense and output.dense of every layer (never the
    classification head, nor BERT's pooler, a dense layer on [CLS] that belongs to it)."""
    from galorekit.models import default_target_modules  # torch (see the top)

    targets = default_target_modules(model)
    if not targets:
        raise ConfigError(f"{type(model).__name__} has no linear layers in its backbone to target")
    return targets


def method_name(cfg: FinetuneConfig) -> str:
    """``cfg.method``, checked against the method table (a former name such as ``full`` is
    refused with a pointer to its new one)."""
    try:
        method_info(cfg.method)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    return cfg.method


def method_config(cfg: FinetuneConfig, method: str) -> MethodConfig:
    """The :class:`MethodConfig` of a (resolved) finetune configuration, for ``method``."""
    return MethodConfig(
        method=method,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        rank=cfg.rank,
        update_proj_gap=cfg.update_proj_gap,
        scale=cfg.scale,
        proj_type=cfg.proj_type,
        layerwise=cfg.layerwise,
        # finetune's 0 means "no clipping"; the layer-wise hooks clip (gradients are gone after
        # backward, so the loop cannot)
        max_grad_norm=cfg.max_grad_norm if cfg.max_grad_norm > 0 else None,
        lora_alpha=cfg.lora_alpha,
        state_dtype=cfg.state_dtype,
        weight_rounding=cfg.weight_rounding,
    )


def build_method(model: nn.Module, cfg: FinetuneConfig) -> tuple[nn.Module, Any, dict[str, Any]]:
    """Wrap ``model`` for ``cfg.method`` (peft for LoRA) and create its optimizer.

    ``cfg`` is resolved (``resolve_presets``). Returns the model to train, its optimizer and what
    the start event reports about the method.
    """
    from galorekit.methods import build_optimizer  # torch (see the top)

    targets = target_modules(model)
    info: dict[str, Any] = {"target_modules": len(targets)}
    method = method_name(cfg)
    if method == "lora":
        # torch and peft (see the top)
        from galorekit.methods.adapters import apply_classifier_lora

        model = apply_classifier_lora(
            model, rank=cfg.rank, alpha=cfg.lora_alpha, target_modules=targets
        )
    try:
        # LoRA's adapters and head train with its optimizer (plain AdamW), as in full fine-tuning
        mcfg = method_config(cfg, method_info(method).optimizer)
        optimizer = build_optimizer(model, mcfg, rank=cfg.rank, target_modules=targets)
    except ValueError as err:  # e.g. targets GaLore cannot project (not nn.Linear)
        raise ConfigError(f"{cfg.method}: {err}") from err
    return model, optimizer, info
