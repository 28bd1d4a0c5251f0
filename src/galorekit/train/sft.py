"""``galore sft``: supervised fine-tuning of a pretrained causal LM, top to bottom.

config (``sft_config``) → model (``models.pretrained``: a hub id, a directory or a GGUF file) →
data (``data.sft``: chat / prompt-completion / Alpaca, loss on the answers) → method
(``methods.setup``: GaLore, full AdamW, LoRA, … with ``--layerwise``) → measure before → the loop
core (``train.loop``: accumulation, clipping, divergence checks, the stop signal) → measure after →
summary. Measured before and after: the validation loss on the answer tokens and the accuracy of
greedily generated answers to held-out questions (``sft_eval``).

Why galorekit's loop and not TRL's ``SFTTrainer``: stock TRL cannot update inside backward with
accumulation or DDP (``--layerwise``) nor checkpoint galorekit's optimizer states for a
bit-identical resume (``galorekit.integrations.trl.GaLoreSFTTrainer`` adds both for TRL users);
this command shares ``galore pretrain``'s loop core, launcher, checkpoints and exports instead.
What TRL and transformers do well is used as is — chat templates (transformers) and packing (TRL's
``pack_dataset``), see ``galorekit.data.sft``.

A checkpoint holds the model, the optimizer (with GaLore's projectors), the scheduler, every RNG
and the step; the batch order is a function of the seed and the micro-batch index, so ``--resume``
continues bit-identically. The run directory follows ``galore pretrain``'s rules (``run_dir``):
a directory holding a run is refused unless ``--resume`` or ``--overwrite``.

``--distributed fsdp`` shards the model with FSDP2 before the optimizer is built, as ``galore
pretrain`` does (``galorekit.distributed.fsdp``). A sharded forward is collective, so every rank
runs as many validation forwards and generate calls (each rank generates its block of the
held-out prompts, rank 0 scores them all); checkpoints are written by every rank
(``train.sharded_checkpoint``) and exports gathered from the shards (``export.full_state_dict``).
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from galorekit.data.config import resolve_cache_dir
from galorekit.data.sft import SFTData, load_sft_data
from galorekit.distributed.context import (
    DistContext,
    all_reduce_sum,
    barrier,
    gather_objects,
    main_first,
    run_as_job,
    run_on_main,
)
from galorekit.distributed.data_parallel import setup_data_parallel
from galorekit.extras import needs_extra
from galorekit.methods import MethodConfig, setup
from galorekit.methods.build import MethodSetup, adapter_rank, build_optimizer, default_rank
from galorekit.models import count_parameters
from galorekit.models.build import enable_activation_checkpointing
from galorekit.models.pretrained import (
    context_length,
    load_causal_lm,
    load_tokenizer,
    resolve_causal_lm,
)
from galorekit.train import sft_state
from galorekit.train.export import ExportDirs
from galorekit.train.logging import (
    MetricsLogger,
    NullLogger,
    write_run_config,
)
from galorekit.train.loop import (
    Loop,
    StopFlag,
    due,
    peak_memory_bytes,
    resolve_device,
    seed_everything,
)
from galorekit.train.precision import apply_precision
from galorekit.train.run_dir import prepare_output_dir
from galorekit.train.run_lock import LOCK_FILE, RunLock
from galorekit.train.schedule import pretrain_schedule
from galorekit.train.sft_config import SFTConfig, config_values, default_output_dir
from galorekit.train.sft_eval import (
    GENERATE_BATCH,
    Batches,
    GenerationScore,
    data_fingerprint,
    generate_answers,
    generation_accuracy,
    score_answers,
    sft_loss,
    validation_sums,
)

with needs_extra("train"):
    from tqdm.auto import tqdm


@dataclass
class SFTResult:
    output_dir: Path
    steps: int
    train_loss: float
    before: dict[str, Any]  # val_loss, accuracy (None when not measured)
    after: dict[str, Any]
    tokens_per_s: float
    seconds: float
    summary: str
    model: Any = field(default=None, repr=False)  # the trained model (the adapters' wrapper)
    tokenizer: Any = field(default=None, repr=False)
    optimizer: Any = field(default=None, repr=False)
    batches: Any = field(default=None, repr=False)  # the training batches (``Batches``)


# ---------------------------------------------------------------------------- the run
@dataclass
class _Run:
    cfg: SFTConfig
    ctx: DistContext
    out: Path
    device: torch.device
    model: Any  # unwrapped (state dicts, evaluation, export); FSDP: sharded in place
    parallel: Any  # DataParallelModel: the module to call, clipping, accumulation
    tokenizer: Any
    optimizer: Any
    scheduler: Any
    data: SFTData
    batches: Batches
    identity: dict[str, Any]
    autocast: Any
    max_steps: int
    fsdp: bool = False  # the model is sharded (FSDP2): collective forwards and checkpoints
    logger: Any = None
    best_loss: float = math.inf  # of the --export-dir best export


def sft(cfg: SFTConfig) -> SFTResult:
    """Run ``cfg`` in this process — alone, or as one rank of a torchrun job (DDP or FSDP2)."""
    return run_as_job(
        resolve_device(cfg.device), cfg.world_size, lambda ctx, device: _sft(cfg, ctx, device)
    )


def _sft(cfg: SFTConfig, ctx: DistContext, device: torch.device) -> SFTResult:
    """The run directory is locked (by rank 0) for the run's lifetime."""
    target = default_output_dir(cfg) if cfg.output_dir is None else Path(cfg.output_dir)
    if cfg.export_dir is not None:  # before anything is written or trained
        ExportDirs(cfg.export_dir).check(replace=cfg.overwrite or cfg.resume is not None)
    created = [p for p in (target, *target.parents) if not p.exists()]
    try:
        with contextlib.ExitStack() as held:

            def prepare() -> str:
                lock = lambda p: held.enter_context(RunLock(p))  # noqa: E731
                return str(prepare_output_dir(cfg, lock=lock, out=target))

            return _start(cfg, ctx, device, Path(run_on_main(ctx, prepare)))
    except BaseException:
        # a run refused before it wrote anything leaves no folder behind (rmdir: only if empty)
        if (
            ctx.is_main
            and created
            and {p.name for p in target.glob("*")} | {LOCK_FILE} == {LOCK_FILE}
        ):
            with contextlib.suppress(OSError):
                (target / LOCK_FILE).unlink()
        for path in created if ctx.is_main else []:
            with contextlib.suppress(OSError):
                path.rmdir()
        raise


def _build(cfg: SFTConfig, ctx: DistContext, device: torch.device, out: Path) -> _Run:
    seed_everything(cfg.seed)  # every rank: the same adapters, the same batch order
    with main_first(ctx):  # rank 0 converts a GGUF file into the cache, the others read it
        location = resolve_causal_lm(
            cfg.model, cache_dir=resolve_cache_dir(), trust_remote_code=cfg.trust_remote_code
        )
        tokenizer = load_tokenizer(location, trust_remote_code=cfg.trust_remote_code)
        model = load_causal_lm(location, trust_remote_code=cfg.trust_remote_code)
        data = load_sft_data(
            cfg.data, tokenizer, context_length(model.config, tokenizer), prompts=cfg.generate_eval
        )
    for note in data.notes if ctx.is_main else []:
        print(f"note: {note}")
    model.to(device)
    autocast = apply_precision(model, cfg.precision, device)  # before the optimizer holds it
    if cfg.activation_checkpointing:
        enable_activation_checkpointing(model)
    fsdp = ctx.enabled and cfg.distributed == "fsdp"
    if fsdp:  # before the optimizer: it must hold the sharded parameters
        from galorekit.distributed.fsdp import shard_model  # FSDP2: loaded only when used

        shard_model(model, ctx, device)
    per_epoch = math.ceil(len(data.train) / (cfg.batch_size * ctx.world_size))
    max_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * per_epoch / cfg.accumulation_steps))
    method = _setup_method(model, replace(cfg.method, lr=cfg.peak_lr), max_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        method.optimizer,
        pretrain_schedule(
            warmup_ratio=cfg.warmup_ratio, total=max_steps, min_ratio=cfg.min_lr_ratio
        ),
    )
    parallel = setup_data_parallel(
        method.model,
        method.optimizer,
        ctx,
        device,
        layerwise=cfg.method.layerwise,
        strategy="fsdp" if fsdp else "ddp",
    )
    pad = tokenizer.pad_token_id
    batches = Batches(data.train, cfg.batch_size, cfg.seed, pad, ctx.rank, ctx.world_size)
    identity = {
        "model": cfg.model,
        "method": cfg.method.method,
        "batch_size": cfg.batch_size,
        "total_batch_size": cfg.global_batch_size,
        "data_fingerprint": data_fingerprint(data),
    }
    return _Run(
        cfg,
        ctx,
        out,
        device,
        method.model,
        parallel,
        tokenizer,
        method.optimizer,
        scheduler,
        data,
        batches,
        identity,
        autocast,
        max_steps,
        fsdp,
    )


def _setup_method(model: Any, method: MethodConfig, total_steps: int) -> MethodSetup:
    """``methods.setup``, except for LoRA: fine-tuning's LoRA trains the adapters alone (the
    pre-training baseline of ``methods.setup`` also trains the embeddings and norms)."""
    if method.method != "lora":
        return setup(model, method, total_steps=total_steps)
    from galorekit.methods.adapters import apply_lora  # peft: only for LoRA

    rank, note = adapter_rank(model, method.rank or default_rank(model))
    if note is not None:
        print(f"note: lora: {note}")
    model = apply_lora(
        model,
        rank=rank,
        alpha=method.lora_alpha,
        dropout=method.lora_dropout,
        train_non_targeted=False,
    )
    return MethodSetup(model, build_optimizer(model, method, rank=rank))


def _start(cfg: SFTConfig, ctx: DistContext, device: torch.device, out: Path) -> SFTResult:
    run = _build(cfg, ctx, device, out)
    step = sft_state.resume(run) if cfg.resume is not None else 0
    run.best_loss = sft_state.previous_best(cfg)
    if not ctx.is_main:  # rank 0 alone writes the run directory
        run.logger = NullLogger()
        return _train(run, step)
    record = {**config_values(cfg), "world_size": ctx.world_size}
    write_run_config(out, {**record, "run": {"output_dir": str(out), **run.identity}})
    run.logger = MetricsLogger.for_run(out, cfg)
    try:
        return _train(run, step)
    finally:
        run.logger.close()


def _measure(run: _Run, step: int, when: str) -> dict[str, Any]:
    """The validation loss and the generated answers' accuracy now, logged and printed."""
    val = _validation_loss(run)
    run.logger.log({"event": "eval", "step": step, "eval_loss": val})
    result: dict[str, Any] = {"val_loss": val, "accuracy": None}
    score = _generation_score(run) if run.cfg.generate_eval and run.data.prompts else None
    if not run.ctx.is_main:  # rank 0 reports
        return result
    if score is None:
        tqdm.write(f"{when}: validation loss {val:.4f}")
        return result
    run.logger.log({"event": "generate", "step": step, "when": when, **score.as_event()})
    result.update(accuracy=score.accuracy, n=score.n, samples=score.samples)
    tqdm.write(
        f"{when}: validation loss {val:.4f}, accuracy of generated answers "
        f"{score.accuracy:.3f} on {score.n} {run.data.prompts_split} examples"
    )
    for s in score.samples:
        tqdm.write(f"  {s['question']!r}\n    → {s['generated']!r} (reference {s['reference']!r})")
    return result


def _generation_score(run: _Run) -> GenerationScore | None:
    """The held-out prompts' generated answers, scored on rank 0 (None on the others). One
    process or DDP: rank 0 generates alone, the others wait. FSDP (a sharded forward is
    collective): rank r generates the r-th contiguous block of the prompts — rank 0's block
    starts with the samples one process prints — with as many generate calls as every other
    rank, and rank 0 scores them all."""
    ctx, cfg, prompts = run.ctx, run.cfg, run.data.prompts
    if not run.fsdp:
        score = None
        if ctx.is_main:
            score = generation_accuracy(
                run.model,
                run.tokenizer,
                prompts,
                run.device,
                max_new_tokens=cfg.max_new_tokens,
                samples=cfg.samples,
            )
        barrier(ctx)
        return score
    share = math.ceil(len(prompts) / ctx.world_size)
    generated = generate_answers(
        run.model,
        run.tokenizer,
        prompts[ctx.rank * share : (ctx.rank + 1) * share],
        run.device,
        max_new_tokens=cfg.max_new_tokens,
        calls=math.ceil(share / GENERATE_BATCH),
        filler=prompts[:1],
        synced=True,
    )
    every = gather_objects(ctx, generated)
    if not ctx.is_main:
        return None
    return score_answers(prompts, [g for part in every for g in part], cfg.samples)


def _validation_loss(run: _Run) -> float:
    """The validation loss, split over the ranks and summed (equals the one-process value)."""
    ctx, examples, size = run.ctx, run.data.validation, run.cfg.batch_size * 2
    # FSDP2's forward is collective: every rank runs as many forwards as the rank with the most
    # batches, the extra ones on examples whose loss is not counted
    forwards = math.ceil(math.ceil(len(examples) / ctx.world_size) / size) if run.fsdp else 0
    total, count = validation_sums(
        run.model,
        examples[ctx.rank :: ctx.world_size],
        size,
        run.tokenizer.pad_token_id,
        run.device,
        run.autocast,
        forwards=forwards,
        filler=examples[:size],
    )
    total, count = all_reduce_sum(ctx, [total, float(count)], run.device)
    return total / max(count, 1)


def _sync(run: _Run) -> Any:
    """Under torchrun one collective per step: the global batch's loss and whether any rank was
    signalled (every rank stops at the same step)."""
    if not run.ctx.enabled:
        return None

    def sync(loss: float, stopping: bool) -> tuple[float, bool]:
        total, signalled = all_reduce_sum(run.ctx, [loss, float(stopping)], run.device)
        return total / run.ctx.world_size, signalled > 0

    return sync


def _train(run: _Run, step: int) -> SFTResult:
    cfg, logger = run.cfg, run.logger
    started = time.perf_counter()
    if step == 0:
        logger.log(
            {
                "event": "start",
                "step": 0,
                "params": count_parameters(run.model),
                "trainable": count_parameters(run.model, trainable_only=True),
                "train_examples": len(run.data.train),
                "steps": run.max_steps,
            }
        )
        before = _measure(run, 0, "before")
    else:
        before = sft_state.logged_before(run.out)
    tokens = [0]

    def next_batch() -> dict[str, torch.Tensor]:
        batch = run.batches.next()
        tokens[0] += run.batches.last_tokens
        return {k: v.to(run.device) for k, v in batch.items()}

    ctx = run.ctx
    bar = tqdm(
        total=run.max_steps,
        initial=step,
        disable=not (cfg.progress and ctx.is_main),
        desc=f"sft {cfg.method.method}" + (f" ×{ctx.world_size}" if ctx.enabled else ""),
    )
    train_loss, train_seconds, trained_tokens = math.nan, 0.0, 0
    with StopFlag() as stop:
        loop = Loop(
            run.parallel.module,
            run.optimizer,
            run.scheduler,
            next_batch,
            sft_loss,
            accumulation=cfg.accumulation_steps,
            max_grad_norm=cfg.method.max_grad_norm,
            layerwise=cfg.method.layerwise,
            autocast=run.autocast,
            clip_grad_norm=run.parallel.clip_grad_norm_,
            accumulate=lambda last: run.parallel.accumulate(last=last),
            sync=_sync(run),
            check_loss_locally=not ctx.enabled,
            stop=stop,
            hint=f"lower --lr (now {cfg.peak_lr:g})",
            step=step,
        )
        while loop.step < run.max_steps:
            tokens[0] = 0
            out = loop.train_step()
            step, train_loss = out.step, out.loss
            train_seconds += out.seconds
            trained_tokens += tokens[0]
            bar.update(1)
            if due(step, cfg.log_every, run.max_steps):
                logger.log(
                    {
                        "event": "train",
                        "step": step,
                        "loss": out.loss,
                        "lr": out.lr,
                        "grad_norm": out.grad_norm,
                        "tokens_per_s": tokens[0] * ctx.world_size / out.seconds,
                        "peak_memory_bytes": peak_memory_bytes(run.device),
                    }
                )
                bar.set_postfix(loss=f"{out.loss:.3f}")
            if cfg.eval_every and due(step, cfg.eval_every, run.max_steps) and step < run.max_steps:
                val = _validation_loss(run)
                logger.log({"event": "eval", "step": step, "eval_loss": val})
                sft_state.export_best(run, step, val)
            if due(step, cfg.save_every, run.max_steps) or out.stopping:
                sft_state.save(run, step)
            if out.stopping:
                bar.close()
                logger.log({"event": "interrupted", "step": step})
                if ctx.is_main:
                    print(
                        f"\nstopped at step {step}; continue with: galore sft --resume "
                        f"--output-dir {run.out}",
                        file=sys.stderr,
                    )
                raise SystemExit(128 + (stop.signal or signal.SIGTERM))
    bar.close()
    after = _measure(run, step, "after")
    if cfg.export_dir is not None:  # every rank: FSDP gathers the weights collectively
        sft_state.export_best(run, step, after["val_loss"])
        path = sft_state.export(run, "final", step, after["val_loss"])
        if ctx.is_main:
            tqdm.write(f"exported the final model to {path}")
    seconds = time.perf_counter() - started
    tokens_per_s = trained_tokens * ctx.world_size / train_seconds if train_seconds else math.nan
    logger.log({"event": "end", "step": step, "seconds": seconds, "tokens_per_s": tokens_per_s})
    summary = (
        ""
        if not ctx.is_main
        else sft_state.summary(run, step, train_loss, before, after, tokens_per_s, seconds)
    )
    return SFTResult(
        run.out,
        step,
        train_loss,
        before,
        after,
        tokens_per_s,
        seconds,
        summary,
        run.model,
        run.tokenizer,
        run.optimizer,
        run.batches,
    )
