"""A pre-training run's state on disk: checkpoints written and resumed (every rank reads them),
and config.json with every setting and each accepted change of a trajectory setting."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from galorekit.config import describe
from galorekit.distributed.context import all_reduce_sum, barrier, gather_objects
from galorekit.optim.sharding import local
from galorekit.train.checkpoint import (
    STATE_FILE,
    CheckpointError,
    check_identity,
    checkpoint_name,
    checkpoint_step,
    find_latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_module_state,
    resolve_checkpoint,
    save_checkpoint,
    verify_file,
)
from galorekit.train.logging import write_run_config
from galorekit.train.loop import NonFiniteError, restore_rank_rng, rng_state
from galorekit.train.pretrain_config import (
    FLAGS,
    RESUME_KEYS,
    PretrainConfig,
    config_values,
    saved_values,
    trajectory_changes,
)
from galorekit.train.run_dir import truncate_metrics
from galorekit.train.sharded_checkpoint import (
    check_sharding,
    load_sharded_parts,
    save_sharded_checkpoint,
)

if TYPE_CHECKING:
    from galorekit.train.pretrain import _Run


def check_config_changes(cfg: PretrainConfig, out: Path) -> dict[str, tuple[Any, Any]]:
    """On resume, the settings changed since the run's config.json that change its trajectory;
    refused (nothing is written) unless ``cfg.allow_config_change``."""
    if cfg.resume is None:
        return {}
    changes = trajectory_changes(saved_values(out), config_values(cfg))
    if changes and not cfg.allow_config_change:
        raise ValueError(
            f"--resume: these settings differ from the run's ({out / 'config.json'}) and change "
            f"its trajectory: {describe(changes, FLAGS)}; "
            + _what_to_do(changes, "them (recorded in config.json), or drop them")
        )
    _refuse_fixed(changes, f"the run's settings ({out / 'config.json'})")
    return changes


#: settings a checkpoint's model and optimizer state are built for: loading it restores its own
#: (the param groups' rank, scale, … and weight decay, the adapters' shapes), so a change could
#: only be recorded, never applied — refused even with --allow-config-change
FIXED_ON_RESUME = frozenset(
    {
        "model",
        "method",
        "rank",
        "update_proj_gap",
        "scale",
        "proj_type",
        "svd",
        "moments",
        "state_dtype",
        "weight_rounding",  # a param-group key: the checkpoint's groups are restored
        "precision",  # the checkpoint's weights and moments are in its dtypes
        "layerwise",
        "weight_decay",
        "lora_alpha",
        "lora_dropout",
        "relora_reset_every",
        "relora_prune",
    }
)


def _what_to_do(changes: dict[str, tuple[Any, Any]], accept: str) -> str:
    """The advice of a refused resume: which changes --allow-config-change can accept, and which
    no flag can (``FIXED_ON_RESUME``)."""
    fixed = sorted(k for k in changes if k in FIXED_ON_RESUME)
    if not fixed:
        return f"pass --allow-config-change to accept {accept}"
    named = ", ".join("--" + k.replace("_", "-") for k in fixed)
    return (
        f"{named} cannot change on resume (the checkpoint's state is built for its own): start a "
        "new run in another --output-dir to train with them"
        + ("" if len(fixed) == len(changes) else "; pass --allow-config-change for the others")
    )


def _refuse_fixed(changes: dict[str, tuple[Any, Any]], source: str) -> None:
    fixed = {k: v for k, v in changes.items() if k in FIXED_ON_RESUME}
    if fixed:
        raise ValueError(
            f"--resume: {describe(fixed, FLAGS)} differ from {source}, and a checkpoint's model "
            "and optimizer state are built for its own (loading it would restore them): they "
            "cannot change on resume, even with --allow-config-change; start a new run (another "
            "--output-dir) to train with them"
        )


def resume(run: _Run) -> tuple[int, dict[str, tuple[Any, Any]]]:
    """Load the checkpoint ``cfg.resume`` names (every rank reads it): the step it was taken at,
    and the trajectory settings that differ from the ones it was trained with (refused unless
    ``cfg.allow_config_change``: a checkpoint passed as ``--resume PATH`` is checked too)."""
    cfg, ctx = run.cfg, run.ctx
    try:
        where, ckpt = _load(run)
    except CheckpointError as err:
        if cfg.resume != "latest":
            raise
        raise CheckpointError(f"{err}; {intact_hint(run.out)}") from None
    check_identity(where, ckpt, run.identity, RESUME_KEYS)
    changes = {}
    if isinstance(ckpt.get("config"), dict):  # checkpoints of galorekit ≥ this version
        changes = trajectory_changes(ckpt["config"], config_values(cfg))
        if changes and not cfg.allow_config_change:
            raise CheckpointError(
                f"checkpoint {where} was trained with other settings: "
                f"{describe(changes, FLAGS)}; " + _what_to_do(changes, "them")
            )
        _refuse_fixed(changes, f"checkpoint {where}")
    if run.fsdp:
        load_sharded_parts(where, ctx, run.model, run.optimizer, map_location=run.device)
    else:
        load_module_state(run.model, ckpt["model"], what="model")
        run.optimizer.load_state_dict(ckpt["optimizer"])
    run.scheduler.load_state_dict(ckpt["scheduler"])
    saved_lr = (ckpt.get("config") or {}).get("lr")
    if isinstance(saved_lr, int | float) and saved_lr > 0 and saved_lr != cfg.method.peak_lr:
        _rescale_lr(run, cfg.method.peak_lr / saved_lr)  # an accepted --lr change (recorded)
    run.loader.load_state_dict(ckpt["loader"])
    if run.relora is not None:
        run.relora.load_state_dict(ckpt["relora"])
    restore_rank_rng(ckpt, ctx.rank, ctx.world_size)
    step = int(ckpt["step"])
    if ctx.is_main:
        truncate_metrics(run.out / "metrics.jsonl", step)
        _set_aside_later(run.out / "checkpoints", step)
    return step, changes


def _load(run: _Run) -> tuple[Path, dict[str, Any]]:
    """The checkpoint ``--resume`` names and its state. The latest of the run is its
    highest-step ``step-*`` directory: one that is incomplete or corrupt is an error (never a
    silent fall-back to an older one)."""
    cfg = run.cfg
    root = run.out / "checkpoints"
    where = resolve_checkpoint(root if cfg.resume == "latest" else cfg.resume)
    if cfg.resume == "latest":
        newest = max((p for p in root.glob("step-*") if p.is_dir()), default=where)
        if newest.name > where.name:  # has meta.json (leftovers are gone) but no state.pt
            raise CheckpointError(f"{newest / STATE_FILE} is missing: the checkpoint is incomplete")
    check_sharding(where, run.fsdp)
    required = () if run.fsdp else ("model", "optimizer")
    return where, load_checkpoint(where, map_location=run.device, required_keys=required)


def intact_hint(out: Path) -> str:
    """Which earlier checkpoint of the run is intact (size and SHA-256 as recorded) and how to
    resume from it; the broken one is set aside then (``_set_aside_later``)."""
    for info in reversed(list_checkpoints(out / "checkpoints")):
        try:
            verify_file(info.path, STATE_FILE)
        except CheckpointError:
            continue
        return (
            f"the earlier checkpoint {info.path} (step {info.step}) is intact: resume from it with "
            f"galore pretrain --resume {info.path} --output-dir {out}"
        )
    return f"no intact checkpoint is left: start again with galore pretrain --overwrite --output-dir {out}"


def _set_aside_later(root: Path, step: int) -> None:
    """Resuming from an earlier checkpoint of the run: its later ``step-*`` checkpoints (another
    trajectory, or broken) are renamed ``abandoned-step-*`` — kept, but never resumed or pruned."""
    for path in sorted(root.glob("step-*")) if root.is_dir() else []:
        at = checkpoint_step(path)
        if at is not None and at > step:
            target = root / f"abandoned-{path.name}"
            n = 1
            while target.exists():
                n += 1
                target = root / f"abandoned-{path.name}-{n}"
            path.rename(target)
            print(
                f"galore pretrain: resuming from step {step}: set {path.name} aside as {target.name}"
            )


def _rescale_lr(run: _Run, ratio: float) -> None:
    """Scale the learning rate the checkpoint restored (the scheduler's base rates and every
    group's current rate) by ``ratio``: ``--resume --lr X --allow-config-change`` continues at
    X on the same schedule (the checkpoint's rate would otherwise win)."""
    run.scheduler.base_lrs = [lr * ratio for lr in run.scheduler.base_lrs]
    for group in run.optimizer.param_groups:
        group["lr"] *= ratio
        if "initial_lr" in group:
            group["initial_lr"] *= ratio
    run.scheduler._last_lr = [group["lr"] for group in run.optimizer.param_groups]


def nonfinite_state(run: _Run) -> str | None:
    """The name of a non-finite model weight or optimizer state of this run (any rank), or
    None: what ``save`` refuses to write."""
    tensors = [(f"model weight {name}", p.detach()) for name, p in run.model.named_parameters()]
    tensors += [
        (f"optimizer state {key!r} of a {tuple(param.shape)} parameter", value)
        for param, state in run.optimizer.state.items()
        for key, value in state.items()
        if isinstance(value, torch.Tensor) and value.is_floating_point()
    ]
    bad = next((name for name, t in tensors if not bool(torch.isfinite(local(t)).all())), None)
    if run.ctx.enabled:  # every rank must take the same decision (sharded states differ)
        (count,) = all_reduce_sum(run.ctx, [float(bad is not None)], run.device)
        if count > 0 and bad is None:
            bad = "a state on another rank"
    return bad


def write_config(run: _Run, step: int, changes: dict[str, tuple[Any, Any]]) -> None:
    """config.json: every setting (it reads back as a ``--config`` file), the run's identity and
    each accepted change of a trajectory setting, with the step it took effect at."""
    path = run.out / "config.json"
    previous: list[Any] = []
    if path.exists():
        with contextlib.suppress(ValueError, OSError):
            previous = list(json.loads(path.read_text(encoding="utf-8")).get("config_changes", []))
    if changes:
        previous.append({"step": step, "changes": {k: list(v) for k, v in changes.items()}})
    record = {
        **config_values(run.cfg),
        "world_size": run.ctx.world_size,
        "run": {"output_dir": str(run.out), **run.identity},
        "config_changes": previous,
    }
    write_run_config(run.out, record)


def run_hint(run: _Run) -> str:
    """How to go on after a divergence: from the last good checkpoint, at a lower rate (or, when
    the run diverged before its first checkpoint, again from the start)."""
    lower = f"--lr {run.cfg.method.peak_lr / 10:g}"
    return (
        f"resume from the last good checkpoint at a lower rate: galore pretrain --resume "
        f"--output-dir {run.out} {lower} --allow-config-change (if it wrote no checkpoint yet, "
        f"start again: the same command with --overwrite and {lower})"
    )


def save(run: _Run, at_step: int) -> Path:
    """Rank 0 writes (the states are the same on every rank; under FSDP every rank writes its
    shards too); every rank's RNG is kept."""
    ctx, cfg = run.ctx, run.cfg
    bad = nonfinite_state(run)
    if bad is not None:  # a diverged state is never checkpointed: the latest stays the last good
        latest = find_latest_checkpoint(run.out / "checkpoints")
        raise NonFiniteError(
            f"training diverged at step {at_step}: {bad} is not finite; no checkpoint was "
            f"written (the last good one: {latest or 'none'}); " + run_hint(run)
        )
    rngs = gather_objects(ctx, rng_state())
    path = run.out / "checkpoints" / checkpoint_name(at_step)
    state = {
        "step": at_step,
        "identity": run.identity,
        "config": config_values(cfg),  # compared on resume (trajectory settings)
        "scheduler": run.scheduler.state_dict(),
        "loader": run.loader.state_dict(),
        "rng": rngs[0],
    }
    if ctx.enabled:
        state["rng_ranks"] = rngs
    if run.relora is not None:
        state["relora"] = run.relora.state_dict()
    if run.fsdp:
        return save_sharded_checkpoint(
            path, ctx, state, run.model, run.optimizer, keep_last=cfg.keep_checkpoints
        )
    if ctx.is_main:
        state["model"] = run.model.state_dict()
        state["optimizer"] = run.optimizer.state_dict()
        path = save_checkpoint(path, state, keep_last=cfg.keep_checkpoints)
    barrier(ctx)
    return path
