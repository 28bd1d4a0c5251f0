"""Split a model's parameters into a plain group and a GaLore group."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from torch import nn

from galorekit.names import GALORE_DEFAULTS

#: the attention and MLP projections of LLaMA-style models (the paper's targets)
DEFAULT_TARGET_MODULES = ("attn", "attention", "mlp")


def _target_matcher(target_modules: str | Sequence[str]):
    if isinstance(target_modules, str):
        if target_modules == "all-linear":
            return lambda name: True
        try:
            pattern = re.compile(target_modules)
        except re.error as err:
            raise ValueError(
                f"target_modules {target_modules!r} is not a valid regular expression ({err}); "
                "pass 'all-linear', a regex, or a list of name substrings"
            ) from None
        return lambda name: pattern.search(name) is not None
    targets = list(target_modules)
    if not targets or not all(isinstance(t, str) for t in targets):
        raise ValueError(f"target_modules must be a non-empty list of strings, got {targets!r}")
    return lambda name: any(t in name for t in targets)


def _is_output_head(model: nn.Module, module: nn.Module) -> bool:
    get_out = getattr(model, "get_output_embeddings", None)
    if callable(get_out):
        try:
            return get_out() is module
        except (NotImplementedError, AttributeError):
            return False
    return False


def param_groups(
    model: nn.Module,
    *,
    rank: int = 128,
    update_proj_gap: int = GALORE_DEFAULTS["update_proj_gap"],
    scale: float = GALORE_DEFAULTS["scale"],
    proj_type: str = GALORE_DEFAULTS["proj_type"],
    target_modules: str | Sequence[str] = DEFAULT_TARGET_MODULES,
    svd: str | None = None,
    stagger: bool | None = None,
    moments: str | None = None,
    exclude: Sequence[str] = ("lm_head", "embed", "classifier", "score"),
) -> list[dict[str, Any]]:
    """``[plain_group, galore_group]`` for ``model``'s trainable parameters.

    The GaLore group holds the weights of the ``nn.Linear`` modules whose qualified name matches
    ``target_modules``: a list of substrings (default: the attention and MLP blocks), a regular
    expression, or ``"all-linear"``. As in the paper, embeddings, the output head (and names
    containing one of ``exclude``) stay in the plain group with biases and norms. Each group carries
    ``param_names`` so that errors can name a parameter. ``svd`` (the refresh method) and
    ``stagger`` (spread the group's refreshes over the steps of a period) and ``moments`` (what
    a refresh does with the moments, ``galorekit.names.MOMENT_POLICIES``) default to
    ``galorekit.names.GALORE_DEFAULTS``.

    Raises ``ValueError`` when no linear layer matches (listing a few that exist).
    """
    match = _target_matcher(target_modules)
    galore_ids: set[int] = set()
    linear_names: list[str] = []
    for module_name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        linear_names.append(module_name)
        if _is_output_head(model, module) or any(e in module_name for e in exclude):
            continue
        if match(module_name) and module.weight.requires_grad:
            galore_ids.add(id(module.weight))
    if not galore_ids:
        shown = ", ".join(linear_names[:8]) + (" …" if len(linear_names) > 8 else "")
        raise ValueError(
            f"target_modules={target_modules!r} matches no trainable nn.Linear of the model; "
            f"its linear layers are: {shown or '(none)'}"
        )
    plain: dict[str, Any] = {"params": [], "param_names": []}
    galore: dict[str, Any] = {
        "params": [],
        "param_names": [],
        "rank": rank,
        "update_proj_gap": update_proj_gap,
        "scale": scale,
        "proj_type": proj_type,
    }
    if svd is not None:  # else the optimizer's default (GALORE_DEFAULTS["svd"])
        galore["svd"] = svd
    if moments is not None:  # else GALORE_DEFAULTS["moments"]
        galore["moments"] = moments
    if stagger is not None:  # else GALORE_DEFAULTS["stagger"]
        galore["stagger"] = stagger
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:  # tied weights appear once
            continue
        seen.add(id(p))
        group = galore if id(p) in galore_ids else plain
        group["params"].append(p)
        group["param_names"].append(name)
    return [plain, galore]
