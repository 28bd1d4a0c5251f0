"""Training methods of the paper: an optimizer (GaLore or full-rank) or a baseline that changes the
model (LoRA, ReLoRA, Low-Rank) plus AdamW. ``setup_method`` turns a method name into the model to
train, its optimizer and, for ReLoRA, the restart controller.

``galore_torch_adamw`` is the reference implementation, galore-torch 1.0's ``GaLoreAdamW``, over the
same parameter groups as ``galore_adamw`` (``pip install galore-torch``): it always refreshes with
an exact SVD, and its projector objects are stored in checkpoints as tensors (see
``_galore_torch_adamw_class``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from galorekit.names import (  # noqa: F401  (re-exported)
    ALL_METHODS,
    BASELINES,
    DEFAULT_LR,
    METHODS,
    REFERENCE_METHODS,
)
from galorekit.optim import OPTIMIZER_NAMES, create_optimizer

GALORE_TORCH_INSTALL = "pip install galore-torch==1.0"


@dataclass
class MethodConfig:
    """What ``setup_method`` needs; the CLI fills it from its flags."""

    method: str = "galore_adamw"
    lr: float | None = None
    weight_decay: float = 0.0
    rank: int | None = None  # None: hidden_size // 4, the paper's ratio
    update_proj_gap: int = 200
    scale: float = 0.25
    proj_type: str = "std"
    svd: str | None = None  # None: galorekit's default
    layerwise: bool = False
    accumulation_steps: int = 1
    max_grad_norm: float | None = 1.0
    lora_alpha: float = 32.0
    lora_dropout: float = 0.0
    relora_reset_every: int | None = None
    relora_prune: float = 0.99

    def __post_init__(self) -> None:
        if self.method not in ALL_METHODS:
            raise ValueError(f"unknown method {self.method!r}; valid: {', '.join(ALL_METHODS)}")
        if self.layerwise and self.method not in OPTIMIZER_NAMES:
            raise ValueError(
                f"--layerwise applies to the optimizer methods ({', '.join(OPTIMIZER_NAMES)}), "
                f"not to {self.method}"
            )
        if self.method in REFERENCE_METHODS and self.svd not in (None, "exact"):
            raise ValueError(
                f"{self.method} always refreshes with an exact SVD (torch.linalg.svd); "
                f"--svd {self.svd} applies to galorekit's GaLore methods only"
            )

    @property
    def peak_lr(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.method]


@dataclass
class MethodSetup:
    model: nn.Module
    optimizer: torch.optim.Optimizer
    relora: Any = None  # galorekit.train.baselines.ReLoRA for method "relora"


def default_rank(model: nn.Module) -> int:
    hidden = getattr(getattr(model, "config", None), "hidden_size", None)
    if not hidden:
        raise ValueError("cannot derive a default rank: the model has no config.hidden_size")
    return max(1, hidden // 4)


def adapter_rank(model: nn.Module, rank: int) -> tuple[int, str | None]:
    """``(rank, note)``: adapters need rank < min(in, out) of every targeted layer; a larger rank
    is clamped (as GaLore's is) rather than failing a long run's launch, and ``note`` says so."""
    from galorekit.train.baselines import max_adapter_rank, resolve_target_modules

    limit = max_adapter_rank(model, resolve_target_modules(model))
    if rank > limit:
        return (
            limit,
            f"rank {rank} ≥ the smallest targeted dimension {limit + 1}; clamped to {limit}",
        )
    return rank, None


def _clamp_adapter_rank(model: nn.Module, rank: int, method: str) -> int:
    import warnings

    rank, note = adapter_rank(model, rank)
    if note is not None:
        warnings.warn(f"{method}: {note}", UserWarning, stacklevel=3)
    return rank


def setup_method(model: nn.Module, cfg: MethodConfig, *, total_steps: int) -> MethodSetup:
    """Apply ``cfg.method`` to ``model`` and build its optimizer."""
    rank = cfg.rank if cfg.rank is not None else default_rank(model)
    lr = cfg.peak_lr
    if cfg.method in OPTIMIZER_NAMES:
        from galorekit.models import default_target_modules

        extra: dict[str, Any] = {}
        if cfg.layerwise and cfg.max_grad_norm is not None:
            extra["max_grad_norm"] = cfg.max_grad_norm  # clipped in the hooks (previous-step norm)
        if cfg.svd is not None:
            extra["svd"] = cfg.svd
        optimizer = create_optimizer(
            model,
            cfg.method,
            lr=lr,
            weight_decay=cfg.weight_decay,
            rank=rank,
            update_proj_gap=cfg.update_proj_gap,
            scale=cfg.scale,
            proj_type=cfg.proj_type,
            target_modules=default_target_modules(model),
            layerwise=cfg.layerwise,
            accumulation_steps=cfg.accumulation_steps,
            **extra,
        )
        return MethodSetup(model, optimizer)
    if cfg.method == "galore_torch_adamw":
        return MethodSetup(model, _galore_torch_adamw(model, cfg, rank=rank, lr=lr))

    from galorekit.optim import GaLoreAdamW
    from galorekit.train.baselines import ReLoRA, apply_lora, apply_low_rank

    rank = _clamp_adapter_rank(model, rank, cfg.method)
    relora = None
    if cfg.method == "lora":
        model = apply_lora(model, rank=rank, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout)
    elif cfg.method == "relora":
        reset_every = cfg.relora_reset_every or max(2, total_steps // 4)
        relora = ReLoRA(
            model,
            rank=rank,
            alpha=cfg.lora_alpha,
            dropout=cfg.lora_dropout,
            reset_every=reset_every,
            optimizer_reset_prune=cfg.relora_prune,
        )
        model = relora.model
    else:
        model = apply_low_rank(model, rank=rank)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    # plain AdamW (GaLoreAdamW without a GaLore group), the baselines' optimizer in the paper
    optimizer = GaLoreAdamW(
        [{"params": [p for _, p in named], "param_names": [n for n, _ in named]}],
        lr=lr,
        weight_decay=cfg.weight_decay,
    )
    return MethodSetup(model, optimizer, relora)


def _galore_torch_adamw(
    model: nn.Module, cfg: MethodConfig, *, rank: int, lr: float
) -> torch.optim.Optimizer:
    """galore-torch's GaLoreAdamW over galorekit's parameter groups (same targets, same keys)."""
    from galorekit.models import default_target_modules
    from galorekit.optim import param_groups

    cls = _galore_torch_adamw_class()
    groups = param_groups(
        model,
        rank=rank,
        update_proj_gap=cfg.update_proj_gap,
        scale=cfg.scale,
        proj_type=cfg.proj_type,
        target_modules=default_target_modules(model),
    )
    return cls(groups, lr=lr, weight_decay=cfg.weight_decay, no_deprecation_warning=True)


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
        raise ImportError(
            f"method galore_torch_adamw needs the reference package galore-torch ({err}); "
            f"install it with `{GALORE_TORCH_INSTALL}` (galorekit's extra: "
            "`pip install galorekit[reference]`)"
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
