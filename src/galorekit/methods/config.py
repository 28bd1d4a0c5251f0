"""``MethodConfig``: the one description of a training method and its hyper-parameters, and the
single source of their defaults (GaLore's come from ``galorekit.names.GALORE_DEFAULTS``). Each
field's metadata carries its help text, for commands that generate their flags from it."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from galorekit.names import (
    ALL_METHODS,
    DEFAULT_LR,
    GALORE_DEFAULTS,
    MOMENT_POLICIES,
    OPTIMIZER_NAMES,
    REFERENCE_METHODS,
    STATE_DTYPES,
    SVD_METHOD_NAMES,
    WEIGHT_ROUNDINGS,
    method_info,
)


def _opt(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass
class MethodConfig:
    """What :func:`galorekit.methods.setup` needs; the commands fill it from their flags."""

    method: str = _opt("galore_adamw", "training method")
    lr: float | None = _opt(
        None,
        "peak learning rate (default per method: "
        + ", ".join(f"{k} {v:g}" for k, v in DEFAULT_LR.items())
        + ")",
    )
    weight_decay: float = _opt(0.0, "decoupled weight decay")
    rank: int | None = _opt(
        None,
        "projection rank (GaLore) or adapter rank (LoRA, ReLoRA, Low-Rank); default "
        "hidden_size // 4 as in the paper",
    )
    update_proj_gap: int = _opt(
        GALORE_DEFAULTS["update_proj_gap"], "T: optimizer steps between subspace refreshes"
    )
    scale: float = _opt(GALORE_DEFAULTS["scale"], "alpha: scale of the update")
    proj_type: str = _opt(GALORE_DEFAULTS["proj_type"], "projection side")
    svd: str | None = _opt(
        None,
        f"subspace refresh method: {', '.join(SVD_METHOD_NAMES)}, or a name registered in "
        f"galorekit.projection.SVD_METHODS (default: {GALORE_DEFAULTS['svd']})",
    )
    moments: str = _opt(
        GALORE_DEFAULTS["moments"],
        "what a subspace refresh does with Adam's moments: project (into the new basis), align "
        "(match the basis, keep them), keep (galore-torch), reset",
    )
    state_dtype: str | None = _opt(
        None,
        "dtype of the optimizer's moments (default: the parameters'; float32 keeps bf16 "
        "weights' second moment decaying)",
    )
    weight_rounding: str = _opt(
        "nearest",
        "how bf16 weights (--precision bf16-true) take their updates: nearest, or stochastic "
        "(w + update computed in fp32 and rounded up or down at random, so that updates below "
        "bf16's spacing still count in expectation)",
    )
    layerwise: bool = _opt(
        False, "update each parameter during backward and free its gradient (optimizer methods)"
    )
    accumulation_steps: int = _opt(1, "micro-batches per optimizer step")
    max_grad_norm: float | None = _opt(
        1.0,
        "global gradient-norm clip (0 or None: off); layer-wise runs clip by the previous "
        "step's norm",
    )
    lora_alpha: float = _opt(32.0, "LoRA/ReLoRA alpha")
    lora_dropout: float = _opt(0.0, "LoRA/ReLoRA dropout")
    relora_reset_every: int | None = _opt(
        None, "ReLoRA: steps between merge-and-reinit (default max_steps // 4)"
    )
    relora_prune: float = _opt(
        0.99, "ReLoRA: fraction of the adapters' optimizer states pruned at each reset"
    )

    def __post_init__(self) -> None:
        if self.method not in ALL_METHODS:
            method_info(self.method)  # raises the one-line message (renamed or unknown)
            raise ValueError(f"unknown method {self.method!r}; valid: {', '.join(ALL_METHODS)}")
        if self.layerwise and self.method not in OPTIMIZER_NAMES:
            raise ValueError(
                f"--layerwise applies to the optimizer methods ({', '.join(OPTIMIZER_NAMES)}), "
                f"not to {self.method}"
            )
        if self.moments not in MOMENT_POLICIES:
            raise ValueError(
                f"unknown moments policy {self.moments!r}; valid: {', '.join(MOMENT_POLICIES)}"
            )
        if self.state_dtype not in (None, *STATE_DTYPES):
            raise ValueError(
                f"unknown state dtype {self.state_dtype!r}; valid: {', '.join(STATE_DTYPES)}"
            )
        if self.weight_rounding not in WEIGHT_ROUNDINGS:
            raise ValueError(
                f"unknown weight rounding {self.weight_rounding!r}; valid: "
                + ", ".join(WEIGHT_ROUNDINGS)
            )
        if self.method in REFERENCE_METHODS and self.weight_rounding != "nearest":
            raise ValueError(f"{self.method} (galore-torch's code) rounds its updates to nearest")
        if self.method in REFERENCE_METHODS and self.svd not in (None, "exact"):
            raise ValueError(
                f"{self.method} always refreshes with an exact SVD (torch.linalg.svd); "
                f"--svd {self.svd} applies to galorekit's GaLore methods only"
            )

    @property
    def peak_lr(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.method]

    def galore_group(self, rank: int) -> dict[str, Any]:
        """GaLore's parameter-group keys for this configuration (``svd`` only when set)."""
        group: dict[str, Any] = {
            "rank": rank,
            "update_proj_gap": self.update_proj_gap,
            "scale": self.scale,
            "proj_type": self.proj_type,
            "moments": self.moments,
        }
        if self.svd is not None:
            group["svd"] = self.svd
        return group


def field_help(cls: type = MethodConfig) -> dict[str, str]:
    """``{field: help text}`` of a config dataclass, for generated command lines."""
    return {f.name: f.metadata.get("help", "") for f in fields(cls)}
