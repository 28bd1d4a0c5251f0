"""Timing ``galore bench``'s optimizers: synthetic gradients on LLaMA's GaLore-targeted shapes, the
optimizers side by side, interleaved steps, paired ratios and a profile of one refresh step."""

from __future__ import annotations

import math
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.util import find_spec

import torch
from torch import Tensor
from torch.profiler import ProfilerActivity, profile

from galorekit.bench.config import (
    ADAMW,
    PROFILE_CATEGORIES,
    REFERENCE,
    TARGET_MODULES,
    BenchConfig,
    llama_shapes,
    ours,
)
from galorekit.extras import needs_extra
from galorekit.methods import MethodConfig
from galorekit.names import method_info
from galorekit.optim.factory import optimizer_class
from galorekit.optim.galore_adamw import GaLoreAdamW


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
def model_shapes(model: str, layers: int | None = None) -> list[tuple[str, tuple[int, ...]]]:
    """(name, (out, in)) of every GaLore-targeted weight of LLaMA-``model``, ``layers`` deep
    (another family's model: its default targets' shapes, kernels 4-D)."""
    if model not in llama_shapes():
        from galorekit.models.targets import target_shapes

        return target_shapes(model, layers)
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


# ---- optimizers ---------------------------------------------------------------------------------
def reference_available() -> bool:
    return find_spec("galore_torch") is not None


def _make_optimizers(
    params: list[torch.nn.Parameter], cfg: BenchConfig, gap: int
) -> dict[str, torch.optim.Optimizer]:
    """Every optimizer to time, over the same parameters (each keeps its own state)."""
    rank = cfg.effective_rank
    galore = MethodConfig(update_proj_gap=gap).galore_group(rank)
    optimizers: dict[str, torch.optim.Optimizer] = {}
    if cfg.adamw:
        optimizers[ADAMW] = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0, foreach=True)
    # galore-torch 1.0's path for tensors of more than two dimensions crashes: kernels time ours
    if cfg.reference and reference_available() and all(p.dim() == 2 for p in params):
        # galore-torch (galorekit[reference]) imports bitsandbytes and transformers: only here
        with warnings.catch_warnings(), needs_extra("reference"):
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
    for method in cfg.successors:
        # total_steps=0: GoLore's switch at step 0, so that its random refreshes are timed
        group = MethodConfig(method=method, update_proj_gap=gap).galore_group(rank, total_steps=0)
        cls = optimizer_class(method_info(method).optimizer)
        optimizers[method] = cls([{"params": params, **group}], lr=cfg.lr)
    return optimizers


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
def profile_refresh_step(
    optimizers: dict[str, torch.optim.Optimizer],
    params: Sequence[torch.nn.Parameter],
    grads: Sequence[Tensor],
) -> dict[str, dict[str, float]]:
    """One step of each refreshing optimizer under ``torch.profiler`` (the caller makes it a
    refresh step): seconds of CPU self time per ``PROFILE_CATEGORIES`` entry, ``other`` and
    ``total``."""
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
        if name in (ADAMW, REFERENCE):
            continue
        r: dict[str, float] = {}
        for base_name, label in ((REFERENCE, "reference"), (ADAMW, "adamw")):
            if base_name in timings:
                for key, value in paired_ratios(timing, timings[base_name], T).items():
                    r[f"{key}_vs_{label}"] = value
        out[name] = r
    return out
