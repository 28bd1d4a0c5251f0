"""Split a model's parameters into a plain group and a GaLore group."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from galorekit.names import GALORE_DEFAULTS
from galorekit.optim.targets import TargetSpec, select_modules

#: the default targets: None, the linear layers inside the transformer blocks
#: (``galorekit.optim.targets.default_targets``: LLaMA's attention and MLP projections)
DEFAULT_TARGET_MODULES: TargetSpec = None


def param_groups(
    model: nn.Module,
    *,
    rank: int = 128,
    update_proj_gap: int = GALORE_DEFAULTS["update_proj_gap"],
    scale: float = GALORE_DEFAULTS["scale"],
    proj_type: str = GALORE_DEFAULTS["proj_type"],
    target_modules: TargetSpec = DEFAULT_TARGET_MODULES,
    svd: str | None = None,
    stagger: bool | None = None,
    moments: str | None = None,
    exclude_modules: str | Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """``[plain_group, galore_group]`` for ``model``'s trainable parameters.

    The GaLore group holds the weights of the modules ``target_modules`` selects, with peft's
    rules (``galorekit.optim.targets``): None (default) the linear layers inside the transformer
    blocks (LLaMA's attention and MLP projections, GPT-2's ``Conv1D`` layers), ``"all-linear"`` every
    ``nn.Linear``/``Conv1D`` but the output (or classifier) head, a list of module names matched
    whole or as a suffix after a dot (``["q_proj", "v_proj"]``), a string a regex matching whole
    names. Convolutions (projected as their out × in·k unfolding) and embeddings join only when
    named. ``exclude_modules`` (same rules) drops modules again. As in the paper, embeddings, the
    output head, biases and norms stay in the plain group. Each group carries ``param_names`` so
    that errors can name a parameter. ``svd`` (the refresh method) and ``stagger`` (spread the
    group's refreshes over the steps of a period) and ``moments`` (what a refresh does with the
    moments, ``galorekit.names.MOMENT_POLICIES``) default to ``galorekit.names.GALORE_DEFAULTS``.

    Raises ``ValueError`` when the spec selects nothing (listing near misses) or only frozen
    weights.
    """
    names = select_modules(model, target_modules, exclude_modules=exclude_modules)
    modules = dict(model.named_modules())
    galore_ids = {id(modules[n].weight) for n in names if modules[n].weight.requires_grad}
    if not galore_ids:
        raise ValueError(
            f"target_modules={target_modules!r} selects only frozen weights "
            f"({', '.join(names[:4])}{' …' if len(names) > 4 else ''}); nothing for GaLore to train"
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
