"""What a memory estimate is about: one training configuration (method, precision, batch, ...)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from galorekit.optim.factory import OPTIMIZER_NAMES
from galorekit.projection import PROJ_TYPES

#: the baselines that change the model rather than the optimizer; they train with AdamW
BASELINE_METHODS = ("lora", "relora", "low_rank")
#: every method of ``galore pretrain``
METHODS: tuple[str, ...] = (*OPTIMIZER_NAMES, *BASELINE_METHODS)

#: precision → (parameter dtype, autocast dtype or None). ``bf16``/``fp16`` are *pure* 16-bit
#: training (weights, gradients and optimizer states in 16 bit, the paper's memory setting);
#: ``*-mixed`` keep float32 weights and run the forward under ``torch.autocast``.
PRECISIONS: dict[str, tuple[torch.dtype, torch.dtype | None]] = {
    "fp32": (torch.float32, None),
    "bf16": (torch.bfloat16, None),
    "fp16": (torch.float16, None),
    "bf16-mixed": (torch.float32, torch.bfloat16),
    "fp16-mixed": (torch.float32, torch.float16),
}
#: ``galore pretrain --dtype`` spellings: float32, and bfloat16 = autocast over float32 weights
PRECISION_ALIASES = {"float32": "fp32", "bfloat16": "bf16-mixed"}


def resolve_precision(name: str) -> str:
    """A key of ``PRECISIONS`` (``galore pretrain``'s ``float32``/``bfloat16`` accepted)."""
    key = PRECISION_ALIASES.get(name, name)
    if key not in PRECISIONS:
        valid = [*PRECISIONS, *PRECISION_ALIASES]
        raise ValueError(f"unknown precision {name!r}; valid: {', '.join(valid)}")
    return key


#: attention implementations the activation formula knows (``sdpa``: a fused kernel saving
#: q, k, v, the output and the log-sum-exp; ``eager``: the explicit softmax(QKᵀ)V)
ATTN_IMPLEMENTATIONS = ("sdpa", "eager")


def optimizer_name(method: str) -> str:
    """The optimizer a method trains with (the baselines use AdamW on their trainable params)."""
    check_method(method)
    return "adamw" if method in BASELINE_METHODS else method


def check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")


def uses_rank(method: str) -> bool:
    """Whether ``rank`` means anything for ``method`` (GaLore and the low-rank baselines)."""
    return method.startswith("galore_") or method in BASELINE_METHODS


@dataclass(frozen=True)
class TrainingSetup:
    """One training configuration, everything that decides its memory.

    ``target_modules``: None for each method's default (attention and MLP projections), else
    what ``galorekit.param_groups`` and the baselines accept (``"all-linear"``, a regex, or a list
    of name substrings). ``accumulation_steps`` matters only with ``layerwise``: the accumulated
    gradients of every parameter live between micro-batches (see ``LayerwiseOptimizer``).
    """

    method: str = "galore_adamw"
    rank: int | None = None
    layerwise: bool = False
    batch_size: int = 1
    seq_len: int = 256
    precision: str = "bf16"
    activation_checkpointing: bool = False
    proj_type: str = "std"
    target_modules: str | tuple[str, ...] | None = None
    attn_implementation: str = "sdpa"
    accumulation_steps: int = 1
    lora_alpha: float = 32.0

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
    """The CLI's ``--target-modules``: ``all-linear``, ``re:REGEX``, or comma-separated name
    substrings (``q_proj,v_proj``); None or empty for the default."""
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
