"""``galore bench``: time one optimizer step of torch AdamW, galore-torch and galorekit side by side.

On the GaLore-targeted weight shapes of a LLaMA size (per layer q, k, v, o: hidden×hidden; gate,
up: intermediate×hidden; down: hidden×intermediate) with synthetic low-rank-plus-noise gradients,
it measures for every optimizer, interleaved step by step so that a shared machine's load hits all
of them alike:

- the steady step (projector fixed) and the refresh step (new projector), as medians;
- the amortized step at ``T`` (``--update-proj-gap``): (refresh + (T-1)·steady) / T;
- the optimizer-state bytes (``galorekit.analysis.state_bytes``);
- subspace quality: the gradient energy captured by the projector, ‖PᵀG‖²/‖G‖² (or ‖GQ‖²/‖G‖²),
  against the exact top-r SVD's, on a gradient that drifted since the previous refresh, and the
  column alignment of the new projector with the previous one (how much of Adam's moments, kept
  across a refresh coordinate by coordinate, still refers to the same directions);
- with ``--profile``, where one refresh step's time goes (matmuls, QR, eigh, SVD, copies and
  casts, the rest), from ``torch.profiler``.

``--real-grads`` adds the same quality measurement on real gradients of a small LLaMA trained on
the King James Bible (bytes as tokens). Results: a table, JSON (``--json PATH``) and a markdown
report (``--md``).

Modules: ``config`` (what is measured), ``timing``, ``quality``, ``benchmark`` (the whole run),
``report``, ``cli``. The package loads its torch-using modules on first use, so that ``galore
--help`` (which imports ``galorekit.bench`` for the parser) stays torch-free.
"""

from __future__ import annotations

from galorekit.bench.cli import add_arguments, config_from_args, run
from galorekit.bench.config import (
    ADAMW,
    PAPER_RANKS,
    PROFILE_CATEGORIES,
    REFERENCE,
    TARGET_MODULES,
    BenchConfig,
    RealGradConfig,
    llama_shapes,
    ours,
    paper_rank,
)
from galorekit.bench.report import (
    format_markdown,
    format_profile_table,
    format_real_table,
    format_table,
)
from galorekit.lazy import lazy_exports

_LAZY = {
    "Timing": "timing",
    "model_shapes": "timing",
    "synthetic_gradient_pair": "timing",
    "reference_available": "timing",
    "time_interleaved": "timing",
    "profile_refresh_step": "timing",
    "paired_ratios": "timing",
    "method_quality": "quality",
    "kjv_bytes": "quality",
    "collect_real_gradients": "quality",
    "real_gradient_quality": "quality",
    "memory_estimate": "benchmark",
    "run_benchmark": "benchmark",
}

__all__ = [
    "ADAMW",
    "PAPER_RANKS",
    "PROFILE_CATEGORIES",
    "REFERENCE",
    "TARGET_MODULES",
    "BenchConfig",
    "RealGradConfig",
    "add_arguments",
    "config_from_args",
    "format_markdown",
    "format_profile_table",
    "format_real_table",
    "format_table",
    "llama_shapes",
    "ours",
    "paper_rank",
    "run",
    *_LAZY,
]


__getattr__, __dir__ = lazy_exports(
    __name__,
    {name: f"{__name__}.{module}" for name, module in _LAZY.items()},
    eager=__all__,
)
