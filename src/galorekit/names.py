"""Names shared by the library and the command lines, importable without torch: ``galore --help``
builds every parser from them."""

from __future__ import annotations

#: optimizer methods (``galorekit.optim.create_optimizer``); plain names optimize full-rank
OPTIMIZER_NAMES = (
    "adamw",
    "adamw8bit",
    "adafactor",
    "galore_adamw",
    "galore_adamw8bit",
    "galore_adafactor",
)
#: the paper's baselines that change the model (``galorekit.train.baselines``)
BASELINES = ("lora", "relora", "low_rank")
#: every method of ``galore pretrain``
METHODS = (*OPTIMIZER_NAMES, *BASELINES)
#: GaLore's projection types (``galorekit.projection.choose_side``)
PROJ_TYPES = ("std", "reverse_std", "left", "right", "full")
#: the built-in subspace refresh methods (``galorekit.projection.SVD_METHODS``, which also holds
#: any registered under a name of one's own)
SVD_METHOD_NAMES = ("exact", "randomized", "warm", "power")
#: other implementations, for comparison (need their package installed)
REFERENCE_METHODS = ("galore_torch_adamw",)
ALL_METHODS = (*METHODS, *REFERENCE_METHODS)
#: peak learning rates used when --lr is not given: the paper's 0.01 for GaLore, and the usual
#: 1e-3 for full-rank Adam-family training and the adapter baselines
DEFAULT_LR = {
    "adamw": 1e-3,
    "adamw8bit": 1e-3,
    "adafactor": 1e-3,
    "galore_adamw": 1e-2,
    "galore_adamw8bit": 1e-2,
    "galore_adafactor": 1e-2,
    "lora": 1e-3,
    "relora": 1e-3,
    "low_rank": 1e-3,
    "galore_torch_adamw": 1e-2,
}
#: GaLore's group keys and their defaults (galore-torch's, plus galorekit's own): the one source of
#: these values for the optimizers, the method configuration and every command's flags
GALORE_DEFAULTS = {
    "update_proj_gap": 200,
    "scale": 0.25,
    "proj_type": "std",
    "svd": "warm",
    "stagger": False,
    "moments": "project",
}
#: what a GaLore optimizer does with its low-rank moments when the projector is refreshed
#: (``galorekit.projection.alignment``): ``keep`` them as they are (galore-torch), ``align`` the
#: new basis's columns (order and sign) with the old one and keep them, ``project`` them into the
#: new basis (M ← C·M, V ← (C∘C)·V with C = P_newᵀP_old; the default: measured best,
#: benchmarks/results/moment_policies), or ``reset`` them to zero
MOMENT_POLICIES = ("keep", "align", "project", "reset")
#: dtypes an optimizer may keep its moments in (``state_dtype``; None: the parameter's dtype)
STATE_DTYPES = ("float32", "bfloat16", "float16")
#: data-parallel strategies (``galore pretrain --distributed``)
DISTRIBUTED_STRATEGIES = ("ddp", "fsdp")
