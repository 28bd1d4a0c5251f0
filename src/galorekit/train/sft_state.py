"""A ``galore sft`` run's state on disk: checkpoints written and resumed, the ``--export-dir``
exports, the measurements a resumed run logged before, and the summary."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from galorekit.atomic import atomic_write_text
from galorekit.distributed.context import barrier, gather_objects
from galorekit.train.checkpoint import (
    check_identity,
    checkpoint_name,
    load_checkpoint,
    load_module_state,
    resolve_checkpoint,
    save_checkpoint,
)
from galorekit.train.export import ExportDirs, full_state_dict
from galorekit.train.logging import read_metrics, summary_table
from galorekit.train.loop import peak_memory_bytes, restore_rank_rng, rng_state
from galorekit.train.run_dir import truncate_metrics
from galorekit.train.sft_config import RESUME_KEYS, SFTConfig, config_values
from galorekit.train.sharded_checkpoint import (
    check_sharding,
    load_sharded_parts,
    save_sharded_checkpoint,
)

if TYPE_CHECKING:
    from galorekit.train.sft import _Run


def logged_before(out: Path) -> dict[str, Any]:
    """The measurements of step 0 a resumed run logged when it started."""
    before: dict[str, Any] = {"val_loss": None, "accuracy": None}
    for event in read_metrics(out) if (out / "metrics.jsonl").exists() else []:
        if event.get("step") == 0 and event.get("event") == "eval":
            before["val_loss"] = event["eval_loss"]
        if event.get("step") == 0 and event.get("event") == "generate":
            before.update(accuracy=event["accuracy"], n=event["n"], samples=event["samples"])
    return before


# ---------------------------------------------------------------------------- exports
def export(run: _Run, which: str, step: int, val_loss: float) -> Path | None:
    """``--export-dir``/``which`` (final, best): the model as a Hugging Face directory, written
    by rank 0 (call on every rank: under FSDP the weights are gathered from every rank's
    shards); its path on rank 0, None on the others."""
    state = full_state_dict(run.model) if run.fsdp else None  # collective
    if not run.ctx.is_main:
        return None
    exports = ExportDirs(run.cfg.export_dir, merge_adapters=not run.cfg.export_adapters)
    return exports.write(
        which, run.model, tokenizer=run.tokenizer, state_dict=state, step=step,
        eval_loss=val_loss, trained_from=run.cfg.model,
    )  # fmt: skip


def export_best(run: _Run, step: int, val_loss: float) -> None:
    """``--export-dir``/best when ``val_loss`` is the lowest of the run's periodic evaluations
    (without --eval-every the final model is the only candidate: no best directory). Call on
    every rank: ``val_loss`` is the same on all."""
    if run.cfg.export_dir is None or not run.cfg.eval_every:
        return
    if run.best_loss <= val_loss:
        return
    export(run, "best", step, val_loss)
    run.best_loss = val_loss


def previous_best(cfg: SFTConfig) -> float:
    """The validation loss of the best export of the run a resume continues (inf: none)."""
    if cfg.resume is None or cfg.export_dir is None:
        return math.inf
    loss = (ExportDirs(cfg.export_dir).previous("best") or {}).get("eval_loss")
    return float(loss) if isinstance(loss, int | float) else math.inf


# ---------------------------------------------------------------------------- checkpoints
def save(run: _Run, step: int) -> Path:
    """Rank 0 writes (the states are the same on every rank; under FSDP every rank writes its
    shards too); every rank's RNG is kept."""
    rngs = gather_objects(run.ctx, rng_state())
    state = {
        "step": step,
        "identity": run.identity,
        "config": config_values(run.cfg),
        "scheduler": run.scheduler.state_dict(),
        "batches": run.batches.index,
        "rng": rngs[0],
        "rng_ranks": rngs,
    }
    path = run.out / "checkpoints" / checkpoint_name(step)
    keep = run.cfg.keep_checkpoints
    if run.fsdp:
        return save_sharded_checkpoint(
            path, run.ctx, state, run.model, run.optimizer, keep_last=keep
        )
    if run.ctx.is_main:
        state.update(model=run.model.state_dict(), optimizer=run.optimizer.state_dict())
        save_checkpoint(path, state, keep_last=keep)
    barrier(run.ctx)
    return path


def resume(run: _Run) -> int:
    """Load the checkpoint ``--resume`` names into the run; the step it was taken at."""
    where = resolve_checkpoint(
        run.out / "checkpoints" if run.cfg.resume == "latest" else run.cfg.resume
    )
    check_sharding(where, run.fsdp)
    required = () if run.fsdp else ("model", "optimizer")
    ckpt = load_checkpoint(where, map_location=run.device, required_keys=required)
    check_identity(where, ckpt, run.identity, RESUME_KEYS)
    if run.fsdp:
        load_sharded_parts(where, run.ctx, run.model, run.optimizer, map_location=run.device)
    else:
        load_module_state(run.model, ckpt["model"], what="model")
        run.optimizer.load_state_dict(ckpt["optimizer"])
    run.scheduler.load_state_dict(ckpt["scheduler"])
    run.batches.index = int(ckpt["batches"])
    restore_rank_rng(ckpt, run.ctx.rank, run.ctx.world_size)
    step = int(ckpt["step"])
    if run.ctx.is_main:
        truncate_metrics(run.out / "metrics.jsonl", step)
    return step


# ---------------------------------------------------------------------------- summary
def summary(
    run: _Run,
    step: int,
    train_loss: float,
    before: dict[str, Any],
    after: dict[str, Any],
    tokens_per_s: float,
    seconds: float,
) -> str:
    cfg = run.cfg
    method = cfg.method.method + (" (layer-wise)" if cfg.method.layerwise else "")
    if run.ctx.enabled:  # as galore pretrain's summary: how many processes, which strategy
        method += f" ×{run.ctx.world_size} {cfg.distributed}"
    table = summary_table(
        [
            {
                "model": cfg.model,
                "method": method,
                "steps": step,
                "train_loss": train_loss,
                "val_loss before": before.get("val_loss"),
                "val_loss after": after.get("val_loss"),
                "accuracy before": before.get("accuracy"),
                "accuracy after": after.get("accuracy"),
                "tokens/s": tokens_per_s,
                "peak_mem_GiB": peak_memory_bytes(run.device) / 2**30,
                "seconds": seconds,
            }
        ],
        title=f"galore sft — {run.out}",
    )
    lines = [table]
    if after.get("accuracy") is not None:
        lines.append(
            f"\naccuracy: greedily generated answers to {after['n']} held-out "
            f"{run.data.prompts_split} examples of {run.data.source}"
        )
        for when, result in (("before", before), ("after", after)):
            for s in result.get("samples") or []:
                lines.append(
                    f"{when}: {s['question']!r} → {s['generated']!r} (ref {s['reference']!r})"
                )
    summary = "\n".join(lines)
    atomic_write_text(run.out / "summary.md", f"```\n{summary}\n```\n")
    return summary
