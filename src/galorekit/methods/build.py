"""Apply a training method to a model: the one place that turns a :class:`MethodConfig` into the
model to train (adapters where the method has them), its optimizer and, for ReLoRA, the restart
controller. ``galore pretrain``, ``galore finetune`` and ``galore memory`` build their methods here
(``galore bench``, which times optimizers over bare parameter lists, takes GaLore's group keys
from ``MethodConfig.galore_group``).

``galore_torch_adamw`` is the reference implementation, galore-torch 1.0's ``GaLoreAdamW``, over the
same parameter groups as ``galore_adamw`` (``galorekit[reference]``): it always refreshes with an
exact SVD, and its projector objects are stored in checkpoints as tensors (see
``_galore_torch_adamw_class``)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from galorekit.extras import MissingExtraError, install_hint, needs_extra
from galorekit.methods.config import MethodConfig
from galorekit.models.targets import (
    TargetSpec,
    default_target_modules,
    max_adapter_rank,
    resolve_target_modules,
)
from galorekit.names import GALORE_TORCH_INSTALL, method_info
from galorekit.optim import create_optimizer, param_groups


@dataclass
class MethodSetup:
    """What :func:`setup` returns: the model to train, its optimizer and the extras of the method
    (``relora``: the ``ReLoRA`` restart controller of method ``relora``)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    relora: Any = None


def default_rank(model: nn.Module) -> int:
    """``hidden_size // 4``, the paper's ratio."""
    hidden = getattr(getattr(model, "config", None), "hidden_size", None)
    if not hidden:
        raise ValueError("cannot derive a default rank: the model has no config.hidden_size")
    return max(1, hidden // 4)


def adapter_rank(
    model: nn.Module, rank: int, target_modules: TargetSpec = None
) -> tuple[int, str | None]:
    """``(rank, note)``: adapters need rank < min(in, out) of every targeted layer; a larger rank
    is clamped (as GaLore's is) rather than failing a long run's launch, and ``note`` says so."""
    limit = max_adapter_rank(model, resolve_target_modules(model, target_modules))
    if rank > limit:
        return (
            limit,
            f"rank {rank} ≥ the smallest targeted dimension {limit + 1}; clamped to {limit}",
        )
    return rank, None


def _clamp_adapter_rank(
    model: nn.Module, rank: int, method: str, target_modules: TargetSpec = None
) -> int:
    rank, note = adapter_rank(model, rank, target_modules)
    if note is not None:
        warnings.warn(f"{method}: {note}", UserWarning, stacklevel=4)
    return rank


def apply_adapters(
    model: nn.Module,
    cfg: MethodConfig,
    *,
    rank: int,
    total_steps: int | None = None,
    target_modules: TargetSpec = None,
) -> tuple[nn.Module, Any]:
    """``(model, relora)``: ``model`` changed as ``cfg.method`` changes it (LoRA adapters, ReLoRA's
    restartable adapters, Low-Rank factors); unchanged for the optimizer methods. ``rank`` must
    be valid for the targets (see :func:`adapter_rank`)."""
    if not method_info(cfg.method).changes_model:
        return model, None
    with needs_extra("train"):  # peft: imported here so that the core install needs only torch
        from galorekit.methods.adapters import ReLoRA, apply_lora, apply_low_rank
    if cfg.method == "lora":
        lora = apply_lora(
            model,
            rank=rank,
            alpha=cfg.lora_alpha,
            dropout=cfg.lora_dropout,
            target_modules=target_modules,
        )
        return lora, None
    if cfg.method == "relora":
        if total_steps is None and cfg.relora_reset_every is None:
            raise ValueError("relora needs total_steps (or relora_reset_every)")
        relora = ReLoRA(
            model,
            rank=rank,
            alpha=cfg.lora_alpha,
            dropout=cfg.lora_dropout,
            reset_every=cfg.relora_reset_every or max(2, (total_steps or 0) // 4),
            optimizer_reset_prune=cfg.relora_prune,
            target_modules=target_modules,
        )
        return relora.model, relora
    return apply_low_rank(model, rank=rank, target_modules=target_modules), None


def build_optimizer(
    model: nn.Module,
    cfg: MethodConfig,
    *,
    rank: int,
    target_modules: TargetSpec = None,
    total_steps: int | None = None,
) -> torch.optim.Optimizer:
    """``cfg.method``'s optimizer over ``model`` (already changed by :func:`apply_adapters`).
    ``total_steps``: the run's length (GoLore's ``random_after`` is a fraction of it).

    GaLore methods put the targeted matrices (``target_modules``, default
    :func:`galorekit.models.default_target_modules`) in a GaLore group; the adapters train their
    trainable parameters with plain AdamW (GaLoreAdamW without a GaLore group), the paper's
    baselines' optimizer."""
    info = method_info(cfg.method)
    if info.is_galore:
        targets = (
            default_target_modules(model)
            if target_modules is None
            else resolve_target_modules(model, target_modules)
        )
        if info.reference:
            return _galore_torch_adamw(model, cfg, rank=rank, targets=targets)
    extra: dict[str, Any] = {}
    if cfg.layerwise and cfg.max_grad_norm is not None:
        extra["max_grad_norm"] = cfg.max_grad_norm  # clipped in the hooks (previous-step norm)
    if info.is_galore:
        extra.update(cfg.galore_group(rank, total_steps=total_steps), target_modules=targets)
    if cfg.state_dtype is not None:
        extra["state_dtype"] = cfg.state_dtype
    if cfg.weight_rounding != "nearest":
        extra["weight_rounding"] = cfg.weight_rounding
    return create_optimizer(
        model,
        info.optimizer,
        lr=cfg.peak_lr,
        weight_decay=cfg.weight_decay,
        layerwise=cfg.layerwise,
        accumulation_steps=cfg.accumulation_steps,
        **extra,
    )


def setup(
    model: nn.Module,
    cfg: MethodConfig,
    *,
    total_steps: int | None = None,
    target_modules: TargetSpec = None,
) -> MethodSetup:
    """Apply ``cfg.method`` to ``model`` and build its optimizer. ``cfg.rank=None`` means
    ``hidden_size // 4``; an adapter rank at or above the smallest targeted dimension is clamped
    below it, with a warning. ``total_steps`` sets ReLoRA's default merge period."""
    rank = cfg.rank if cfg.rank is not None else default_rank(model)
    if method_info(cfg.method).changes_model:
        rank = _clamp_adapter_rank(model, rank, cfg.method, target_modules)
    model, relora = apply_adapters(
        model, cfg, rank=rank, total_steps=total_steps, target_modules=target_modules
    )
    optimizer = build_optimizer(
        model, cfg, rank=rank, target_modules=target_modules, total_steps=total_steps
    )
    return MethodSetup(model, optimizer, relora)


def _galore_torch_adamw(
    model: nn.Module, cfg: MethodConfig, *, rank: int, targets: list[str]
) -> torch.optim.Optimizer:
    """galore-torch's GaLoreAdamW over galorekit's parameter groups (same targets, same keys)."""
    cls = _galore_torch_adamw_class()
    groups = param_groups(
        model,
        rank=rank,
        update_proj_gap=cfg.update_proj_gap,
        scale=cfg.scale,
        proj_type=cfg.proj_type,
        target_modules=targets,
    )
    return cls(groups, lr=cfg.peak_lr, weight_decay=cfg.weight_decay, no_deprecation_warning=True)


_REFERENCE_CLASSES: dict[str, type] = {}


def _galore_torch_adamw_class() -> type:
    """``galore_torch.GaLoreAdamW`` with a checkpointable state dict (created once).

    galore-torch keeps a ``GaLoreProjector`` object in each GaLore parameter's state, which
    ``torch.load(weights_only=True)`` cannot restore (so galorekit refuses to save it). The
    subclass stores the projector's matrix instead (``projector_ortho``; its hyper-parameters are
    the group's) and rebuilds the object on load. The update itself is galore-torch's, untouched.
    """
    if "adamw" in _REFERENCE_CLASSES:
        return _REFERENCE_CLASSES["adamw"]
    try:
        import galore_torch
        from galore_torch.galore_projector import GaLoreProjector
    except ImportError as err:
        raise MissingExtraError(
            f"method galore_torch_adamw needs the reference package galore-torch ({err}): "
            f"{GALORE_TORCH_INSTALL}, or {install_hint('reference')}",
            name="galore_torch",
        ) from err

    class GaLoreTorchAdamW(galore_torch.GaLoreAdamW):
        def state_dict(self) -> dict[str, Any]:
            packed = super().state_dict()
            packed["state"] = {
                pid: {
                    ("projector_ortho" if k == "projector" else k): (
                        v.ortho_matrix if k == "projector" else v
                    )
                    for k, v in pstate.items()
                }
                for pid, pstate in packed["state"].items()
            }
            return packed

        def load_state_dict(self, state_dict: dict[str, Any]) -> None:
            super().load_state_dict(state_dict)
            for group in self.param_groups:
                for p in group["params"]:
                    pstate = self.state.get(p, {})
                    if "projector_ortho" in pstate:
                        projector = GaLoreProjector(
                            group["rank"],
                            update_proj_gap=group["update_proj_gap"],
                            scale=group["scale"],
                            proj_type=group["proj_type"],
                        )
                        projector.ortho_matrix = pstate.pop("projector_ortho")
                        pstate["projector"] = projector

    GaLoreTorchAdamW.__qualname__ = GaLoreTorchAdamW.__name__ = "GaLoreTorchAdamW"
    _REFERENCE_CLASSES["adamw"] = GaLoreTorchAdamW
    return GaLoreTorchAdamW
