"""Names shared by the library and the command lines, importable without torch: ``galore --help``
builds every parser from them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MethodInfo:
    """What every command needs to know about a training method, without torch.

    ``family``: ``"full"`` (full-rank optimizer), ``"galore"`` (GaLore's projected optimizer) or
    ``"adapter"`` (a baseline that changes the model and trains it with AdamW); ``optimizer``: the
    ``galorekit.optim.create_optimizer`` name it trains with; ``default_lr``: the peak learning
    rate used when ``--lr`` is not given (the paper's 0.01 for GaLore, the usual 1e-3 for
    full-rank Adam-family training and the adapters); ``reference``: another implementation, for
    comparison (needs its package: ``galorekit[reference]``)."""

    name: str
    family: str
    optimizer: str
    default_lr: float
    reference: bool = False

    @property
    def is_galore(self) -> bool:
        return self.family == "galore"

    @property
    def changes_model(self) -> bool:
        """Whether the method wraps or replaces the model's layers (the adapters)."""
        return self.family == "adapter"

    @property
    def uses_rank(self) -> bool:
        return self.family in ("galore", "adapter")


def _table(*rows: MethodInfo) -> dict[str, MethodInfo]:
    return {row.name: row for row in rows}


#: the method table: every method of every command, in the order the commands list them
METHOD_TABLE: dict[str, MethodInfo] = _table(
    MethodInfo("adamw", "full", "adamw", 1e-3),
    MethodInfo("adamw8bit", "full", "adamw8bit", 1e-3),
    MethodInfo("adafactor", "full", "adafactor", 1e-3),
    MethodInfo("galore_adamw", "galore", "galore_adamw", 1e-2),
    MethodInfo("galore_adamw8bit", "galore", "galore_adamw8bit", 1e-2),
    MethodInfo("galore_adafactor", "galore", "galore_adafactor", 1e-2),
    MethodInfo("lora", "adapter", "adamw", 1e-3),
    MethodInfo("relora", "adapter", "adamw", 1e-3),
    MethodInfo("low_rank", "adapter", "adamw", 1e-3),
    MethodInfo("galore_torch_adamw", "galore", "galore_torch_adamw", 1e-2, reference=True),
)
#: old method names that are refused with a pointer to the new one (one name for full-rank AdamW
#: in every command)
RENAMED_METHODS = {"full": "adamw"}

#: optimizer methods (``galorekit.optim.create_optimizer``); plain names optimize full-rank
OPTIMIZER_NAMES = tuple(
    m.name for m in METHOD_TABLE.values() if not m.changes_model and not m.reference
)
#: the paper's baselines that change the model (``galorekit.methods.adapters``)
BASELINES = tuple(m.name for m in METHOD_TABLE.values() if m.changes_model)
#: every method of ``galore pretrain``
METHODS = (*OPTIMIZER_NAMES, *BASELINES)
#: GaLore's projection types (``galorekit.projection.choose_side``)
PROJ_TYPES = ("std", "reverse_std", "left", "right", "full")
#: how to install the reference implementation (method ``galore_torch_adamw``)
GALORE_TORCH_INSTALL = "pip install galore-torch==1.0"
#: the built-in subspace refresh methods (``galorekit.projection.SVD_METHODS``, which also holds
#: any registered under a name of one's own)
SVD_METHOD_NAMES = ("exact", "randomized", "warm", "power")
#: other implementations, for comparison (need their package installed)
REFERENCE_METHODS = tuple(m.name for m in METHOD_TABLE.values() if m.reference)
ALL_METHODS = (*METHODS, *REFERENCE_METHODS)
#: peak learning rates used when --lr is not given (see ``MethodInfo.default_lr``)
DEFAULT_LR = {name: m.default_lr for name, m in METHOD_TABLE.items()}


def method_info(name: str) -> MethodInfo:
    """The table's row for ``name``; ``ValueError`` (one line, naming the valid methods, or the
    new name of a renamed one) otherwise."""
    if name in RENAMED_METHODS:
        raise ValueError(
            f"method {name!r} is now called {RENAMED_METHODS[name]!r}: "
            f"use --method {RENAMED_METHODS[name]}"
        )
    try:
        return METHOD_TABLE[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; valid: {', '.join(METHOD_TABLE)}") from None


def is_galore(name: str) -> bool:
    """Whether ``name`` is a GaLore method (galorekit's or the reference); False for unknown
    names."""
    row = METHOD_TABLE.get(name)
    return row is not None and row.is_galore


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
#: new basis (C = P_newᵀP_old, M ← C·M and LDAdam's V ← |(C∘C)(V − M²) + (C·M)²|; the default:
#: measured best, benchmarks/results/moment_policies), or ``reset`` them to zero
MOMENT_POLICIES = ("keep", "align", "project", "reset")
#: dtypes an optimizer may keep its moments in (``state_dtype``; None: the parameter's dtype)
STATE_DTYPES = ("float32", "bfloat16", "float16")
#: how a bf16 weight's update is rounded (``weight_rounding``; ``galorekit.optim.rounding``)
WEIGHT_ROUNDINGS = ("nearest", "stochastic")
#: data-parallel strategies (``galore pretrain --distributed``)
DISTRIBUTED_STRATEGIES = ("ddp", "fsdp")

#: how a refused model or tokenizer that ships its own code (``auto_map``) is explained
REMOTE_CODE_HINT = (
    "holds its own code (auto_map in its config); galorekit never runs a model's or tokenizer's "
    "code unless asked: pass --trust-remote-code (trust_remote_code=True) if you trust it"
)
