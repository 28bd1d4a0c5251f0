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
    method_info,
)


def _opt(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass
class MethodConfig:
    """What :func:`galorekit.methods.setup` needs; the commands fill it from their flags."""

    method: str = _opt("galore_adamw", "training method (optimizer or adapter baseline)")
    lr: float | None = _opt(None, "peak learning rate (default: the method's, names.DEFAULT_LR)")
    weight_decay: float = _opt(0.0, "decoupled weight decay")
    rank: int | None = _opt(None, "GaLore/adapter rank (default: hidden_size // 4)")
    update_proj_gap: int = _opt(
        GALORE_DEFAULTS["update_proj_gap"], "T: optimizer steps between subspace refreshes"
    )
    scale: float = _opt(GALORE_DEFAULTS["scale"], "alpha: scale of GaLore's update")
    proj_type: str = _opt(GALORE_DEFAULTS["proj_type"], "which side GaLore projects")
    svd: str | None = _opt(None, "subspace refresh method (default: galorekit's)")
    moments: str = _opt(
        GALORE_DEFAULTS["moments"],
        "what a subspace refresh does with Adam's moments: project them into the new basis, "
        "align the basis and keep them, keep them as they are (galore-torch), or reset them",
    )
    state_dtype: str | None = _opt(
        None,
        "dtype of the optimizer's moments (default: the parameter's; float32 for bf16 "
        "weights whose bf16 second moment cannot decay)",
    )
    layerwise: bool = _opt(False, "update each parameter during backward (layer-wise)")
    accumulation_steps: int = _opt(1, "micro-batches per optimizer step")
    max_grad_norm: float | None = _opt(1.0, "gradient clipping norm (None: no clipping)")
    lora_alpha: float = _opt(32.0, "LoRA scaling numerator (alpha / rank)")
    lora_dropout: float = _opt(0.0, "dropout on the LoRA adapters' input")
    relora_reset_every: int | None = _opt(None, "ReLoRA merge period (default: total steps / 4)")
    relora_prune: float = _opt(0.99, "fraction of optimizer state ReLoRA prunes at a merge")

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
