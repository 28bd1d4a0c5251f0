"""The theory, observed: how low-rank the gradients GaLore projects are, and how its subspace moves.

The paper argues (§3, Lemma 3.3) that the gradients of reversible networks become low-rank during
training, which is what lets a rank-r projection keep most of each update. This module trains one
GaLore run on ``galore pretrain``'s loop core (``galorekit.train.loop``: same model, data order,
optimizer, schedule and clipping, so its perplexity matches the table's GaLore row) with a
per-step callback, and records, for every targeted matrix, every ``k`` steps, on the full gradient
G (after clipping):

- ``energy``: fraction of ‖G‖_F² in its top-r singular directions, Σ_{i≤r} σ_i² / Σ_i σ_i²;
- ``stable_rank``: ‖G‖_F² / ‖G‖_2² = Σ σ_i² / σ_1² (1 for a rank-one matrix, min(m, n) for an
  isotropic one);
- ``captured``: fraction of ‖G‖_F² inside the subspace GaLore actually used at that step,
  ‖PᵀG‖²/‖G‖² (or ‖G Qᵀ‖²... for a right projector): the top-r energy is its ceiling, reached at a
  refresh with an exact SVD; the gap measures how stale the projector has become;

and at each subspace refresh the overlap of the old and new projectors, ‖P_oldᵀ P_new‖_F² / r
(1: the same subspace, 0: orthogonal; two random r-dimensional subspaces of ℝᵏ overlap r/k on
average). Projectors are read only through the optimizer's public ``projection(p)`` view.

Why a GaLore run rather than full-rank AdamW: the subspace overlap exists only for GaLore's
projectors, and the claim that matters for GaLore is about the gradients along its own trajectory.
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any

import torch
from torch import Tensor

from galorekit.analysis import (
    captured_energy,
    projector_overlap,
    random_overlap,
    spectrum_metrics,
)
from galorekit.data import build_tokenizer, load_pretraining_data
from galorekit.methods import setup
from galorekit.models import build_model, default_target_modules
from galorekit.names import method_info
from galorekit.projection import Side, effective_rank
from galorekit.reproduce.configs import Job, data_config, pretrain_config
from galorekit.reproduce.plan import Plan
from galorekit.reproduce.results import RunResult
from galorekit.train.loop import Loop, StopFlag, due, lm_loss, resolve_device, seed_everything
from galorekit.train.pretrain import evaluate_sums
from galorekit.train.schedule import pretrain_schedule

#: LLaMA's targeted layer types, in the order of a block
LAYER_TYPES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


# ------------------------------------------------------------------------------------ metrics
def layer_type(name: str) -> str:
    """``model.layers.3.self_attn.q_proj`` → ``q_proj``."""
    return name.rsplit(".", 1)[-1]


def layer_index(name: str) -> int | None:
    parts = name.split(".")
    for i, part in enumerate(parts[:-1]):
        if part == "layers" and parts[i + 1].isdigit():
            return int(parts[i + 1])
    return None


# ------------------------------------------------------------------------ instrumented loop
def _snapshot(view) -> dict[str, Any]:
    return {
        "side": view.side,
        "left": None if view.left is None else view.left.detach().clone(),
        "right": None if view.right is None else view.right.detach().clone(),
    }


class _Recorder:
    """The loop's per-step callbacks: before the update, the clipped gradients and the projectors
    about to be refreshed; after it, the projectors the update used."""

    def __init__(self, model: Any, optimizer: Any, rank: int, every: int, steps: int) -> None:
        modules = dict(model.named_modules())
        self.targets = [(name, modules[name].weight) for name in default_target_modules(model)]
        self.optimizer, self.every, self.steps = optimizer, every, steps
        self.series: dict[str, dict[str, Any]] = {}
        for name, p in self.targets:
            self.series[name] = {
                "type": layer_type(name),
                "layer": layer_index(name),
                "shape": list(p.shape),
                "rank": effective_rank(rank, p.shape),
                "steps": [],
                "energy": [],
                "stable_rank": [],
                "captured": [],
                "refresh_steps": [],
                "overlap": [],
            }
        self._before: dict[str, dict[str, Any]] = {}
        self._grads: dict[str, Tensor] = {}

    def measures(self, step: int) -> bool:
        """Whether step ``step`` (counted from 0) is measured."""
        return step % self.every == 0 or step == self.steps - 1

    def before_update(self, loop: Loop) -> None:
        self._before, self._grads = {}, {}
        for name, p in self.targets:
            view = self.optimizer.projection(p)
            if view.refresh_due and (view.left is not None or view.right is not None):
                self._before[name] = _snapshot(view)
            if self.measures(loop.step):
                self._grads[name] = p.grad.detach().clone()

    def after_update(self, loop: Loop) -> None:
        step = loop.step  # steps done before this one: the 0-based index of this step
        for name, p in self.targets:
            entry = self.series[name]
            view = self.optimizer.projection(p)  # the projector this step's update used
            if name in self._before:
                entry["refresh_steps"].append(step)
                entry["overlap"].append(projector_overlap(self._before[name], _snapshot(view)))
            if name in self._grads:
                grad = self._grads[name]
                energy, srank = spectrum_metrics(grad, entry["rank"])
                entry["steps"].append(step)
                entry["energy"].append(energy)
                entry["stable_rank"].append(srank)
                entry["captured"].append(captured_energy(grad, view.side, view.left, view.right))
                if "side" not in entry:
                    entry["side"] = view.side.name.lower()
                    dim = p.shape[0] if view.side == Side.LEFT else p.shape[1]
                    entry["random_overlap"] = random_overlap(int(dim), entry["rank"])


def run_theory(job: Job) -> RunResult:
    """Train ``job`` (a GaLore method) with the measurements of the module docstring: the
    training-loop core of ``galore pretrain`` plus a per-step callback (``_Recorder``)."""
    cfg, spec = job.config, job.spec
    info = method_info(spec.method)
    if not info.is_galore or info.reference:
        raise ValueError(
            f"the theory run needs a galorekit GaLore method (its projectors are read through "
            f"optimizer.projection), not {spec.method}"
        )
    run = pretrain_config(job)  # the same settings as a table run: schedule, clipping, seed
    device = resolve_device(run.device)
    seed_everything(cfg.seed)
    data_cfg = data_config(cfg)
    data = load_pretraining_data(data_cfg, build_tokenizer(data_cfg))
    model = build_model(
        cfg.model,
        vocab_size=data.vocab_size,
        max_position_embeddings=max(cfg.seq_len, 1024),
        seed=cfg.seed,
        device=device,
    )
    optimizer = setup(model, run.method, total_steps=spec.steps).optimizer
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        pretrain_schedule(
            warmup_ratio=run.warmup_ratio, total=spec.steps, min_ratio=run.min_lr_ratio
        ),
    )
    loader = data.train_loader(cfg.batch_size)
    val_batches = data.val_batches(cfg.batch_size)
    rank = spec.rank or 1
    every = max(1, spec.steps // cfg.theory_points)
    recorder = _Recorder(model, optimizer, rank, every, spec.steps)
    eval_curve: list[list[float]] = []
    train_curve: list[list[float]] = []
    started = time.perf_counter()
    eval_loss = loss_value = math.nan
    model.train()
    with StopFlag() as stop:
        loop = Loop(
            model,
            optimizer,
            scheduler,
            lambda: next(loader).to(device),
            lm_loss,
            max_grad_norm=run.method.max_grad_norm,
            stop=stop,
            before_update=recorder.before_update,
            after_update=recorder.after_update,
            hint="lower the LR",
        )
        for out in loop.steps(spec.steps):
            loss_value = out.loss
            if recorder.measures(out.step - 1):
                train_curve.append([out.step, loss_value])
            if due(out.step, cfg.eval_every, spec.steps):
                total, count = evaluate_sums(model, val_batches, device, contextlib.nullcontext)
                eval_loss = total / max(count, 1)
                eval_curve.append([out.step, math.exp(min(eval_loss, 50.0))])
            if out.stopping:
                raise SystemExit(128 + (stop.signal or 15))
    seconds = time.perf_counter() - started
    return RunResult(
        key=spec.key,
        status="ok",
        identity=job.identity,
        lr=job.lr,
        steps=spec.steps,
        tokens=spec.steps * cfg.tokens_per_step,
        eval_loss=eval_loss,
        eval_ppl=math.exp(min(eval_loss, 50.0)),
        train_loss=loss_value,
        seconds=seconds,
        eval_curve=eval_curve,
        train_curve=train_curve,
        theory={
            "method": spec.method,
            "rank": rank,
            "update_proj_gap": spec.update_proj_gap,
            "every": every,
            "matrices": recorder.series,
        },
    )


# ------------------------------------------------------------------------------- summaries
def summarize(theory: dict[str, Any]) -> dict[str, Any]:
    """Per layer type: mean over its matrices of the first and last measurements (energy, stable
    rank, captured energy) and the mean overlap at refreshes — the numbers the report quotes."""
    by_type: dict[str, list[dict[str, Any]]] = {}
    for entry in theory["matrices"].values():
        by_type.setdefault(entry["type"], []).append(entry)
    out: dict[str, Any] = {}
    for kind in [t for t in LAYER_TYPES if t in by_type] + sorted(set(by_type) - set(LAYER_TYPES)):
        entries = by_type[kind]

        def mean(values: list[float]) -> float | None:
            finite = [v for v in values if v is not None and math.isfinite(v)]
            return sum(finite) / len(finite) if finite else None

        def late(values: list[float]) -> float:
            tail = values[-max(1, len(values) // 4) :]
            return sum(tail) / len(tail)

        overlaps = [o for e in entries for o in e["overlap"]]
        out[kind] = {
            "matrices": len(entries),
            "shape": entries[0]["shape"],
            "rank": entries[0]["rank"],
            "energy_first": mean([e["energy"][0] for e in entries if e["energy"]]),
            "energy_last_quarter": mean([late(e["energy"]) for e in entries if e["energy"]]),
            "stable_rank_first": mean([e["stable_rank"][0] for e in entries if e["stable_rank"]]),
            "stable_rank_last_quarter": mean(
                [late(e["stable_rank"]) for e in entries if e["stable_rank"]]
            ),
            "captured_mean": mean([mean(e["captured"]) or math.nan for e in entries]),
            "overlap_mean": mean(overlaps),
            "refreshes": len(overlaps),
            "random_overlap": entries[0].get("random_overlap"),
        }
    return out


def _table_twin(plan: Plan, results: dict[str, RunResult]) -> RunResult | None:
    """The table's run with the theory run's settings (same training, uninstrumented; under the
    same protocol: the ratio too)."""
    spec = plan.runs[plan.theory] if plan.theory else None
    for key, other in plan.runs.items():
        if (
            spec is not None
            and other.kind == "pretrain"
            and (other.method, other.rank, other.update_proj_gap, other.steps, other.lr_group)
            == (spec.method, spec.rank, spec.update_proj_gap, spec.steps, spec.lr_group)
            and (other.lr, other.ratio, other.lr_step) == (spec.lr, spec.ratio, spec.lr_step)
        ):
            return results.get(key)
    return None


def theory_data(plan: Plan, results: dict[str, RunResult]) -> dict[str, Any]:
    """The report's entry for ``plan.theory``: status, perplexity, the per-type summary and the
    table twin's perplexity."""
    assert plan.theory is not None
    result = results.get(plan.theory)
    theory: dict[str, Any] = {"key": plan.theory, "status": "not run"}
    if result is None:
        return theory
    theory["status"] = result.status
    theory["eval_ppl"] = result.eval_ppl
    theory["lr"] = result.lr
    theory["lr_other_ratio"] = result.lr_other_ratio
    if result.theory:
        theory["summary"] = summarize(result.theory)
        theory["every"] = result.theory["every"]
        theory["rank"] = result.theory["rank"]
        theory["update_proj_gap"] = result.theory["update_proj_gap"]
    twin = _table_twin(plan, results)
    if twin is not None and twin.ok and result.ok:
        theory["table_galore_ppl"] = twin.eval_ppl
    return theory
