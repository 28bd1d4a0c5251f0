"""The core's GPU checks, in one short run on a CUDA machine (a bonus check: CI has no GPU).

On CUDA, the optimizers take paths the CPU tests never reach: ``foreach`` is on by default,
cuSOLVER's eigh/QR/SVD replace LAPACK's, and bf16 arithmetic is native. This script checks, on
the GPU:

1. every ``svd`` method × side × moment policy (align, project): refreshing a constant gradient
   leaves the projector unchanged and trains like the exact SVD;
2. the fast refreshes' captured energy against the exact SVD at gradient scales 1e-30 … 1e30;
3. ``foreach`` (the CUDA default) against the per-parameter loop, float32 and bf16 weights with
   float32 moments (``state_dtype``), LLaMA-60M weight shapes, refreshes every 4 steps;
4. the bf16 second-moment decay with and without ``state_dtype="float32"``;
5. a layer-wise extra backward pass raising before a double update;
6. the refresh step's time per method at LLaMA-1B shapes (2048×5461, rank 512), with and without
   the basis alignment (CUDA events, median of 5 after 2 warm-ups).

    PYTHONPATH=src python benchmarks/gpu_check.py --json $OUT/gpu_check.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import warnings
from typing import Any

import torch
from torch import nn

from galorekit import GaLoreAdamW, LayerwiseOptimizer
from galorekit.names import SVD_METHOD_NAMES
from galorekit.projection import Side, compute_projector, refresh_projector

DEVICE = torch.device("cuda")


def low_rank_gradient(m: int, n: int, k: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    u = torch.linalg.qr(torch.randn(m, k, generator=gen)).Q
    v = torch.linalg.qr(torch.randn(n, k, generator=gen)).Q
    return ((u * torch.linspace(1.0, 0.3, k)) @ v.t()).to(DEVICE)


def constant_gradient(svd: str, side: str, policy: str) -> tuple[torch.Tensor, float]:
    m, n = (64, 96) if side == "left" else (96, 64)
    grad = low_rank_gradient(m, n, 38)
    w = nn.Parameter(torch.zeros(m, n, device=DEVICE))
    group = {"params": [w], "rank": 32, "update_proj_gap": 2, "proj_type": side, "svd": svd}
    opt = GaLoreAdamW([{**group, "moments": policy}], lr=1e-2, eps=1e-3)
    first, drift = None, 0.0
    for _ in range(9):
        w.grad = grad.clone()
        opt.step()
        state = opt.state[w]
        basis = state["proj_right"].t() if "proj_right" in state else state["proj_left"]
        first = basis.clone() if first is None else first
        drift = max(drift, float((basis - first).abs().max()))
    return w.detach(), drift


def check_alignment() -> dict[str, Any]:
    out = {}
    for side in ("left", "right", "full"):
        reference, _ = constant_gradient("exact", side, "align")
        for svd in SVD_METHOD_NAMES:
            for policy in ("align", "project"):
                w, drift = constant_gradient(svd, side, policy)
                out[f"{svd}/{side}/{policy}"] = {
                    "projector_drift": drift,
                    "weight_diff_vs_exact": float((w - reference).abs().max()),
                }
    worst = max(v["projector_drift"] for v in out.values())
    worst_w = max(v["weight_diff_vs_exact"] for v in out.values())
    return {"cases": out, "worst_drift": worst, "worst_weight_diff": worst_w,
            "ok": worst < 1e-4 and worst_w < 1e-4}  # fmt: skip


def energy(g: torch.Tensor, right: torch.Tensor) -> float:
    g = g.double() / g.double().abs().max()
    return float((g @ right.double().t()).square().sum() / g.square().sum())


def check_scales() -> dict[str, Any]:
    gen = torch.Generator().manual_seed(10)
    k = 120
    u = torch.linalg.qr(torch.randn(160, k, generator=gen)).Q
    v = torch.linalg.qr(torch.randn(120, k, generator=gen)).Q
    base = (u / torch.arange(1, k + 1)) @ v.t() + 0.002 * torch.randn(160, 120, generator=gen)
    base = base.to(DEVICE)
    out = {}
    for scale in (1e-30, 1e-22, 1e-10, 1.0, 1e10, 1e20, 1e30):
        g = (base.double() * scale).float()
        exact = energy(g, compute_projector(g, 32, Side.RIGHT, method="exact")[1])
        prev = compute_projector((base.double() * scale * 1.01).float(), 32, Side.RIGHT)
        for method in ("randomized", "warm", "power"):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                right = compute_projector(g, 32, Side.RIGHT, method=method,
                                          previous_right=prev[1])[1]  # fmt: skip
            out[f"{method}@{scale:g}"] = {
                "ratio": energy(g, right) / exact,
                "fell_back": any("exact SVD instead" in str(w.message) for w in caught),
            }
    worst = min(v["ratio"] for v in out.values())
    return {"cases": out, "worst_ratio": worst,
            "ok": worst >= 0.99 and not any(v["fell_back"] for v in out.values())}  # fmt: skip


def llama_60m_weights(dtype: torch.dtype) -> list[nn.Parameter]:
    shapes = [(512, 512)] * 4 + [(1376, 512), (1376, 512), (512, 1376)]
    gen = torch.Generator().manual_seed(1)
    return [nn.Parameter(torch.randn(s, generator=gen).to(DEVICE, dtype) * 0.02) for s in shapes]


def check_foreach() -> dict[str, Any]:
    out = {}
    for dtype, state_dtype in ((torch.float32, None), (torch.bfloat16, "float32")):
        finals = {}
        for foreach in (True, False):
            weights = llama_60m_weights(dtype)
            opt = GaLoreAdamW([{"params": weights, "rank": 128, "update_proj_gap": 4}],
                              lr=1e-3, foreach=foreach, state_dtype=state_dtype)  # fmt: skip
            assert opt.foreach is foreach
            gen = torch.Generator(device=DEVICE).manual_seed(2)
            for _ in range(10):
                for w in weights:
                    w.grad = torch.randn(w.shape, generator=gen, device=DEVICE).to(dtype)
                opt.step()
            finals[foreach] = [w.detach().float() for w in weights]
        diff = max(float((a - b).abs().max()) for a, b in zip(finals[True], finals[False]))
        scale = max(float(a.abs().max()) for a in finals[False])
        out[str(dtype)] = {"max_abs_diff": diff, "max_abs_weight": scale,
                           "ok": diff <= 1e-3 * scale}  # fmt: skip
    default_on = GaLoreAdamW(llama_60m_weights(torch.float32), lr=1e-3).foreach
    return {"cases": out, "foreach_default_on_cuda": default_on,
            "ok": default_on and all(v["ok"] for v in out.values())}  # fmt: skip


def check_bf16_decay() -> dict[str, Any]:
    out = {}
    for state_dtype in (None, "float32"):
        w = nn.Parameter(torch.zeros(4, 4, dtype=torch.bfloat16, device=DEVICE))
        opt = GaLoreAdamW([w], lr=1e-3, state_dtype=state_dtype)
        for step in range(3000):
            w.grad = torch.full_like(w, 10.0 if step == 0 else 1e-3)
            opt.step()
        out[str(state_dtype)] = float(opt.state[w]["exp_avg_sq"].float().mean())
    expected = 0.1 * 0.999**2999 + 1e-6 * (1 - 0.999**2999)
    return {"exp_avg_sq": out, "float32_expected": expected,
            "ok": abs(out["float32"] / expected - 1) < 1e-3 and out["None"] > 5 * expected}  # fmt: skip


def check_layerwise() -> dict[str, Any]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 48), nn.Tanh(), nn.Linear(48, 8)).to(DEVICE)
    groups = [{"params": [model[0].bias, model[2].bias]},
              {"params": [model[0].weight, model[2].weight], "rank": 4}]  # fmt: skip
    opt = LayerwiseOptimizer(groups, GaLoreAdamW, lr=1e-2)
    x = torch.randn(32, 16, device=DEVICE)
    model(x).square().mean().backward()
    before = [p.detach().clone() for p in model.parameters()]
    try:
        model(x).square().mean().backward()
        raised = False
    except RuntimeError as err:
        raised = "backward pass 2" in str(err)
    unchanged = all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
    opt.step()
    return {"raised": raised, "no_double_update": unchanged, "ok": raised and unchanged}


def time_refresh() -> dict[str, Any]:
    gen = torch.Generator(device=DEVICE).manual_seed(3)
    m, n, rank = 2048, 5461, 512
    u = torch.linalg.qr(torch.randn(m, m, generator=gen, device=DEVICE)).Q
    spectrum = 1.0 / torch.arange(1, m + 1, device=DEVICE)
    g = (u * spectrum) @ torch.randn(m, n, generator=gen, device=DEVICE) / n**0.5
    prev = compute_projector(g * 1.01, rank, Side.LEFT, method="exact")
    out = {}
    for method in SVD_METHOD_NAMES:
        for align in (False, True):
            times = []
            for i in range(7):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(True)
                start.record()
                refresh_projector(g, rank, Side.LEFT, method=method, previous_left=prev[0],
                                  align=align)  # fmt: skip
                end.record()
                torch.cuda.synchronize()
                if i >= 2:
                    times.append(start.elapsed_time(end))
            out[f"{method}{'+align' if align else ''}"] = round(statistics.median(times), 3)
    return {"shape": [m, n], "rank": rank, "median_ms": out, "ok": True}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", default=None, help="write the results to this file")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check: error: no CUDA device", file=sys.stderr)
        return 2
    results: dict[str, Any] = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name()}
    for name, check in (("alignment", check_alignment), ("scales", check_scales),
                        ("foreach", check_foreach), ("bf16_decay", check_bf16_decay),
                        ("layerwise", check_layerwise), ("refresh_ms", time_refresh)):  # fmt: skip
        try:
            results[name] = check()
        except Exception as err:  # a bonus check reports every failure, then goes on
            results[name] = {"ok": False, "error": f"{type(err).__name__}: {err}"}
        brief = {k: v for k, v in results[name].items() if k != "cases"}
        print(name, json.dumps(brief), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0 if all(r.get("ok") for r in results.values() if isinstance(r, dict)) else 1


if __name__ == "__main__":
    raise SystemExit(main())
