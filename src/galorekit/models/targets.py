"""Which modules GaLore, LoRA, ReLoRA and Low-Rank act on: the target-module resolver of
galorekit. The matching rules (peft's: a list of names matched whole or as a suffix after a dot, a
string a full-match regex, ``"all-linear"``) are implemented once in ``galorekit.optim.targets``,
which GaLore's parameter groups use below this layer; this module adds what the adapters need
(the matrix dimensions of a targeted layer, the rank limits)."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from torch import nn

from galorekit.optim.targets import (
    KINDS,
    TargetSpec,
    default_targets,
    is_conv1d,
    module_kind,
    output_head,
    select_modules,
)

__all__ = [
    "KINDS",
    "TargetSpec",
    "check_rank",
    "default_target_modules",
    "linear_shape",
    "max_adapter_rank",
    "module_kind",
    "output_head",
    "resolve_target_modules",
    "target_shapes",
]


def linear_shape(module: nn.Module) -> tuple[int, int]:
    """``(in, out)`` of the matrix a targetable module applies: an nn.Linear's features, a
    Conv1D's (stored in×out), a convolution's ``in/groups · prod(kernel)`` and out channels (its
    kernel unfolded), an embedding's ``(num_embeddings, embedding_dim)``."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if is_conv1d(module):
        return module.weight.shape[0], module.nf  # Conv1D stores its weight as (in, out)
    kind = module_kind(module)
    if kind == "conv":
        return math.prod(module.weight.shape[1:]), module.weight.shape[0]
    if kind == "embedding":
        return module.num_embeddings, module.embedding_dim
    raise TypeError(
        f"not a targetable layer ({', '.join(KINDS.values())}): {type(module).__name__}"
    )


def default_target_modules(model: nn.Module) -> list[str]:
    """The default targets: the linear layers inside the transformer blocks, in module order
    (``galorekit.optim.targets.default_targets``; full names, usable as peft ``target_modules``
    and as GaLore's)."""
    return default_targets(model)


def resolve_target_modules(
    model: nn.Module, target_modules: TargetSpec = None, *, rules: str = "peft"
) -> list[str]:
    """Qualified names of the modules ``target_modules`` selects, in module order — the rules of
    ``galorekit.optim.targets`` (peft's): ``None`` the default targets, ``"all-linear"`` every
    linear layer but the head, a string a regex matching whole names, a list names matched whole
    or as a suffix after a dot (``["q_proj", "v_proj"]``); ``rules="transformers"``: as the HF
    Trainer reads ``optim_target_modules`` (list entries also as substrings or full-match
    regexes, linear layers only). Raises ``ValueError`` when the spec or one of its entries selects
    nothing, naming near misses."""
    return select_modules(model, target_modules, rules=rules)


def max_adapter_rank(model: nn.Module, names: Sequence[str]) -> int:
    """The largest rank an adapter (LoRA, ReLoRA, Low-Rank) may have on the named layers: one
    below the smallest min(in, out) of their matrices (:func:`linear_shape`)."""
    modules = dict(model.named_modules())
    return min(min(linear_shape(modules[n])) for n in names) - 1


def check_rank(model: nn.Module, names: Sequence[str], rank: int, method: str) -> None:
    """``ValueError`` unless ``0 < rank < min(in, out)`` for every named layer's matrix.

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


def target_shapes(model: str, layers: int | None = None) -> list[tuple[str, tuple[int, ...]]]:
    """``(name, weight shape)`` of every default target of the named ``model`` (built on the meta
    device; a convolution's kernel keeps its 4-D shape), in module order; ``layers``: only the
    blocks numbered below it (a target outside numbered blocks is always kept)."""
    from galorekit.models.build import build_model  # builds transformers models: not at import

    net = build_model(model, device="meta")
    modules = dict(net.named_modules())
    out = []
    for name in default_target_modules(net):
        block = re.search(r"\.(\d+)\.", f".{name}.")
        if layers is None or block is None or int(block.group(1)) < layers:
            out.append((name, tuple(modules[name].weight.shape)))
    return out
