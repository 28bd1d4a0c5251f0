"""The names a training setup is made of, importable without torch: ``galore --help`` builds
``galore memory``'s parser from them, so this module imports nothing heavy.

Precisions, precision aliases and attention implementations are defined here (``setup`` maps
the precisions to torch dtypes); ``METHODS`` and ``PROJ_TYPES`` come from ``galorekit.names``.
"""

from __future__ import annotations

from galorekit.names import METHODS, PROJ_TYPES  # noqa: F401  (re-exported)

#: precision → (parameter dtype, autocast dtype or None), as ``torch`` attribute names.
#: ``bf16``/``fp16`` are *pure* 16-bit training (weights, gradients and optimizer states in 16 bit,
#: the paper's memory setting); ``*-mixed`` keep float32 weights and run the forward under
#: ``torch.autocast``.
PRECISION_DTYPES: dict[str, tuple[str, str | None]] = {
    "fp32": ("float32", None),
    "bf16": ("bfloat16", None),
    "fp16": ("float16", None),
    "bf16-mixed": ("float32", "bfloat16"),
    "fp16-mixed": ("float32", "float16"),
}
#: ``galore pretrain --dtype`` spellings: float32, and bfloat16 = autocast over float32 weights
PRECISION_ALIASES: dict[str, str] = {"float32": "fp32", "bfloat16": "bf16-mixed"}
#: every spelling ``--dtype`` accepts
PRECISION_NAMES: tuple[str, ...] = (*PRECISION_DTYPES, *PRECISION_ALIASES)

#: attention implementations the activation formula knows (``sdpa``: a fused kernel saving
#: q, k, v, the output and the log-sum-exp; ``eager``: the explicit softmax(QKᵀ)V)
ATTN_IMPLEMENTATIONS: tuple[str, ...] = ("sdpa", "eager")


def resolve_precision(name: str) -> str:
    """A key of ``PRECISION_DTYPES`` (``galore pretrain``'s ``float32``/``bfloat16`` accepted)."""
    key = PRECISION_ALIASES.get(name, name)
    if key not in PRECISION_DTYPES:
        raise ValueError(f"unknown precision {name!r}; valid: {', '.join(PRECISION_NAMES)}")
    return key
