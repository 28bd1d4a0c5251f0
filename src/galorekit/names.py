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
    #: GaLore group keys this method sets (a successor's defining options, e.g. Fira's
    #: ``residual``); the user's own settings of the same keys win, except ``rank`` where it is
    #: part of the method's definition (APOLLO-Mini is rank 1)
    group: tuple[tuple[str, object], ...] = ()

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
    # GaLore's successors: galorekit's optimizers with their group options (SUCCESSOR_DEFAULTS);
    # their papers' pre-training LR is GaLore's 0.01
    MethodInfo("fira_adamw", "galore", "galore_adamw", 1e-2, group=(("residual", "fira"),)),
    MethodInfo(
        "apollo_adamw",
        "galore",
        "galore_adamw",
        1e-2,
        group=(("projection", "random"), ("scaling", "channel"), ("scale", 1.0)),
    ),
    MethodInfo(
        "apollo_mini",
        "galore",
        "galore_adamw",
        1e-2,
        # APOLLO's code multiplies by √apollo_scale with apollo_scale 128 for Mini
        group=(
            ("projection", "random"),
            ("scaling", "tensor"),
            ("rank", 1),
            ("scale", 128**0.5),
        ),
    ),
    MethodInfo(
        "q_galore_adamw8bit",
        "galore",
        "galore_adamw8bit",
        1e-2,
        group=(("projector_bits", 4), ("lazy_refresh", True)),
    ),
    MethodInfo("golore_adamw", "galore", "galore_adamw", 1e-2, group=(("random_after", 0.8),)),
    MethodInfo("lora", "adapter", "adamw", 1e-3),
    MethodInfo("relora", "adapter", "adamw", 1e-3),
    MethodInfo("low_rank", "adapter", "adamw", 1e-3),
    MethodInfo("galore_torch_adamw", "galore", "galore_torch_adamw", 1e-2, reference=True),
)
#: the successors' rows of the table (GaLore's options, not optimizers of their own)
SUCCESSOR_METHODS = tuple(m.name for m in METHOD_TABLE.values() if m.group)
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
#: GaLore's successors as options of a GaLore group (None/False: off, GaLore itself); see
#: ``galorekit.optim.successors`` for the math and ``galorekit.optim.validation`` for what combines:
#: - ``residual``: ``"fira"`` adds back the part of the gradient outside the subspace, G − P·R,
#:   scaled channel-wise by the low-rank update's norm ratio ‖N‖/‖R‖ (Fira, Chen et al. 2024);
#: - ``projection``: ``"svd"`` (GaLore's subspace, by the group's ``svd`` method) or ``"random"``:
#:   a Gaussian N(0, 1/r) projection regenerated from a seed at every step and redrawn every
#:   ``update_proj_gap`` steps, never stored (APOLLO, Zhu et al. 2024);
#: - ``scaling``: ``"channel"`` or ``"tensor"``: the update is the *full* gradient scaled by the
#:   low-rank Adam's norm ratio per channel or per tensor (APOLLO; APOLLO-Mini is tensor, rank 1);
#: - ``norm_growth_limit``: γ of the norm-growth limiter on the full-rank term (Fira's residual,
#:   APOLLO's scaled gradient): its norm may grow by at most γ per step (None: no limiter);
#: - ``projector_bits``: 4 or 8: the projector stored block-wise quantized (blocks of
#:   ``PROJECTOR_BLOCK``, one float32 absmax each; Q-GaLore's INT4 projectors, Zhang et al. 2024);
#: - ``lazy_refresh``: a matrix's refresh period doubles when the |cosine similarity| of its
#:   successive projectors' first basis vectors averages ≥ ``LAZY_REFRESH_THRESHOLD`` over
#:   ``LAZY_REFRESH_WINDOW`` refreshes (Q-GaLore's adaptive lazy update);
#: - ``random_after``: from this step on (an optimizer's step count; ``MethodConfig`` takes a
#:   fraction of the run) refreshes draw a uniformly random orthonormal basis instead of the SVD's
#:   (GoLore, He et al. 2024: GaLore early, random projections late);
#: - ``projection_seed``: seeds the random projections (with the parameter's index and the step).
SUCCESSOR_DEFAULTS = {
    "residual": None,
    "projection": "svd",
    "scaling": None,
    "norm_growth_limit": 1.01,
    "projector_bits": None,
    "lazy_refresh": False,
    "random_after": None,
    "projection_seed": 0,
}
RESIDUALS = ("fira",)
PROJECTIONS = ("svd", "random")
SCALINGS = ("channel", "tensor")
PROJECTOR_BITS = (4, 8)
PROJECTOR_BLOCK = 256
LAZY_REFRESH_THRESHOLD = 0.4
LAZY_REFRESH_WINDOW = 5
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
