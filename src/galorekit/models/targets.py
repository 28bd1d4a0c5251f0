"""Which matrices of a model GaLore, LoRA, ReLoRA and Low-Rank act on: the one target-module
resolver of galorekit (the optimizers' parameter groups and the adapters both use it)."""

from __future__ import annotations

import re
from collections.abc import Sequence

from torch import nn

try:
    from transformers.pytorch_utils import Conv1D
except ImportError:  # the core install (torch only): no model here can hold a transformers Conv1D
    Conv1D = None

#: modules treated as a weight matrix: nn.Linear, and the transposed Conv1D of GPT-2-style models
LINEAR_TYPES: tuple[type[nn.Module], ...] = (nn.Linear,) if Conv1D is None else (nn.Linear, Conv1D)
#: what selects target modules: None (the default), "all-linear", a regex, or name substrings
TargetSpec = str | Sequence[str] | None


def linear_shape(module: nn.Module) -> tuple[int, int]:
    """``(in_features, out_features)`` of an nn.Linear or a Conv1D."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if Conv1D is not None and isinstance(module, Conv1D):
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


def _available(candidates: dict[str, nn.Module]) -> str:
    leaves = sorted({name.rsplit(".", 1)[-1] for name in candidates})
    return ", ".join(leaves) if leaves else "(none)"


def resolve_target_modules(model: nn.Module, target_modules: TargetSpec = None) -> list[str]:
    """Qualified names of the linear layers selected by ``target_modules``, in module order.

    ``None`` selects :func:`galorekit.models.default_target_modules` (attention and MLP
    projections). Otherwise the same rules as GaLore's parameter groups: a list of strings selects
    the linear layers whose qualified name *contains* one of them (``["attn", "mlp"]``,
    ``["q_proj", "v_proj"]`` or full names), a string is ``"all-linear"`` or a regular expression
    searched in the names. The output head is never selected. Raises ``ValueError`` when an entry
    selects nothing, listing the linear layer names that exist.
    """
    head = output_head(model)
    candidates = {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, LINEAR_TYPES) and module is not head
    }
    if target_modules is None:
        names = default_target_modules(model)
        if not names:
            raise ValueError(
                f"{type(model).__name__} has no linear layers inside its transformer blocks; "
                f"pass target_modules explicitly (available linear layers: {_available(candidates)})"
            )
        return names
    if isinstance(target_modules, str):
        if target_modules == "all-linear":
            selected = list(candidates)
        else:
            try:
                pattern = re.compile(target_modules)
            except re.error as err:
                raise ValueError(
                    f"target_modules {target_modules!r} is not a valid regular expression ({err}); "
                    "pass 'all-linear', a regular expression or a list of name substrings"
                ) from None
            selected = [n for n in candidates if pattern.search(n)]
        if not selected:
            raise ValueError(
                f"target_modules {target_modules!r} matches no linear layer; "
                f"available linear layers: {_available(candidates)}"
            )
        return selected
    targets = list(target_modules)
    if not targets or not all(isinstance(t, str) and t for t in targets):
        raise ValueError(
            f"target_modules must be a non-empty list of non-empty strings, got {targets!r}"
        )
    unmatched = [t for t in targets if not any(t in n for n in candidates)]
    if unmatched:
        raise ValueError(
            f"target_modules {unmatched!r} match no linear layer (the output head is never "
            f"targeted); available linear layers: {_available(candidates)} "
            "(entries match as substrings of the qualified names)"
        )
    return [n for n in candidates if any(t in n for t in targets)]


def max_adapter_rank(model: nn.Module, names: Sequence[str]) -> int:
    """The largest rank an adapter (LoRA, ReLoRA, Low-Rank) may have on the named linear layers:
    one below the smallest min(in, out) among them."""
    modules = dict(model.named_modules())
    return min(min(linear_shape(modules[n])) for n in names) - 1


def check_rank(model: nn.Module, names: Sequence[str], rank: int, method: str) -> None:
    """``ValueError`` unless ``0 < rank < min(in, out)`` for every named linear layer.

    A rank of ``min(in, out)`` or more is no longer low-rank: the factors hold at least as many
    numbers as the dense matrix, so the method would only cost memory.
    """
    if isinstance(rank, bool) or not isinstance(rank, int) or rank <= 0:
        raise ValueError(f"{method}: rank must be a positive integer, got {rank!r}")
    modules = dict(model.named_modules())
    too_small = []
    for name in names:
        n_in, n_out = linear_shape(modules[name])
        if rank >= min(n_in, n_out):
            too_small.append(f"{name} ({n_out}x{n_in})")
    if too_small:
        limit = max_adapter_rank(model, names)
        shown = ", ".join(too_small[:4]) + (
            f" and {len(too_small) - 4} more" if len(too_small) > 4 else ""
        )
        raise ValueError(
            f"{method}: rank {rank} is not below min(in, out) of {shown}; "
            f"the largest valid rank for these target modules is {limit}"
        )
