"""The names a training setup is made of, importable without torch: ``galore --help`` builds
``galore memory``'s parser from them, so this module imports nothing heavy.

Precisions, precision aliases and attention implementations are defined here (``setup`` maps
the precisions to torch dtypes); ``METHODS`` and ``PROJ_TYPES`` come from ``galorekit.names``.
``SetupFields`` declares a training setup's fields, each with its default and the help text of its
``galore memory`` flag; ``setup.TrainingSetup`` builds on it (validation, torch dtypes).
"""

from __future__ import annotations

from dataclasses import dataclass

from galorekit.config import option
from galorekit.names import METHODS, PROJ_TYPES, STATE_DTYPES

#: precision → (parameter dtype, autocast dtype or None), as ``torch`` attribute names — the one
#: vocabulary of every command (``galore pretrain --precision`` offers the ones it trains):
#: ``*-true`` is pure 16-bit training (weights, gradients and optimizer states in 16 bit, the
#: paper's memory setting); ``*-mixed`` keeps float32 weights and runs the forward under
#: ``torch.autocast``.
PRECISION_DTYPES: dict[str, tuple[str, str | None]] = {
    "fp32": ("float32", None),
    "bf16-true": ("bfloat16", None),
    "fp16-true": ("float16", None),
    "bf16-mixed": ("float32", "bfloat16"),
    "fp16-mixed": ("float32", "float16"),
}
#: former spellings (``galore memory --dtype`` and ``galore pretrain --dtype``), refused with the
#: name that now says the same
RENAMED_PRECISIONS: dict[str, str] = {
    "bf16": "bf16-true",
    "fp16": "fp16-true",
    "float32": "fp32",
    "bfloat16": "bf16-mixed",
}
#: every spelling ``--precision`` accepts
PRECISION_NAMES: tuple[str, ...] = tuple(PRECISION_DTYPES)

#: attention implementations the activation formula knows (``sdpa``: a fused kernel saving
#: q, k, v, the output and the log-sum-exp; ``eager``: the explicit softmax(QKᵀ)V)
ATTN_IMPLEMENTATIONS: tuple[str, ...] = ("sdpa", "eager")


def resolve_precision(name: str) -> str:
    """``name`` if it is a key of ``PRECISION_DTYPES``; a former spelling is refused with the
    name that now means the same."""
    if name in RENAMED_PRECISIONS:
        raise ValueError(
            f"precision {name!r} is now {RENAMED_PRECISIONS[name]!r} (bf16-true: bf16 weights; "
            "bf16-mixed: autocast over float32 weights)"
        )
    if name not in PRECISION_DTYPES:
        raise ValueError(f"unknown precision {name!r}; valid: {', '.join(PRECISION_NAMES)}")
    return name


#: the method estimated when none is asked for (``--budget`` then tries them all)
DEFAULT_METHOD = "galore_adamw"


@dataclass(frozen=True)
class SetupFields:
    """The fields of ``galorekit.memory.TrainingSetup``, torch-free: each ``option`` field is one
    flag of ``galore memory`` (default and help text here only) and one key of its ``--config``
    files. See ``TrainingSetup`` for their meaning in the Python API."""

    method: str = option(
        DEFAULT_METHOD,
        f"one of: {', '.join(METHODS)} (default {DEFAULT_METHOD}; with --budget: all)",
        group="model",
        aliases=("--optimizer",),
        metavar="METHOD",
        show_default=False,
    )
    rank: int | None = option(
        None,
        "GaLore projection rank or LoRA/ReLoRA/Low-Rank rank (default hidden_size // 4, as galore "
        "pretrain)",
        group="model",
    )
    layerwise: bool = option(
        False,
        "layer-wise updates: each gradient freed right after its parameter's update, so at most "
        "one exists at a time (optimizer methods)",
        group="model",
    )
    batch_size: int = option(1, "sequences per micro-batch", group="step")
    seq_len: int = option(256, "tokens per sequence", group="step")
    precision: str = option(
        "bf16-true",
        "bf16-true/fp16-true: pure 16-bit training, weights, gradients and states in 16 bit (the "
        "paper's setting); fp32; bf16-mixed/fp16-mixed: float32 weights with autocast (what "
        "galore pretrain --precision bf16-mixed trains)",
        group="step",
        choices=PRECISION_NAMES,
    )
    activation_checkpointing: bool = option(
        False,
        "checkpoint every decoder layer (keep layer inputs, recompute in backward)",
        group="step",
    )
    proj_type: str = option(
        "std",
        "GaLore projection side; decides the projector and moment shapes",
        group="model",
        choices=PROJ_TYPES,
    )
    target_modules: str | tuple[str, ...] | None = option(
        None,
        "modules GaLore / the baselines act on, as peft matches them: comma-separated module "
        "names, each matching a whole name or its end after a dot (q_proj,v_proj), 'all-linear', "
        "or re:REGEX matching whole names (default: attention and MLP projections)",
        group="model",
    )
    attn_implementation: str = option(
        "sdpa",
        "attention kernel whose saved tensors are counted",
        group="step",
        choices=ATTN_IMPLEMENTATIONS,
    )
    accumulation_steps: int = option(
        1,
        "micro-batches per optimizer step; with --layerwise the accumulated gradients are held "
        "between micro-batches",
        group="step",
    )
    lora_alpha: float = 32.0  # the LoRA scale's numerator: no flag (it does not change memory)
    state_dtype: str | None = option(
        None,
        "dtype of the optimizer's moments (default: the parameters'), as the optimizers' "
        "state_dtype: float32 keeps bf16 weights' second moment decaying, at 2 more bytes each",
        group="step",
        choices=STATE_DTYPES,
    )
