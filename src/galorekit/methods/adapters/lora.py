"""LoRA baseline for pre-training from scratch, through peft.

As in the paper's LoRA baseline (the ReLoRA code base), every targeted matrix W keeps its random
initialisation, frozen, and learns only through the adapter: ``W x + (alpha / r) B A x``, with A
Kaiming-uniform and B zero (peft's default init). Embeddings, norms, the output head and biases are
not low-rank in that baseline and are trained fully (``train_non_targeted=True``); with
``train_non_targeted=False`` only the adapters train, the fine-tuning convention of peft.

:func:`apply_classifier_lora` is the fine-tuning variant ``galore finetune`` uses: adapters on the
backbone, the classification head trained fully.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from torch import nn

from galorekit.extras import needs_extra
from galorekit.models.targets import TargetSpec, check_rank, resolve_target_modules

with needs_extra("train"):
    from peft import LoraConfig, PeftModel, TaskType, get_peft_model
    from peft.tuners.lora import LoraLayer
    from transformers.pytorch_utils import Conv1D


@dataclass
class LoRAConfig:
    """Options of the LoRA baseline (rank r, scaling alpha / r)."""

    rank: int
    alpha: float
    dropout: float = 0.0
    target_modules: TargetSpec = None
    train_non_targeted: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank <= 0:
            raise ValueError(f"LoRA: rank must be a positive integer, got {self.rank!r}")
        if not self.alpha > 0:
            raise ValueError(f"LoRA: alpha must be > 0, got {self.alpha!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA: dropout must be in [0, 1), got {self.dropout!r}")


def lora_layers(model: nn.Module) -> list[LoraLayer]:
    """The peft LoRA layers of ``model``, in module order."""
    return [m for m in model.modules() if isinstance(m, LoraLayer)]


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The adapter matrices (every ``lora_A`` and ``lora_B`` weight) of ``model``."""
    params: list[nn.Parameter] = []
    for layer in lora_layers(model):
        for adapter in layer.lora_A:
            params.append(layer.lora_A[adapter].weight)
            params.append(layer.lora_B[adapter].weight)
    return params


def apply_lora(
    model: nn.Module,
    *,
    rank: int,
    alpha: float,
    dropout: float = 0.0,
    target_modules: TargetSpec = None,
    train_non_targeted: bool = True,
) -> PeftModel:
    """Wrap ``model`` with LoRA adapters on its targeted linear layers; returns the PeftModel.

    ``model`` is modified in place (peft injects the adapters into its modules). The targeted
    weights are frozen; which other parameters train is set by ``train_non_targeted`` (see the
    module docstring). ``target_modules``: see
    :func:`~galorekit.methods.adapters.targets.resolve_target_modules` (default: attention and MLP
    projections). Raises ``ValueError`` for ``rank <= 0``, ``rank >= min(in, out)`` of a targeted
    layer, targets that match nothing, or a model that already has LoRA layers.
    """
    config = LoRAConfig(rank, alpha, dropout, target_modules, train_non_targeted)
    if isinstance(model, PeftModel) or lora_layers(model):
        raise ValueError("apply_lora: the model already has LoRA adapters")
    names = resolve_target_modules(model, config.target_modules)
    check_rank(model, names, config.rank, "LoRA")
    modules = dict(model.named_modules())
    peft_config = LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=names,
        bias="none",
        init_lora_weights=True,
        fan_in_fan_out=isinstance(modules[names[0]], Conv1D),
    )
    with warnings.catch_warnings():
        # peft 0.21 calls a transformers-5 deprecated property while wrapping; not actionable here
        warnings.filterwarnings(
            "ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning
        )
        peft_model = get_peft_model(model, peft_config)
    if config.train_non_targeted:
        frozen = {id(layer.get_base_layer().weight) for layer in lora_layers(peft_model)}
        for p in peft_model.parameters():
            if id(p) not in frozen:
                p.requires_grad_(True)
    elif hasattr(peft_model, "enable_input_require_grads"):
        # frozen embeddings: without this, reentrant activation checkpointing yields no gradients
        peft_model.enable_input_require_grads()
    return peft_model


def apply_classifier_lora(
    model: nn.Module, *, rank: int, alpha: float, target_modules: list[str]
) -> PeftModel:
    """LoRA for fine-tuning a sequence classifier (``galore finetune``): peft adapters on
    ``target_modules`` (full names), the classification head (``classifier``/``score``, and
    BERT's ``pooler``) trained fully, every other weight frozen."""
    heads = ["classifier", "score"]
    if any(name.endswith("pooler") for name, _ in model.named_modules()):
        heads.append("pooler")  # BERT's head is pooler + classifier (RoBERTa's: classifier)
    config = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=rank,
        lora_alpha=alpha,
        lora_dropout=0.0,
        target_modules=target_modules,
        modules_to_save=heads,
    )
    return get_peft_model(model, config)
