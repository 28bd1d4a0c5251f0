"""Which matrices of a model GaLore, LoRA, ReLoRA and Low-Rank act on."""

from __future__ import annotations

from torch import nn
from transformers.pytorch_utils import Conv1D

#: modules treated as a weight matrix: nn.Linear, and the transposed Conv1D of GPT-2-style models
LINEAR_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, Conv1D)


def linear_shape(module: nn.Module) -> tuple[int, int]:
    """``(in_features, out_features)`` of an nn.Linear or a Conv1D."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if isinstance(module, Conv1D):
        return module.weight.shape[0], module.nf  # Conv1D stores its weight as (in, out)
    raise TypeError(f"not a linear layer: {type(module).__name__}")


def output_head(model: nn.Module) -> nn.Module | None:
    """The model's output projection (``lm_head``), or None."""
    get_out = getattr(model, "get_output_embeddings", None)
    if not callable(get_out):
        return None
    try:
        return get_out()
    except (NotImplementedError, AttributeError):
        return None


def default_target_modules(model: nn.Module) -> list[str]:
    """Qualified names of the linear layers inside the transformer blocks, in module order.

    For LLaMA these are every layer's ``q/k/v/o_proj`` and ``gate/up/down_proj`` — the matrices
    the paper trains with GaLore (and the baselines factorise). Embeddings, norms and the output
    head are excluded: only linear layers inside ``model.base_model`` (the backbone) count, not a
    BERT-style pooler there (a dense layer on [CLS], part of the classification head), and the
    output embedding never does. The names are full paths (``model.layers.0.self_attn.q_proj``),
    usable as peft ``target_modules`` and as substrings for GaLore's parameter groups.
    """
    backbone = getattr(model, "base_model", model)
    inside = {id(m) for m in backbone.modules()}
    pooler = getattr(backbone, "pooler", None)
    if isinstance(pooler, nn.Module):  # BERT-style pooler: a dense layer on [CLS], part of the head
        inside -= {id(m) for m in pooler.modules()}
    head = output_head(model)
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, LINEAR_TYPES) and id(module) in inside and module is not head
    ]
