"""Build an optimizer by name, as the CLIs do: ``create_optimizer(model, "galore_adamw", ...)``."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from galorekit.names import (
    GALORE_DEFAULTS,
    METHOD_TABLE,
    OPTIMIZER_NAMES,
    SUCCESSOR_DEFAULTS,
    is_galore,
)
from galorekit.optim.param_groups import DEFAULT_TARGET_MODULES, param_groups
from galorekit.optim.targets import TargetSpec


def optimizer_class(name: str) -> type[torch.optim.Optimizer]:
    """The galorekit class behind a method name (plain methods use the same classes without a
    GaLore group, so every method shares one update formula per family)."""
    if name not in OPTIMIZER_NAMES:
        raise ValueError(f"unknown optimizer {name!r}; valid: {', '.join(OPTIMIZER_NAMES)}")
    if name.endswith("adamw8bit"):
        from galorekit.optim.galore_adamw8bit import GaLoreAdamW8bit

        return GaLoreAdamW8bit
    if name.endswith("adafactor"):
        from galorekit.optim.galore_adafactor import GaLoreAdafactor

        return GaLoreAdafactor
    from galorekit.optim.galore_adamw import GaLoreAdamW

    return GaLoreAdamW


def create_optimizer(
    model: nn.Module,
    name: str,
    *,
    lr: float,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float | None = None,
    rank: int = 128,
    update_proj_gap: int = GALORE_DEFAULTS["update_proj_gap"],
    scale: float = GALORE_DEFAULTS["scale"],
    proj_type: str = GALORE_DEFAULTS["proj_type"],
    svd: str | None = None,
    moments: str | None = None,
    target_modules: TargetSpec = DEFAULT_TARGET_MODULES,
    layerwise: bool = False,
    accumulation_steps: int = 1,
    **extra: Any,
) -> torch.optim.Optimizer:
    """An optimizer for ``model``'s trainable parameters.

    ``name`` is one of ``OPTIMIZER_NAMES``. ``galore_*`` put the targeted linear weights in a GaLore
    group (see ``galorekit.param_groups``); the plain names optimize every parameter full-rank.
    ``layerwise=True`` returns a ``galorekit.LayerwiseOptimizer`` that updates each parameter
    during backward. Adafactor with ``lr`` runs with ``relative_step=False`` and
    ``scale_parameter=False`` (the lr is absolute). ``svd`` and ``moments`` (None: the defaults of
    ``galorekit.names.GALORE_DEFAULTS``) go to the GaLore group, and so do the successors' keys
    (``galorekit.names.SUCCESSOR_DEFAULTS``) found in ``extra``, over the method's own (e.g.
    ``"fira_adamw"`` sets ``residual="fira"``); the rest of ``extra`` (e.g. ``state_dtype``) goes
    to the optimizer's constructor.
    """
    cls = optimizer_class(name)
    # the successors' options are GaLore group keys: the method's own, then the caller's
    successor = dict(METHOD_TABLE[name].group)
    rank = successor.pop("rank", rank)
    preset_scale = successor.pop("scale", None)
    if preset_scale is not None and scale == GALORE_DEFAULTS["scale"]:
        scale = preset_scale
    successor.update({k: extra.pop(k) for k in list(extra) if k in SUCCESSOR_DEFAULTS})
    if successor and not is_galore(name):
        raise ValueError(
            f"{', '.join(sorted(successor))}: GaLore group options, but {name!r} is not a "
            "GaLore method (galore_* or one of its successors)"
        )
    if is_galore(name):
        groups: list[dict[str, Any]] = param_groups(
            model,
            rank=rank,
            update_proj_gap=update_proj_gap,
            scale=scale,
            proj_type=proj_type,
            target_modules=target_modules,
            svd=svd,
            moments=moments,
        )
        for group in groups:
            if "rank" in group:
                group.update(successor)
    else:
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        groups = [{"params": [p for _, p in named], "param_names": [n for n, _ in named]}]
    if (rounding := extra.pop("weight_rounding", None)) is not None:  # a group key (optim.rounding)
        groups = [{**g, "weight_rounding": rounding} for g in groups]
    kwargs: dict[str, Any] = {"lr": lr, "weight_decay": weight_decay, **extra}
    if not name.endswith("adafactor"):
        kwargs["betas"] = betas
        if eps is not None:
            kwargs["eps"] = eps
    else:
        # an external lr is absolute (HF's recommended external-lr Adafactor), not relative to
        # each weight's RMS; pass scale_parameter=True to get the relative form
        kwargs.setdefault("scale_parameter", False)
        if eps is not None:
            kwargs["eps"] = (1e-30, eps)
    if layerwise:
        from galorekit.optim.layerwise import LayerwiseOptimizer

        return LayerwiseOptimizer(groups, cls, accumulation_steps=accumulation_steps, **kwargs)
    return cls(groups, **kwargs)
