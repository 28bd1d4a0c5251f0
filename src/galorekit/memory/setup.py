"""What a memory estimate is about: one training configuration (method, precision, batch, ...)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from galorekit.memory.names import (
    ATTN_IMPLEMENTATIONS,
    PRECISION_DTYPES,
    RENAMED_PRECISIONS,
    SetupFields,
    resolve_precision,
)
from galorekit.names import BASELINES, METHODS, PROJ_TYPES, method_info
from galorekit.optim import OPTIMIZER_NAMES

__all__ = [
    "ATTN_IMPLEMENTATIONS",
    "BASELINE_METHODS",
    "METHODS",
    "PRECISIONS",
    "RENAMED_PRECISIONS",
    "TrainingSetup",
    "check_method",
    "optimizer_name",
    "parse_target_modules",
    "resolve_precision",
    "uses_rank",
]

#: the baselines that change the model rather than the optimizer; they train with AdamW
BASELINE_METHODS = BASELINES


def _dtype(name: str | None) -> torch.dtype | None:
    return None if name is None else getattr(torch, name)


#: precision → (parameter dtype, autocast dtype or None); see ``galorekit.memory.names``
PRECISIONS: dict[str, tuple[torch.dtype, torch.dtype | None]] = {
    key: (_dtype(param), _dtype(autocast)) for key, (param, autocast) in PRECISION_DTYPES.items()
}


def optimizer_name(method: str) -> str:
    """The optimizer a method trains with (the baselines use AdamW on their trainable params)."""
    check_method(method)
    return method_info(method).optimizer


def check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")


def uses_rank(method: str) -> bool:
    """Whether ``rank`` means anything for ``method`` (GaLore and the low-rank baselines)."""
    return method_info(method).uses_rank


@dataclass(frozen=True)
class TrainingSetup(SetupFields):
    """One training configuration, everything that decides its memory (the fields, their defaults
    and help texts are ``galorekit.memory.names.SetupFields``, torch-free for the parser).

    ``target_modules``: None for each method's default (attention and MLP projections), else
    what ``galorekit.param_groups`` and the baselines accept (peft's rules, see
    ``galorekit.optim.targets``: ``"all-linear"``, a regex matching whole names, or a list of
    module names matched whole or as a suffix after a dot). ``accumulation_steps`` matters only with ``layerwise``: the accumulated
    gradients of every parameter live between micro-batches (see ``LayerwiseOptimizer``).
    """

    def __post_init__(self) -> None:
        check_method(self.method)
        object.__setattr__(self, "precision", resolve_precision(self.precision))
        if self.proj_type not in PROJ_TYPES:
            raise ValueError(
                f"unknown proj_type {self.proj_type!r}; valid: {', '.join(PROJ_TYPES)}"
            )
        if self.attn_implementation not in ATTN_IMPLEMENTATIONS:
            raise ValueError(
                f"unknown attention implementation {self.attn_implementation!r}; valid: "
                f"{', '.join(ATTN_IMPLEMENTATIONS)}"
            )
        for name in ("rank", "batch_size", "seq_len", "accumulation_steps"):
            value = getattr(self, name)
            if name == "rank" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.layerwise and self.method in BASELINE_METHODS:
            raise ValueError(
                f"layer-wise updates apply to the optimizer methods ({', '.join(OPTIMIZER_NAMES)}), "
                f"not to {self.method} (as in galore pretrain)"
            )
        if isinstance(self.target_modules, list):
            object.__setattr__(self, "target_modules", tuple(self.target_modules))

    @property
    def param_dtype(self) -> torch.dtype:
        return PRECISIONS[self.precision][0]

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return PRECISIONS[self.precision][1]

    @property
    def optimizer(self) -> str:
        return optimizer_name(self.method)

    @property
    def tokens(self) -> int:
        """Tokens per micro-batch."""
        return self.batch_size * self.seq_len

    def label(self) -> str:
        """``"galore_adamw8bit (layer-wise)"``-style name for tables and plots."""
        name = self.method
        if uses_rank(self.method) and self.rank is not None:
            name += f" r{self.rank}"
        return name + (" (layer-wise)" if self.layerwise else "")

    def with_(self, **changes) -> TrainingSetup:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)


def parse_target_modules(text: str | None) -> str | tuple[str, ...] | None:
    """The CLI's ``--target-modules``: ``all-linear``, ``re:REGEX`` (matching whole names), or
    comma-separated module names (``q_proj,v_proj``: a whole name or its end after a dot); None or
    empty for the default."""
    if text is None or not text.strip():
        return None
    text = text.strip()
    if text == "all-linear":
        return text
    if text.startswith("re:"):
        return text[3:]
    parts: Sequence[str] = [t.strip() for t in text.split(",") if t.strip()]
    if not parts:
        raise ValueError(f"--target-modules {text!r} names no module")
    return tuple(parts)
