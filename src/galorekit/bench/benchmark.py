"""The whole ``galore bench`` run: gradients, timings, state bytes, quality, the JSON-ready result."""

from __future__ import annotations

import math
import os
import platform
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

import torch

from galorekit.analysis import exact_energy, state_bytes
from galorekit.bench.config import REFERENCE, BenchConfig, RealGradConfig, ours
from galorekit.bench.quality import method_quality, real_gradient_quality
from galorekit.bench.timing import (
    _make_optimizers,
    _ratios,
    model_shapes,
    profile_refresh_step,
    synthetic_gradient_pair,
    time_interleaved,
)
from galorekit.memory.measure import check_fits
from galorekit.optim.validation import matrix_shape


def memory_estimate(shapes: Sequence[tuple[str, tuple[int, int]]], cfg: BenchConfig) -> int:
    """Bytes the run holds: weights, two gradient phases, AdamW's two moments (float32)."""
    numel = sum(math.prod(s) for _, s in shapes)
    return 4 * numel * (3 + (2 if cfg.adamw else 0))


def run_benchmark(
    cfg: BenchConfig, progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Run the whole benchmark and return the JSON-ready result (see ``format_markdown``)."""
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
    # a kernel's gradient: low-rank in its out × in·k unfolding, the matrix GaLore projects
    pairs = [
        synthetic_gradient_pair(matrix_shape(s), rank, cfg.noise, cfg.drift, gen) for _, s in shapes
    ]
    phases = [[a.reshape(s) for (a, _), (_, s) in zip(pairs, shapes)]]
    phases.append([b.reshape(s) for (_, b), (_, s) in zip(pairs, shapes)])
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
        "shapes": {"matrices": len(shapes), "weights": sum(math.prod(s) for _, s in shapes)},
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
