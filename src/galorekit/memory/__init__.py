"""Training-memory model of GaLore and its baselines: estimate, measure, and fit to a budget.

>>> from galorekit.memory import TrainingSetup, estimate
>>> est = estimate("llama_7b", TrainingSetup(method="galore_adamw8bit", rank=1024,
...                layerwise=True, precision="bf16-true"))          # doctest: +SKIP
>>> est.as_dict()["total"] / 1e9                               # doctest: +SKIP
21.0

Modules: ``setup`` (the configuration), ``model`` (building it as ``galore pretrain`` does),
``optimizer_states`` (state layout rules), ``activations`` (the per-layer formula), ``estimator``,
``trackers``/``measure`` (measuring a real run), ``fit`` (budget search), ``report``/``plot``,
``names`` (torch-free names for the parser; byte sizes are ``galorekit.units``) and ``cli`` (``galore memory``).
"""

from __future__ import annotations

from galorekit.lazy import lazy_exports

# lazy: ``galore --help`` imports galorekit.memory.cli, which must not pay for torch
_LAZY = {
    "COMPONENTS": "galorekit.memory.estimator",
    "COMPONENT_NAMES": "galorekit.memory.estimator",
    "MemoryEstimate": "galorekit.memory.estimator",
    "estimate": "galorekit.memory.estimator",
    "estimate_model": "galorekit.memory.estimator",
    "FitRow": "galorekit.memory.fit",
    "fit_budget": "galorekit.memory.fit",
    "InsufficientMemoryError": "galorekit.memory.measure",
    "Measurement": "galorekit.memory.measure",
    "measure": "galorekit.memory.measure",
    "METHODS": "galorekit.memory.setup",
    "PRECISIONS": "galorekit.memory.setup",
    "TrainingSetup": "galorekit.memory.setup",
    "format_bytes": "galorekit.units",
    "parse_size": "galorekit.units",
}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, eager=())
