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
    PROJECTIONS,
    PROJECTOR_BITS,
    REFERENCE_METHODS,
    RESIDUALS,
    SCALINGS,
    STATE_DTYPES,
    SUCCESSOR_DEFAULTS,
    SUCCESSOR_METHODS,
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
        "hidden_size // 4 as in the paper (apollo_mini: always 1, its definition)",
    )
    update_proj_gap: int = _opt(
        GALORE_DEFAULTS["update_proj_gap"], "T: optimizer steps between subspace refreshes"
    )
    scale: float | None = _opt(
        None,
        f"alpha: scale of the update (default {GALORE_DEFAULTS['scale']}; apollo_adamw 1, "
        "apollo_mini √128, their papers' settings)",
    )
    proj_type: str = _opt(GALORE_DEFAULTS["proj_type"], "projection side")
    svd: str | None = _opt(
        None,
        f"subspace refresh method: {', '.join(SVD_METHOD_NAMES)}, or a name registered in "
        f"galorekit.projection.SVD_METHODS (default: {GALORE_DEFAULTS['svd']})",
    )
    moments: str | None = _opt(
        None,
        "what a subspace refresh does with Adam's moments: project (into the new basis; the "
        "default), align (match the basis, keep them), keep (galore-torch; the default with a "
        "random projection), reset",
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
    # GaLore's successors (galorekit.names.SUCCESSOR_DEFAULTS); None: the method's own setting
    # (fira_adamw, apollo_adamw, apollo_mini, q_galore_adamw8bit, golore_adamw), else off
    residual: str | None = _opt(
        None,
        "Fira: 'fira' adds back the gradient outside the subspace, G - P·R, scaled per channel "
        "by the low-rank Adam's ‖N‖/‖R‖ (default: on for fira_adamw)",
    )
    projection: str | None = _opt(
        None,
        "subspace: 'svd' (GaLore) or 'random' (APOLLO: a seeded Gaussian projection, "
        "regenerated, never stored; default for apollo_adamw and apollo_mini)",
    )
    scaling: str | None = _opt(
        None,
        "APOLLO: 'channel' or 'tensor' scales the full gradient by the low-rank Adam's "
        "‖N‖/‖R‖ per channel or per tensor (apollo_adamw: channel, apollo_mini: tensor)",
    )
    norm_growth_limit: float | None = _opt(
        SUCCESSOR_DEFAULTS["norm_growth_limit"],
        "Fira/APOLLO: the full-rank term's norm may grow by at most this factor per step "
        "(0 or None: no limiter)",
    )
    projector_bits: int | None = _opt(
        None,
        "Q-GaLore: store projectors block-wise quantized to 4 or 8 bits (blocks of 256; "
        "default 4 for q_galore_adamw8bit)",
    )
    lazy_refresh: bool | None = _opt(
        None,
        "Q-GaLore: a matrix's refresh period doubles while its successive projectors stay "
        "similar (|cos| ≥ 0.4 over 5 refreshes; default on for q_galore_adamw8bit)",
    )
    random_after: float | None = _opt(
        None,
        "GoLore: after this fraction of the run (0-1), refreshes draw random orthonormal "
        "projections instead of the SVD's (default 0.8 for golore_adamw, its authors' script)",
    )
    projection_seed: int = _opt(
        SUCCESSOR_DEFAULTS["projection_seed"], "seed of the random projections (APOLLO, GoLore)"
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
        self._resolve_successor_options()
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

    def _resolve_successor_options(self) -> None:
        """Fill the fields left None from the method's own settings (``MethodInfo.group``), then
        from the defaults, and check the successors' values (the optimizer checks how they
        combine)."""
        info = method_info(self.method)
        # (a value equal to GaLore's own does nothing: a resumed run's config.json holds them)
        chosen = [
            k
            for k in ("residual", "projection", "scaling", "projector_bits", "lazy_refresh")
            if getattr(self, k) not in (None, SUCCESSOR_DEFAULTS[k])
        ] + (["random_after"] if self.random_after is not None else [])
        if chosen and (not info.is_galore or info.reference):
            raise ValueError(
                f"{', '.join(chosen)}: options of galorekit's GaLore methods (galore_* and "
                f"their successors), not of {self.method}"
            )
        preset = dict(info.group)
        for key in ("scale", "moments", *SUCCESSOR_DEFAULTS):
            if getattr(self, key, None) is None and key in preset:
                setattr(self, key, preset[key])
        if self.scale is None:
            self.scale = GALORE_DEFAULTS["scale"]
        if self.moments is None:
            self.moments = "keep" if self.projection == "random" else GALORE_DEFAULTS["moments"]
        if self.projection is None:
            self.projection = SUCCESSOR_DEFAULTS["projection"]
        if self.lazy_refresh is None:
            self.lazy_refresh = False
        if self.norm_growth_limit == 0:
            self.norm_growth_limit = None
        if self.method in SUCCESSOR_METHODS and "rank" in preset:
            self.rank = preset["rank"]  # APOLLO-Mini is rank 1 by definition
        checks = (
            ("residual", RESIDUALS, self.residual),
            ("projection", PROJECTIONS, self.projection),
            ("scaling", SCALINGS, self.scaling),
            ("projector_bits", PROJECTOR_BITS, self.projector_bits),
        )
        for key, valid, value in checks:
            if value is not None and value not in valid:
                raise ValueError(
                    f"unknown {key} {value!r}; valid: {', '.join(str(v) for v in valid)}"
                )
        if self.random_after is not None and not 0.0 <= self.random_after <= 1.0:
            raise ValueError(
                f"random_after is a fraction of the run in [0, 1], got {self.random_after!r}"
            )

    @property
    def peak_lr(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.method]

    def galore_group(self, rank: int, *, total_steps: int | None = None) -> dict[str, Any]:
        """GaLore's parameter-group keys for this configuration (``svd`` only when set; the
        successors' keys only where they differ from GaLore). ``random_after``, a fraction of the
        run, becomes a step of ``total_steps``; without it (commands that build an optimizer
        but run no schedule: ``galore memory``) it is left out — it changes no state."""
        group: dict[str, Any] = {
            # APOLLO-Mini is rank 1 whatever rank the command derived for the model
            "rank": dict(method_info(self.method).group).get("rank", rank),
            "update_proj_gap": self.update_proj_gap,
            "scale": self.scale,
            "proj_type": self.proj_type,
            "moments": self.moments,
        }
        if self.svd is not None:
            group["svd"] = self.svd
        values = {
            "residual": self.residual,
            "projection": self.projection,
            "scaling": self.scaling,
            "norm_growth_limit": self.norm_growth_limit,
            "projector_bits": self.projector_bits,
            "lazy_refresh": self.lazy_refresh,
            "projection_seed": self.projection_seed,
        }
        if self.random_after is not None and total_steps is not None:
            values["random_after"] = round(self.random_after * total_steps)
        group.update({k: v for k, v in values.items() if v != SUCCESSOR_DEFAULTS[k]})
        return group


def field_help(cls: type = MethodConfig) -> dict[str, str]:
    """``{field: help text}`` of a config dataclass, for generated command lines."""
    return {f.name: f.metadata.get("help", "") for f in fields(cls)}
