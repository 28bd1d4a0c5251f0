"""What ``galore bench`` measures: ``BenchConfig`` (the timed run) and ``RealGradConfig`` (the
``--real-grads`` model), the paper's ranks and the row names. torch-free: the parser reads it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from galorekit.config import Flag, flags_of, option
from galorekit.names import GALORE_DEFAULTS, SUCCESSOR_METHODS, SVD_METHOD_NAMES

if TYPE_CHECKING:
    from galorekit.models.registry import LlamaShape

#: the paper's ranks per model size (Table 2, 1B: 512; 7B: 1024, §5); other sizes get hidden / 4
PAPER_RANKS = {
    "llama_60m": 128,
    "llama_130m": 256,
    "llama_350m": 256,
    "llama_1b": 512,
    "llama_7b": 1024,
}
TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def llama_shapes() -> dict[str, LlamaShape]:
    """The named LLaMA shapes of ``galorekit.models.registry`` by bench's short names (``60m``).

    Imported here, not at the top: ``galorekit.models`` imports transformers, and ``galore
    --help`` builds this command's parser."""
    from galorekit.models.registry import NAMED_SHAPES

    return {name.removeprefix("llama_"): shape for name, shape in NAMED_SHAPES.items()}


def paper_rank(model: str) -> int:
    """The paper's rank for a LLaMA size (bench's short name or the registry's), else
    hidden_size / 4, ``galore pretrain``'s default ratio."""
    short = model.removeprefix("llama_")
    from galorekit.models.registry import family_hidden_size

    shapes = llama_shapes()
    hidden = shapes[short].hidden_size if short in shapes else family_hidden_size(short)
    return PAPER_RANKS.get(f"llama_{short}") or max(1, hidden // 4)


ADAMW = "torch AdamW (foreach)"
REFERENCE = "galore-torch 1.0"


def ours(svd: str, foreach: bool = False) -> str:
    return f"galorekit (svd={svd}, foreach)" if foreach else f"galorekit (svd={svd})"


def _paper_ranks() -> str:
    return ", ".join(f"{r} for {m.removeprefix('llama_')}" for m, r in PAPER_RANKS.items())


@dataclass
class BenchConfig:
    """What ``galore bench`` measures. Each ``option`` field is one flag of ``galore bench`` (its
    default and help text are here only) and one key of a ``--config`` file."""

    model: str = option(
        "130m",
        "LLaMA size: a named model of galorekit.models without its llama_ prefix, e.g. 60m, "
        "130m, 1b, or another family's named model (gpt2_124m, vit_base, cnn_digits: the matrices "
        "GaLore targets in it, a CNN's kernels as 4-D tensors) (an unknown name lists them all)",
    )
    layers: int | None = option(
        None, "time only this many layers (default: all); 350m/1b need it on small machines"
    )
    rank: int | None = option(
        None, f"GaLore rank (default: the paper's, {_paper_ranks()}; hidden/4 for other sizes)"
    )
    T: int = option(
        GALORE_DEFAULTS["update_proj_gap"],
        "T, the refresh period of GaLore, for the amortized step (refresh + (T-1)·steady) / T",
        key="update_proj_gap",
        metavar="T",
    )
    svd: tuple[str, ...] = option(
        SVD_METHOD_NAMES,
        "galorekit refresh methods to time, comma- or space-separated (default: the built-in ones, "
        f"{','.join(SVD_METHOD_NAMES)}; names registered in galorekit.projection.SVD_METHODS too)",
        metavar="NAME",
        show_default=False,
    )
    successors: tuple[str, ...] = option(
        (),
        "GaLore's successors to time as well, comma- or space-separated "
        f"({','.join(SUCCESSOR_METHODS)}; default none): each with its own options over the same "
        "matrices, golore_adamw in its late phase (random orthonormal refreshes)",
        metavar="METHOD",
        show_default=False,
    )
    steady_steps: int = option(4, "steady steps between refreshes")
    cycles: int = option(3, "measured refresh cycles per optimizer, after one warm-up cycle")
    reference: bool = option(True, "skip galore-torch (config files: reference = false)")
    adamw: bool = option(True, "skip torch AdamW (config files: adamw = false)")
    noise: float = option(0.5, "gradient noise, Frobenius norm relative to the low-rank signal")
    drift: float = option(
        0.3, "relative perturbation of the gradient's singular vectors between refreshes"
    )
    quality_layers: int = option(
        1, "layers whose matrices the subspace quality is measured on (0: skip)"
    )
    threads: int | None = option(None, "torch threads (default: torch's)")
    seed: int = option(0, "seed of the synthetic gradients and weights")
    lr: float = 1e-3  # the timed optimizers' learning rate: not a flag
    real_grads: bool = option(
        False, "also measure quality on real gradients of a small LLaMA trained on KJV bytes"
    )
    profile: bool = option(
        False,
        "also run one more refresh step of each optimizer under torch.profiler and report where "
        "its time goes (matmuls, QR, eigh, SVD, copies and casts, the rest)",
    )
    foreach: bool = option(
        False,
        "also time each galorekit method with foreach=True (the moment updates batched over the "
        "tensors; the optimizer's default only when every parameter is on a GPU)",
    )
    real: RealGradConfig | None = None  # --real-grads' model (None: RealGradConfig())

    def __post_init__(self) -> None:
        # torch: the registry of refresh methods (names registered at run time included)
        from galorekit.projection import SVD_METHODS

        self.model = self.model.strip().lower().removeprefix("llama").strip("-_")
        from galorekit.models.registry import FAMILY_CONFIGS

        models = [*llama_shapes(), *FAMILY_CONFIGS]
        if self.model not in models:
            raise ValueError(f"unknown model {self.model!r}; valid: {', '.join(models)}")
        for name in ("T", "steady_steps", "cycles"):
            if getattr(self, name) < 1:
                flag = "update_proj_gap" if name == "T" else name
                raise ValueError(f"{flag} must be ≥ 1, got {getattr(self, name)}")
        for name in ("layers", "rank", "threads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be ≥ 1, got {value}")
        if self.quality_layers < 0:
            raise ValueError(f"quality_layers must be ≥ 0, got {self.quality_layers}")
        unknown = [s for s in self.svd if s not in SVD_METHODS]
        if unknown or not self.svd:
            raise ValueError(
                f"unknown svd method(s) {unknown or '(none given)'}; valid: {', '.join(SVD_METHODS)}"
            )
        unknown = [s for s in self.successors if s not in SUCCESSOR_METHODS]
        if unknown:
            raise ValueError(
                f"unknown successor method(s) {unknown}; valid: {', '.join(SUCCESSOR_METHODS)}"
            )
        if not (self.noise >= 0 and self.drift >= 0):
            raise ValueError("noise and drift must be ≥ 0")

    @property
    def effective_rank(self) -> int:
        """``rank``, else the paper's for the model (:func:`paper_rank`)."""
        return self.rank if self.rank is not None else paper_rank(self.model)


@dataclass
class RealGradConfig:
    """The small LLaMA whose gradients ``--real-grads`` studies (bytes of the KJV as tokens)."""

    hidden: int = 256
    intermediate: int = 688
    layers: int = 4
    heads: int = 4
    batch: int = 16
    seq_len: int = 128
    steps: int = 60
    every: int = 20
    lr: float = 2e-3
    train_rank: int = 64
    train_svd: str = "exact"
    ranks: tuple[int, ...] = (4, 8, 16, 32, 64, 128)
    seed: int = 0


#: ``galore bench``'s configuration flags (``--json`` and ``--md`` are output, not settings)
FLAGS: list[Flag] = flags_of(BenchConfig)


def build_config(values: dict[str, Any]) -> BenchConfig:
    """The ``BenchConfig`` of flat ``values`` (flag names; missing settings: the defaults),
    checked; ``svd`` and ``successors`` may be comma-separated names."""
    fields = {fl.path[-1]: values[fl.name] for fl in FLAGS if fl.name in values}
    for key in ("svd", "successors"):
        if key in fields:
            names = [fields[key]] if isinstance(fields[key], str) else fields[key]
            fields[key] = tuple(s.strip() for item in names for s in item.split(",") if s.strip())
    return BenchConfig(**fields)


#: torch.profiler op names by category (self times: an op's children are not counted twice)
PROFILE_CATEGORIES: dict[str, tuple[str, ...]] = {
    "matmul": ("aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm", "aten::baddbmm"),
    "QR": ("aten::linalg_qr", "aten::geqrf", "aten::linalg_householder_product", "aten::orgqr"),
    "eigh": ("aten::_linalg_eigh", "aten::linalg_eigh"),
    "SVD": ("aten::_linalg_svd", "aten::linalg_svd", "aten::linalg_svdvals"),
    "copies and casts": ("aten::copy_", "aten::_to_copy", "aten::clone", "aten::contiguous"),
}
