"""The methods of ``galore finetune``: which matrices they act on, and their optimizer (+ adapters).

``full``: AdamW on every weight. ``galore_*``: GaLore on the target matrices, plain updates
elsewhere. ``lora``: peft adapters on the target matrices, the classification head trained fully.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from galorekit.train.finetune_config import ConfigError, FinetuneConfig

if TYPE_CHECKING:
    from torch import nn


def target_modules(model: nn.Module) -> list[str]:
    """Full names of the matrices GaLore/LoRA act on: ``galorekit.models.default_target_modules``,
    the backbone's attention and MLP layers — for BERT and RoBERTa exactly the paper's query, key,
    value, attention.output.dense, intermediate.dense and output.dense of every layer (never the
    classification head, nor BERT's pooler, a dense layer on [CLS] that belongs to it)."""
    from galorekit.models import default_target_modules

    targets = default_target_modules(model)
    if not targets:
        raise ConfigError(f"{type(model).__name__} has no linear layers in its backbone to target")
    return targets


def build_method(model: nn.Module, cfg: FinetuneConfig) -> tuple[nn.Module, Any, dict[str, Any]]:
    """Wrap ``model`` for ``cfg.method`` (peft for LoRA) and create its optimizer.

    ``cfg`` is resolved (``resolve_presets``). Returns the model to train, its optimizer and what
    the start event reports about the method.
    """
    from galorekit.optim import create_optimizer

    targets = target_modules(model)
    info: dict[str, Any] = {"target_modules": len(targets)}
    common: dict[str, Any] = {"lr": cfg.lr, "weight_decay": cfg.weight_decay}
    if cfg.layerwise:
        common["layerwise"] = True
        if cfg.max_grad_norm > 0:  # the loop cannot clip: gradients are gone after backward
            common["max_grad_norm"] = cfg.max_grad_norm
    if cfg.method == "lora":
        from peft import LoraConfig, TaskType, get_peft_model

        heads = ["classifier", "score"]
        if any(name.endswith("pooler") for name, _ in model.named_modules()):
            heads.append("pooler")  # BERT's head is pooler + classifier (RoBERTa's: classifier)
        lora = LoraConfig(
            task_type=TaskType.SEQ_CLS,
            r=cfg.rank,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=0.0,
            target_modules=targets,
            modules_to_save=heads,
        )
        model = get_peft_model(model, lora)
        name, galore = "adamw", {}
    elif cfg.method == "full":
        name, galore = "adamw", {}
    else:
        name = cfg.method
        galore = {
            "rank": cfg.rank,
            "update_proj_gap": cfg.update_proj_gap,
            "scale": cfg.scale,
            "proj_type": cfg.proj_type,
            "target_modules": targets,
        }
    try:
        optimizer = create_optimizer(model, name, **galore, **common)
    except ValueError as err:  # e.g. targets GaLore cannot project (not nn.Linear)
        raise ConfigError(f"{cfg.method}: {err}") from err
    return model, optimizer, info
