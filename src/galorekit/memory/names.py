"""The names a training setup is made of, importable without torch: ``galore --help`` builds
``galore memory``'s parser from them, so this module imports nothing heavy.

Precisions, precision aliases and attention implementations are defined here (``setup`` maps
the precisions to torch dtypes); ``METHODS`` and ``PROJ_TYPES`` come from ``galorekit.names``.
"""

from __future__ import annotations

from galorekit.names import METHODS, PROJ_TYPES  # noqa: F401  (re-exported)

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
