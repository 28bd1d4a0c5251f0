"""LLaMA pre-training with GaLore or any baseline of the paper, top to bottom.

config (``pretrain_config``) → data + model → method (optimizer / adapters) → the loop core
(``galorekit.train.loop``; ``_train`` drives it: logging, evaluation, checkpoints, the stop
signal) → metrics, summary, plots. Everything needed to continue a run bit-identically is in its
checkpoints (``pretrain_state``): model, optimizer (with GaLore's projectors), scheduler, ReLoRA
counters, data-loader position, every RNG state, and the settings it was trained with.

Data parallelism (``galorekit.distributed``): under torchrun every rank runs this function on its
slice of each global batch. ``batch_size`` is the per-process micro-batch, ``total_batch_size`` the
global batch, so accumulation = total / (batch × world size). Rank 0 alone writes the run
directory (metrics, progress bar, plots, checkpoints — the same format as a single process: the
model and optimizer states are identical on every rank); every rank reads a checkpoint to resume.
Evaluation is split over the ranks (rank r takes validation batches r, r+W, …) and the
token-weighted loss is summed over them, so it equals the single-process evaluation. The train
loss logged is the mean over ranks of their micro-batch losses (= the global batch's loss).

``distributed="fsdp"`` shards the model with FSDP2 before the optimizer is built
(``galorekit.distributed.fsdp``): parameters, gradients and optimizer states are split over the
ranks, and checkpoints are written collectively (``galorekit.train.sharded_checkpoint``).
"""

# size: ~600 lines — the pre-training driver, meant to be read top to bottom (build, start, train,
# stop, summary) in one file, as nanoGPT's; every function in it is a screen or less, and the
# parts with a life of their own already live beside it (loop, pretrain_config, pretrain_state,
# run_dir, run_lock, failures, watch)

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import torch

from galorekit.atomic import atomic_write_text
from galorekit.data import build_tokenizer, load_pretraining_data
from galorekit.distributed.comm import CommCounter
from galorekit.distributed.context import (
    DistContext,
    all_reduce_sum,
    main_first,
    run_as_job,
    run_on_main,
)
from galorekit.distributed.data_parallel import setup_data_parallel
from galorekit.extras import needs_extra
from galorekit.methods import setup
from galorekit.models import build_model, count_parameters
from galorekit.models.build import enable_activation_checkpointing
from galorekit.train import pretrain_state
from galorekit.train.export import ExportDirs, full_state_dict
from galorekit.train.init_from import check_architecture, load_init_model
from galorekit.train.logging import MetricsLogger, NullLogger, read_metrics, summary_table
from galorekit.train.loop import (
    Loop,
    NonFiniteError,
    StepOutput,
    StopFlag,
    due,
    lm_loss,
    peak_memory_bytes,
    resolve_device,
    seed_everything,
)
from galorekit.train.precision import apply_precision
from galorekit.train.pretrain_config import (  # noqa: F401  (re-exported)
    GALORE_METHODS,
    RESUME_KEYS,
    PretrainConfig,
    config_values,
    saved_values,
    trajectory_changes,
)
from galorekit.train.run_dir import (  # noqa: F401  (re-exported)
    RUN_FILES,
    check_output_dir,
    default_output_dir,
    finished_step,
    prepare_output_dir,
    truncate_metrics,
)
from galorekit.train.run_lock import LOCK_FILE, RunLock
from galorekit.train.schedule import pretrain_schedule
from galorekit.train.watch import LossWatch

with needs_extra("train"):  # the progress bar
    from tqdm.auto import tqdm


@dataclass
class PretrainResult:
    output_dir: Path
    final_step: int
    eval_loss: float
    eval_ppl: float
    train_loss: float
    seconds: float
    summary: str


@torch.no_grad()
def evaluate_sums(
    model,
    batches: list[torch.Tensor],
    device: torch.device,
    autocast,
    *,
    forwards: int | None = None,
    filler: torch.Tensor | None = None,
) -> tuple[float, int]:
    """(token-weighted sum of the cross-entropy, tokens) over ``batches``: sums add over ranks.

    ``forwards`` > len(batches) runs that many forward passes in all, the extra ones on ``filler``
    and not counted (a sharded model's forward is collective: every rank must run as many)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for batch in batches:
        batch = batch.to(device)
        with autocast():
            loss = model(input_ids=batch, labels=batch).loss
        tokens = batch.numel() - batch.shape[0]  # the model predicts seq_len - 1 tokens a row
        total += float(loss) * tokens
        count += tokens
    for _ in range(max(0, (forwards or 0) - len(batches))):
        with autocast():
            model(input_ids=filler.to(device))
    model.train(was_training)
    return total, count


def pretrain(cfg: PretrainConfig) -> PretrainResult:
    """Run ``cfg`` in this process — alone, or as one rank of a torchrun job (module docstring)."""
    return run_as_job(
        resolve_device(cfg.device), cfg.world_size, lambda ctx, device: _pretrain(cfg, ctx, device)
    )


# ---------------------------------------------------------------------------- the run's pieces
@dataclass
class _Run:
    """Everything one pre-training run holds, built by ``_build``."""

    cfg: PretrainConfig
    ctx: DistContext
    device: torch.device
    out: Path
    model: Any  # the model (FSDP: sharded in place)
    parallel: Any  # DataParallelModel: the module to call, clipping, accumulation
    optimizer: Any
    scheduler: Any
    relora: Any
    loader: Any
    val_batches: list[torch.Tensor]
    eval_forwards: int
    identity: dict[str, Any]
    fsdp: bool
    autocast: Callable[[], Any]
    logger: Any = None
    vocab_size: int = 2
    tokenizer: Any = None
    exports: ExportDirs | None = None
    warnings: list[str] = field(default_factory=list)  # LossWatch's, for the summary


def _build(cfg: PretrainConfig, ctx: DistContext, device: torch.device, out: Path) -> _Run:
    """Data, model, method, data parallelism and schedule — in the order that fixes the RNG
    draws (a resumed run rebuilds exactly the same)."""
    seed_everything(cfg.seed)
    # rank 0 first: it fills the tokenizer/token caches the others then read
    cfg.data.seed = cfg.seed
    with main_first(ctx):
        tokenizer = build_tokenizer(cfg.data)
        data = load_pretraining_data(cfg.data, tokenizer)
    if cfg.init_from is not None:
        model = load_init_model(
            cfg.init_from,
            vocab_size=data.vocab_size,
            seq_len=cfg.data.seq_len,
            device=device,
            trust_remote_code=cfg.trust_remote_code,
        )
    else:
        model = build_model(
            cfg.model,
            vocab_size=data.vocab_size,
            max_position_embeddings=max(cfg.data.seq_len, 1024),
            seed=cfg.seed,
            device=device,
            trust_remote_code=cfg.trust_remote_code,
        )
    autocast = apply_precision(model, cfg.precision, device)  # before the optimizer holds it
    if cfg.activation_checkpointing:
        enable_activation_checkpointing(model)
        model.config.use_cache = False
    fsdp = ctx.enabled and cfg.distributed == "fsdp"
    if fsdp:  # before the optimizer: it must hold the sharded parameters
        from galorekit.distributed.fsdp import shard_model  # FSDP2: loaded only when used

        shard_model(model, ctx, device)
    method = setup(model, cfg.method, total_steps=cfg.max_steps)
    model, optimizer, relora = method.model, method.optimizer, method.relora
    parallel = setup_data_parallel(
        model,
        optimizer,
        ctx,
        device,
        layerwise=cfg.method.layerwise,
        lowrank_comm=cfg.lowrank_comm,
        strategy=cfg.distributed if ctx.enabled else "ddp",
    )
    if relora is not None:
        warmup = int(cfg.warmup_ratio * cfg.max_steps)
        lr_lambda = relora.lr_lambda(warmup=warmup, total=cfg.max_steps, min_ratio=cfg.min_lr_ratio)
    else:
        lr_lambda = pretrain_schedule(
            warmup_ratio=cfg.warmup_ratio, total=cfg.max_steps, min_ratio=cfg.min_lr_ratio
        )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
    loader = data.train_loader(cfg.batch_size, rank=ctx.rank, world_size=ctx.world_size)
    # evaluation is split over the ranks; the token-weighted sums are added up
    val_batches = data.val_batches(cfg.eval_batch_size or cfg.batch_size)
    # FSDP2's forward is collective (it all-gathers each layer): every rank runs as many
    # forwards, those without a batch of their own on a batch whose loss is not counted
    mine = len(val_batches[ctx.rank :: ctx.world_size])
    eval_forwards = -(-len(val_batches) // ctx.world_size) if fsdp else mine
    identity = {
        "model": cfg.model,
        "method": cfg.method.method,
        "seq_len": cfg.data.seq_len,
        "batch_size": cfg.batch_size,
        "total_batch_size": cfg.global_batch_size,
        "data_fingerprint": data.fingerprint,
        "world_size": ctx.world_size,
    }
    run = _Run(
        cfg,
        ctx,
        device,
        out,
        model,
        parallel,
        optimizer,
        scheduler,
        relora,
        loader,
        val_batches,
        eval_forwards,
        identity,
        fsdp,
        autocast,
    )
    run.vocab_size, run.tokenizer = data.vocab_size, tokenizer
    if cfg.export_dir is not None:
        run.exports = ExportDirs(cfg.export_dir, merge_adapters=not cfg.export_adapters)
    return run


def _evaluate(run: _Run) -> float:
    """The validation loss, split over the ranks and summed (equals the one-process value)."""
    ctx = run.ctx
    total, count = evaluate_sums(
        run.model,
        run.val_batches[ctx.rank :: ctx.world_size],
        run.device,
        run.autocast,
        forwards=run.eval_forwards,
        filler=run.val_batches[0],
    )
    total, count = all_reduce_sum(ctx, [total, float(count)], run.device)
    return total / max(count, 1)


# ---------------------------------------------------------------------------- the run
class RunFinished(Exception):
    """``--resume`` of a run that already trained its ``--max-steps``: nothing to do."""


def _pretrain(cfg: PretrainConfig, ctx: DistContext, device: torch.device) -> PretrainResult:
    with contextlib.ExitStack() as held:
        target = default_output_dir(cfg) if cfg.output_dir is None else Path(cfg.output_dir)
        created = [p for p in (target, *target.parents) if not p.exists()]  # ours to remove
        try:
            out = Path(run_on_main(ctx, lambda: str(_open_run_dir(cfg, held, target))))
            return _start(cfg, ctx, device, out)
        except BaseException:
            # a run refused before it wrote anything leaves no folder behind (only the lock's
            # holder may remove it: a process refused by the lock leaves its holder's alone)
            locked = (target / LOCK_FILE).exists() and _holds_lock(target)
            if locked and created and {p.name for p in target.glob("*")} <= {LOCK_FILE}:
                held.close()
                shutil.rmtree(target, ignore_errors=True)
                for parent in created[1:]:  # e.g. runs/ of the default directory
                    with contextlib.suppress(OSError):
                        parent.rmdir()  # only when empty
            raise


def _holds_lock(out: Path) -> bool:
    """Whether this process wrote the lock file of ``out`` (it holds the run's lock)."""
    text = (out / LOCK_FILE).read_text(encoding="utf-8") if (out / LOCK_FILE).exists() else ""
    return text.startswith(f"pid {os.getpid()} ")


def _open_run_dir(cfg: PretrainConfig, held: contextlib.ExitStack, target: Path) -> Path:
    """Rank 0: the run directory, locked for this process's lifetime (``run_lock``), crash
    leftovers removed; a finished run is refused with ``RunFinished`` before anything is
    written."""
    if cfg.init_from is not None:  # a missing or conflicting model, before the tokenizer
        check_architecture(cfg.model, cfg.init_from, cfg.trust_remote_code)
    if cfg.export_dir is not None:  # before anything is written or trained
        exports = ExportDirs(cfg.export_dir)
        exports.check(replace=cfg.overwrite or cfg.resume is not None)
    out = prepare_output_dir(cfg, lock=lambda path: held.enter_context(RunLock(path)), out=target)
    if cfg.resume == "latest":
        at = finished_step(out, cfg.max_steps)
        if at is not None:
            raise RunFinished(
                f"{out} is a finished run ({at} of --max-steps {cfg.max_steps} steps; see its "
                "summary.md): nothing to do; pass a larger --max-steps to train it further"
            )
    return out


def _start(cfg: PretrainConfig, ctx: DistContext, device: torch.device, out: Path):
    changes = pretrain_state.check_config_changes(cfg, out)
    run = _build(cfg, ctx, device, out)
    step = 0
    if cfg.resume is not None:
        step, in_checkpoint = pretrain_state.resume(run)
        changes = {**in_checkpoint, **changes}
    if ctx.is_main:
        pretrain_state.write_config(run, step, changes)
    run.logger = MetricsLogger.for_run(out, cfg) if ctx.is_main else NullLogger()
    if changes:
        run.logger.log(
            {
                "event": "config_change",
                "step": step,
                "changes": {k: list(v) for k, v in changes.items()},
            }
        )
    return _train(run, step)


def _sync(run: _Run, counter: Any, traffic: list[int]) -> Callable[[float, bool], Any] | None:
    """One collective per step under torchrun: the global batch's loss and whether any rank was
    signalled (all ranks must stop at the same step, or the others would wait for it forever).
    The decision is the reduced flag alone: a signal that lands after the collective is seen by
    one rank only, so it waits for the next step's reduction. ``traffic`` receives the bytes the
    step communicated before this reduction (the gradients')."""
    if not run.ctx.enabled:
        return None

    def sync(loss: float, stopping: bool) -> tuple[float, bool]:
        traffic.append(counter.reset())
        total, signalled = all_reduce_sum(run.ctx, [loss, float(stopping)], run.device)
        return total / run.ctx.world_size, signalled > 0

    return sync


def _train(run: _Run, step: int) -> PretrainResult:
    cfg, ctx, logger = run.cfg, run.ctx, run.logger
    n_params = count_parameters(run.model)
    n_trainable = count_parameters(run.model, trainable_only=True)
    tokens_per_step = cfg.global_batch_size * cfg.data.seq_len
    bar = tqdm(
        total=cfg.max_steps,
        initial=step,
        disable=not (cfg.progress and ctx.is_main),
        desc=f"{cfg.model} {cfg.method.method}" + (f" ×{ctx.world_size}" if ctx.enabled else ""),
        dynamic_ncols=True,
    )
    eval_loss = train_loss = math.nan
    comm_total = 0
    started = time.perf_counter()
    run.parallel.module.train()
    counter = CommCounter() if ctx.enabled else contextlib.nullcontext()
    traffic: list[int] = []  # per step: the bytes this rank communicated
    last_save = time.monotonic()
    watch = LossWatch(run.vocab_size, settle_step=int(cfg.warmup_ratio * cfg.max_steps))
    best_loss = _previous_best(run)
    with StopFlag() as stop, counter:
        loop = Loop(
            run.parallel.module,
            run.optimizer,
            run.scheduler,
            lambda: next(run.loader).to(run.device),
            lm_loss,
            accumulation=cfg.accumulation_steps,
            max_grad_norm=cfg.method.max_grad_norm,
            layerwise=cfg.method.layerwise,
            autocast=run.autocast,
            clip_grad_norm=run.parallel.clip_grad_norm_,
            accumulate=lambda last: run.parallel.accumulate(last=last),
            sync=_sync(run, counter, traffic),
            stop=stop,
            check_loss_locally=not ctx.enabled,
            hint=pretrain_state.run_hint(run),
            step=step,
        )
        if step == 0:
            logger.log(
                {
                    "event": "start",
                    "step": 0,
                    "params": n_params,
                    "trainable": n_trainable,
                    "world_size": ctx.world_size,
                }
            )
        while loop.step < cfg.max_steps:
            if ctx.enabled:
                counter.reset()
            try:
                out = loop.train_step()
            except NonFiniteError as err:  # nothing applied: the last checkpoint stays good
                _diverged(run, bar, loop.step + 1, err)
            except FloatingPointError as err:  # the optimizer's own check (layer-wise: in backward)
                reason = str(err).split(". ")[0]
                _diverged(
                    run,
                    bar,
                    loop.step + 1,
                    NonFiniteError(
                        f"training diverged at step {loop.step + 1}: {reason}; no checkpoint of "
                        f"this step was written; {pretrain_state.run_hint(run)}"
                    ),
                )
            warning = watch.check(out.step, out.loss)
            if warning is not None:
                run.warnings.append(warning)
                logger.log({"event": "warning", "step": out.step, "message": warning})
                if ctx.is_main:
                    tqdm.write(f"galore pretrain: warning: {warning}", file=sys.stderr)
            comm_bytes = traffic.pop() if ctx.enabled else 0
            comm_total += comm_bytes
            step, train_loss = out.step, out.loss
            if run.relora is not None and run.relora.maybe_reset(step, run.optimizer):
                if ctx.enabled:  # re-initialised adapters: rank 0's, whatever each RNG holds
                    # (the merged weights are equal already: every rank merged the same adapters)
                    for adapter in run.relora.lora_parameters():
                        torch.distributed.broadcast(adapter.data, src=0)
                logger.log({"event": "relora_reset", "step": step})
            if due(step, cfg.log_every, cfg.max_steps):
                _log_train(run, out, tokens_per_step, comm_bytes, bar)
            bar.update(1)
            if run.val_batches and due(step, cfg.eval_every, cfg.max_steps):
                eval_loss = _evaluate(run)
                ppl = math.exp(min(eval_loss, 50.0))
                logger.log({"event": "eval", "step": step, "eval_loss": eval_loss, "eval_ppl": ppl})
                if run.exports is not None and eval_loss < best_loss:
                    best_loss = eval_loss
                    _export(run, "best", step, eval_loss)
            if due(step, cfg.save_every, cfg.max_steps) or _save_time(run, step, last_save):
                last_save = time.monotonic()
                try:
                    pretrain_state.save(run, step)
                except NonFiniteError as err:  # a non-finite state is never checkpointed
                    _diverged(run, bar, step, err)
            if out.stopping:
                _stop(run, stop.signal or signal.SIGTERM, step, bar)  # another rank's signal
    bar.close()
    if math.isnan(eval_loss):  # resumed at the end (a kill after the final checkpoint)
        eval_loss, train_loss = _final_values(run, step, eval_loss, train_loss)
    if run.exports is not None:
        _export(run, "final", step, eval_loss)
    seconds = time.perf_counter() - started
    end = {"event": "end", "step": step, "seconds": seconds}
    if ctx.enabled:
        end["comm_bytes_total"] = comm_total
    logger.log(end)
    logger.close()
    eval_ppl = math.exp(min(eval_loss, 50.0)) if math.isfinite(eval_loss) else math.nan
    if not ctx.is_main:
        return PretrainResult(run.out, step, eval_loss, eval_ppl, train_loss, seconds, "")
    summary = _summary(run, step, n_params, n_trainable, train_loss, eval_loss, eval_ppl, seconds)
    return PretrainResult(run.out, step, eval_loss, eval_ppl, train_loss, seconds, summary)


def _previous_best(run: _Run) -> float:
    """The validation loss of the run's ``DIR/best`` export (a resumed run keeps improving on
    it); infinity when there is none."""
    record = run.exports.previous("best") if run.exports is not None else None
    return float(record.get("eval_loss", math.inf)) if record else math.inf


def _export(run: _Run, which: str, step: int, eval_loss: float) -> None:
    """``--export-dir``: ``DIR/which`` from rank 0 (FSDP: gathered from every rank's shards)."""
    state = full_state_dict(run.model) if run.fsdp else None  # collective
    if run.ctx.is_main:
        path = run.exports.write(
            which,
            run.model,
            tokenizer=run.tokenizer,
            state_dict=state,
            step=step,
            eval_loss=eval_loss if math.isfinite(eval_loss) else None,
            trained_from=run.cfg.model,
            method=run.cfg.method.method,
            precision=run.cfg.precision,
        )
        run.logger.log({"event": "export", "step": step, "which": which, "path": str(path)})


def _save_time(run: _Run, step: int, last_save: float) -> bool:
    """``--save-every-minutes``: whether that long passed since the last checkpoint (under
    torchrun rank 0's clock decides, every 10 steps: all ranks must save together)."""
    minutes = run.cfg.save_every_minutes
    if minutes <= 0:
        return False
    late = time.monotonic() - last_save >= 60.0 * minutes
    if not run.ctx.enabled:
        return late
    if step % 10:
        return False
    (flag,) = all_reduce_sum(run.ctx, [float(late and run.ctx.is_main)], run.device)
    return flag > 0


def _diverged(run: _Run, bar, step: int, err: NonFiniteError) -> NoReturn:
    bar.close()
    run.logger.log({"event": "diverged", "step": step, "error": str(err)})
    run.logger.close()
    raise err


def _final_values(run: _Run, step: int, eval_loss: float, train_loss: float):
    """The evaluation and training loss of ``step`` as metrics.jsonl logged them (a run resumed
    from its final checkpoint trains nothing); evaluated again when the log lacks them."""
    logged = read_metrics(run.out) if (run.out / "metrics.jsonl").exists() else []
    for event in logged:
        if event.get("step") == step and event.get("event") == "eval":
            eval_loss = float(event["eval_loss"])
        if event.get("event") == "train" and isinstance(event.get("loss"), float):
            train_loss = event["loss"]
    if math.isnan(eval_loss) and run.val_batches:
        eval_loss = _evaluate(run)
    return eval_loss, train_loss


def _log_train(run: _Run, out: StepOutput, tokens_per_step: int, comm_bytes: int, bar) -> None:
    mem = peak_memory_bytes(run.device)
    event = {
        "event": "train",
        "step": out.step,
        "loss": out.loss,
        "lr": out.lr,
        "tokens_per_s": tokens_per_step / out.seconds,
        "grad_norm": out.grad_norm,
        "peak_memory_bytes": mem,
    }
    if run.ctx.enabled:
        event["comm_bytes"] = comm_bytes  # this rank's payload, last step
    run.logger.log(event)
    bar.set_postfix(
        loss=f"{out.loss:.3f}",
        lr=f"{out.lr:.2e}",
        tok_s=f"{tokens_per_step / out.seconds:,.0f}",
        mem=f"{mem / 2**30:.2f}G",
    )


def _stop(run: _Run, signum: int, step: int, bar) -> None:
    """A stop signal: checkpoint this step, say how to continue, exit 128 + signal."""
    path = pretrain_state.save(run, step)
    bar.close()
    run.logger.log({"event": "interrupted", "step": step, "signal": signum})
    run.logger.close()
    if run.ctx.is_main:
        print(
            f"\nstopped by signal {signum} at step {step}; checkpoint {path}\n"
            f"continue with: galore pretrain --resume --output-dir {run.out}",
            file=sys.stderr,
        )
    raise SystemExit(128 + signum)


def _summary(
    run: _Run,
    step: int,
    n_params: int,
    n_trainable: int,
    train_loss: float,
    eval_loss: float,
    eval_ppl: float,
    seconds: float,
) -> str:
    """summary.md (and the table printed), curves.png."""
    cfg, ctx = run.cfg, run.ctx
    method_name = cfg.method.method + (" (layer-wise)" if cfg.method.layerwise else "")
    if ctx.enabled:
        method_name += f" ×{ctx.world_size} {cfg.distributed}"
        method_name += " low-rank comm" if cfg.lowrank_comm else ""
    summary = summary_table(
        [
            {
                "model": cfg.model,
                "method": method_name,
                "steps": step,
                "params": n_params,
                "trainable": n_trainable,
                "train_loss": train_loss,
                "eval_loss": eval_loss,
                "eval_ppl": eval_ppl,
                "peak_mem_GiB": peak_memory_bytes(run.device) / 2**30,
                "seconds": seconds,
            }
        ],
        title=f"galore pretrain — {run.out}",
    )
    if run.warnings:
        summary += "\n\n" + "\n".join(f"warning: {w}" for w in run.warnings)
    atomic_write_text(run.out / "summary.md", f"```\n{summary}\n```\n")
    if cfg.plot:
        from galorekit.train.plots import plot_run  # matplotlib: only when a plot is drawn

        plot_run(run.out, title=f"{cfg.model} · {method_name} · {step} steps")
    return summary
