"""LLaMA pre-training with GaLore or any baseline of the paper — the loop, top to bottom.

config → data + model → method (optimizer / adapters) → loop → metrics, checkpoints, plots.
Everything needed to continue a run bit-identically is in its checkpoints: model, optimizer (with
GaLore's projectors), scheduler, ReLoRA counters, data-loader position and every RNG state.

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

from __future__ import annotations

import contextlib
import json
import math
import random
import resource
import shutil
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from galorekit.atomic import atomic_write_text
from galorekit.data import DataConfig
from galorekit.names import DISTRIBUTED_STRATEGIES
from galorekit.train.methods import METHODS, MethodConfig, setup_method
from galorekit.train.schedule import warmup_cosine

#: fields that must match between a checkpoint and the run resuming from it
RESUME_KEYS = ("model", "method", "seq_len", "batch_size", "total_batch_size", "data_fingerprint")
#: galorekit's GaLore methods (low-rank communication and FSDP read their projectors)
GALORE_METHODS = tuple(m for m in METHODS if m.startswith("galore_"))
RUN_FILES = ("metrics.jsonl", "config.json", "checkpoints", "tensorboard", "summary.md")


@dataclass
class PretrainConfig:
    """One pre-training run. ``galore pretrain --help`` documents each field."""

    model: str = "llama_9m"
    data: DataConfig = field(default_factory=DataConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    max_steps: int = 200
    batch_size: int = 8  # sequences per micro-batch
    total_batch_size: int | None = None  # sequences per optimizer step; None: batch_size
    warmup_ratio: float = 0.1
    min_lr_ratio: float = 0.1
    eval_every: int = 50
    eval_batch_size: int | None = None  # None: batch_size
    save_every: int = 1000
    keep_checkpoints: int = 2
    log_every: int = 10
    output_dir: str | None = None  # None: runs/pretrain-<model>-<method>-<time>
    resume: str | None = None  # "latest" or a checkpoint path
    overwrite: bool = False
    dtype: str = "float32"  # autocast dtype of the forward/backward: float32 or bfloat16
    activation_checkpointing: bool = False
    device: str = "auto"
    seed: int = 0
    progress: bool = True
    tensorboard: bool = True
    plot: bool = True
    nproc_per_node: int = 1  # processes `galore pretrain` launches through torchrun
    world_size: int | None = None  # None: torchrun's WORLD_SIZE, else nproc_per_node
    distributed: str = "ddp"  # data-parallel strategy, one of DISTRIBUTED_STRATEGIES
    lowrank_comm: bool = False  # all-reduce GaLore gradients projected between refreshes

    def __post_init__(self) -> None:
        from galorekit.distributed.context import env_world_size, inside_torchrun

        if self.world_size is None:
            self.world_size = env_world_size() if inside_torchrun() else self.nproc_per_node
        errors = []
        for name in ("max_steps", "batch_size", "log_every"):
            if getattr(self, name) < 1:
                errors.append(f"{name} must be ≥ 1, got {getattr(self, name)}")
        for name in ("eval_every", "save_every"):
            if getattr(self, name) < 0:
                errors.append(f"{name} must be ≥ 0 (0: only at the end), got {getattr(self, name)}")
        if self.keep_checkpoints < 1:
            errors.append(f"keep_checkpoints must be ≥ 1, got {self.keep_checkpoints}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            errors.append(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            errors.append(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.dtype not in ("float32", "bfloat16"):
            errors.append(f"dtype must be float32 or bfloat16, got {self.dtype!r}")
        if self.nproc_per_node < 1 or self.world_size < 1:
            errors.append(
                f"nproc_per_node and world_size must be ≥ 1, got {self.nproc_per_node} and "
                f"{self.world_size}"
            )
        per_step = self.batch_size * max(self.world_size, 1)
        if self.total_batch_size is not None and (
            self.total_batch_size < per_step or self.total_batch_size % per_step
        ):
            if self.world_size == 1:
                errors.append(
                    f"total_batch_size ({self.total_batch_size}) must be a multiple of batch_size "
                    f"({self.batch_size})"
                )
            else:
                errors.append(
                    f"total_batch_size ({self.total_batch_size}) must be a multiple of batch_size "
                    f"× processes ({self.batch_size} × {self.world_size} = {per_step}): each "
                    "process runs whole micro-batches of batch_size"
                )
        if self.distributed not in DISTRIBUTED_STRATEGIES:
            errors.append(
                f"unknown --distributed {self.distributed!r}; valid: "
                + ", ".join(DISTRIBUTED_STRATEGIES)
            )
        if self.distributed == "fsdp":
            from galorekit.distributed.fsdp import FSDP_METHODS

            if self.method.method not in FSDP_METHODS:
                errors.append(
                    f"--distributed fsdp supports the methods {', '.join(FSDP_METHODS)}, not "
                    f"{self.method.method} (Adafactor's statistics span whole matrices; the "
                    "adapter baselines rebuild the model); use --distributed ddp"
                )
            if self.method.method in GALORE_METHODS and self.method.proj_type not in (
                "std",
                "right",
            ):
                errors.append(
                    "--distributed fsdp projects every matrix on the right (R = G·Q is local to "
                    f"a row shard): --proj-type must be std or right, not {self.method.proj_type}"
                )
            if self.lowrank_comm:
                errors.append(
                    "--lowrank-comm is a DDP option (FSDP2 reduce-scatters full gradients); use "
                    "--distributed ddp with it"
                )
        if self.lowrank_comm:
            if self.method.method not in GALORE_METHODS:
                errors.append(
                    "--lowrank-comm communicates GaLore's projected gradients: it needs a galore_* "
                    f"method, not {self.method.method}"
                )
            if self.method.layerwise:
                errors.append(
                    "--lowrank-comm is not available with --layerwise (the layer-wise optimizer "
                    "all-reduces full gradients inside its hooks)"
                )
            if self.world_size < 2:
                errors.append("--lowrank-comm needs data parallelism (--nproc-per-node ≥ 2)")
        if self.resume is not None and self.overwrite:
            errors.append("--resume and --overwrite contradict each other")
        if errors:
            raise ValueError("invalid pre-training config: " + "; ".join(errors))
        self.method.accumulation_steps = self.accumulation_steps

    @property
    def global_batch_size(self) -> int:
        """Sequences per optimizer step over all processes."""
        return self.total_batch_size or self.batch_size * (self.world_size or 1)

    @property
    def accumulation_steps(self) -> int:
        return self.global_batch_size // (self.batch_size * (self.world_size or 1))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PretrainResult:
    output_dir: Path
    final_step: int
    eval_loss: float
    eval_ppl: float
    train_loss: float
    seconds: float
    summary: str


# ---------------------------------------------------------------------------- helpers
def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"unknown device {name!r}: {err}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but no CUDA device is available")
    return device


def default_output_dir(cfg: PretrainConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"pretrain-{cfg.model}-{cfg.method.method}-{stamp}"


def check_output_dir(cfg: PretrainConfig, out: Path) -> list[str]:
    """The run files already in ``out``; raises when they forbid this run (nothing is changed)."""
    existing = [name for name in RUN_FILES if (out / name).exists()]
    if existing and cfg.resume is None and not cfg.overwrite:
        raise FileExistsError(
            f"{out} already holds a run ({', '.join(existing)}); pass --resume to continue "
            "it, --overwrite to replace it, or another --output-dir"
        )
    if cfg.resume is not None and not existing and cfg.resume == "latest":
        raise FileNotFoundError(f"--resume: {out} holds no run to resume")
    return existing


def prepare_output_dir(cfg: PretrainConfig) -> Path:
    """The run directory; refuses one that holds a run unless resuming or overwriting."""
    out = default_output_dir(cfg) if cfg.output_dir is None else Path(cfg.output_dir)
    existing = check_output_dir(cfg, out)
    if existing and cfg.resume is None:  # --overwrite
        for name in existing:
            path = out / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out


def rng_state() -> dict[str, Any]:
    """Every RNG a run may draw from, as tensors and plain tuples (``weights_only``-loadable)."""
    kind, key, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": (kind, torch.from_numpy(key.astype(np.int64)), pos, has_gauss, cached),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, key, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, key.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def peak_memory_bytes(device: torch.device) -> int:
    """Peak memory of this process: the CUDA allocator's peak, or the peak RSS on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is KiB on Linux
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * scale


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


def truncate_metrics(path: Path, after_step: int) -> None:
    """On resume, drop the events logged after the checkpoint (they will be logged again)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            event = json.loads(line)
            if event.get("step", 0) <= after_step:
                kept.append(line)
    atomic_write_text(path, "".join(f"{line}\n" for line in kept))


class StopFlag:
    """Set by SIGTERM / SIGINT: the loop finishes its step, checkpoints and exits."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopFlag:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError):  # not the main thread
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal is not None:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.signal = signum

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


# ---------------------------------------------------------------------------- the run
class _NullLogger:
    """The metrics logger of ranks other than 0."""

    def log(self, event: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


def pretrain(cfg: PretrainConfig) -> PretrainResult:
    """Run ``cfg`` in this process — alone, or as one rank of a torchrun job (module docstring)."""
    from galorekit.distributed.context import init_distributed, shutdown

    device = resolve_device(cfg.device)
    ctx = init_distributed(device.type)
    try:
        if ctx.world_size != cfg.world_size:
            raise ValueError(
                f"the config is for {cfg.world_size} process(es) but the job has "
                f"{ctx.world_size}; build the config inside the job (world_size=None)"
            )
        if ctx.enabled and device.type == "cuda":
            device = torch.device("cuda", ctx.local_rank)
        return _pretrain(cfg, ctx, device)
    finally:
        shutdown(ctx)


def _pretrain(cfg: PretrainConfig, ctx: Any, device: torch.device) -> PretrainResult:
    from galorekit.data import build_tokenizer, load_pretraining_data
    from galorekit.distributed.comm import CommCounter
    from galorekit.distributed.context import (
        all_reduce_sum,
        barrier,
        gather_objects,
        main_first,
        run_on_main,
    )
    from galorekit.distributed.data_parallel import setup_data_parallel
    from galorekit.models import build_model, count_parameters
    from galorekit.train.checkpoint import (
        checkpoint_name,
        load_checkpoint,
        load_module_state,
        resolve_checkpoint,
        save_checkpoint,
    )
    from galorekit.train.logging import MetricsLogger, summary_table, write_run_config
    from galorekit.train.sharded_checkpoint import (
        is_sharded_checkpoint,
        load_sharded_parts,
        save_sharded_checkpoint,
    )

    out = Path(run_on_main(ctx, lambda: str(prepare_output_dir(cfg))))
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)

    # data and model (rank 0 first: it fills the tokenizer/token caches the others then read)
    cfg.data.seed = cfg.seed
    with main_first(ctx):
        tokenizer = build_tokenizer(cfg.data)
        data = load_pretraining_data(cfg.data, tokenizer)
    model = build_model(
        cfg.model,
        vocab_size=data.vocab_size,
        max_position_embeddings=max(cfg.data.seq_len, 1024),
        seed=cfg.seed,
        device=device,
    )
    if cfg.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    fsdp = ctx.enabled and cfg.distributed == "fsdp"
    if fsdp:  # before the optimizer: it must hold the sharded parameters
        from galorekit.distributed.fsdp import shard_model

        shard_model(model, ctx, device)
    setup = setup_method(model, cfg.method, total_steps=cfg.max_steps)
    model, optimizer, relora = setup.model, setup.optimizer, setup.relora
    layerwise = cfg.method.layerwise
    parallel = setup_data_parallel(
        model,
        optimizer,
        ctx,
        device,
        layerwise=layerwise,
        lowrank_comm=cfg.lowrank_comm,
        strategy=cfg.distributed if ctx.enabled else "ddp",
    )
    warmup = int(cfg.warmup_ratio * cfg.max_steps)
    if relora is not None:
        lr_lambda = relora.lr_lambda(warmup=warmup, total=cfg.max_steps, min_ratio=cfg.min_lr_ratio)
    else:

        def lr_lambda(step: int) -> float:
            return warmup_cosine(
                step, warmup=warmup, total=cfg.max_steps, min_ratio=cfg.min_lr_ratio
            )

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
    loader = data.train_loader(cfg.batch_size, rank=ctx.rank, world_size=ctx.world_size)
    # evaluation is split over the ranks; the token-weighted sums are added up
    val_batches = data.val_batches(cfg.eval_batch_size or cfg.batch_size)
    my_val_batches = val_batches[ctx.rank :: ctx.world_size]
    # FSDP2's forward is collective (it all-gathers each layer): every rank runs as many
    # forwards, those without a batch of their own on a batch whose loss is not counted
    eval_forwards = -(-len(val_batches) // ctx.world_size) if fsdp else len(my_val_batches)
    accumulation = cfg.accumulation_steps
    autocast_dtype = torch.bfloat16 if cfg.dtype == "bfloat16" else None

    def autocast():
        if autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=autocast_dtype)

    identity = {
        "model": cfg.model,
        "method": cfg.method.method,
        "seq_len": cfg.data.seq_len,
        "batch_size": cfg.batch_size,
        "total_batch_size": cfg.global_batch_size,
        "data_fingerprint": data.fingerprint,
        "world_size": ctx.world_size,
    }

    # resume (every rank reads the checkpoint)
    step = 0
    if cfg.resume is not None:
        where = resolve_checkpoint(out / "checkpoints" if cfg.resume == "latest" else cfg.resume)
        sharded = is_sharded_checkpoint(where)
        if sharded != fsdp:
            from galorekit.train.checkpoint import CheckpointError

            raise CheckpointError(
                f"checkpoint {where} was written by "
                + ("an FSDP run" if sharded else "a run without FSDP")
                + "; resume it with "
                + ("--distributed fsdp" if sharded else "--distributed ddp or one process")
            )
        required = () if fsdp else ("model", "optimizer")
        ckpt = load_checkpoint(where, map_location=device, required_keys=required)
        mismatched = [
            f"{k}: checkpoint {ckpt['identity'].get(k)!r} vs now {identity[k]!r}"
            for k in RESUME_KEYS
            if ckpt.get("identity", {}).get(k) != identity[k]
        ]
        if mismatched:
            from galorekit.train.checkpoint import CheckpointError

            raise CheckpointError(
                f"checkpoint {where} belongs to another run: " + "; ".join(mismatched)
            )
        if fsdp:
            load_sharded_parts(where, ctx, model, optimizer, map_location=device)
        else:
            load_module_state(model, ckpt["model"], what="model")
            optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        loader.load_state_dict(ckpt["loader"])
        if relora is not None:
            relora.load_state_dict(ckpt["relora"])
        per_rank = ckpt.get("rng_ranks")
        same_world = isinstance(per_rank, list) and len(per_rank) == ctx.world_size
        set_rng_state(per_rank[ctx.rank] if same_world else ckpt["rng"])
        step = int(ckpt["step"])
        if ctx.is_main:
            truncate_metrics(out / "metrics.jsonl", step)

    if ctx.is_main:
        write_run_config(out, {**cfg.to_dict(), "output_dir": str(out), **identity})
    n_params = count_parameters(model)
    n_trainable = count_parameters(model, trainable_only=True)
    tokens_per_step = cfg.global_batch_size * cfg.data.seq_len

    def save(at_step: int) -> Path:
        """Rank 0 writes (the states are the same on every rank; under FSDP every rank writes its
        shards too); every rank's RNG is kept."""
        rngs = gather_objects(ctx, rng_state())
        path = out / "checkpoints" / checkpoint_name(at_step)
        state = {
            "step": at_step,
            "identity": identity,
            "scheduler": scheduler.state_dict(),
            "loader": loader.state_dict(),
            "rng": rngs[0],
        }
        if ctx.enabled:
            state["rng_ranks"] = rngs
        if relora is not None:
            state["relora"] = relora.state_dict()
        if fsdp:
            return save_sharded_checkpoint(
                path, ctx, state, model, optimizer, keep_last=cfg.keep_checkpoints
            )
        if ctx.is_main:
            state["model"] = model.state_dict()
            state["optimizer"] = optimizer.state_dict()
            path = save_checkpoint(path, state, keep_last=cfg.keep_checkpoints)
        barrier(ctx)
        return path

    from tqdm.auto import tqdm

    logger: Any = MetricsLogger(out, tensorboard=cfg.tensorboard) if ctx.is_main else _NullLogger()
    bar = tqdm(
        total=cfg.max_steps,
        initial=step,
        disable=not (cfg.progress and ctx.is_main),
        desc=f"{cfg.model} {cfg.method.method}" + (f" ×{ctx.world_size}" if ctx.enabled else ""),
        dynamic_ncols=True,
    )
    eval_loss = math.nan
    train_loss = math.nan
    comm_total = 0
    started = time.perf_counter()
    parallel.module.train()
    counter = CommCounter() if ctx.enabled else contextlib.nullcontext()
    with StopFlag() as stop, counter:
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
        while step < cfg.max_steps:
            t0 = time.perf_counter()
            if ctx.enabled:
                counter.reset()
            loss_sum = torch.zeros((), device=device)
            for i in range(accumulation):
                batch = next(loader).to(device)
                with parallel.accumulate(last=i == accumulation - 1):
                    with autocast():
                        outputs = parallel.module(input_ids=batch, labels=batch)
                        loss = outputs.loss / accumulation
                    loss.backward()  # layer-wise: the last micro-batch updates here
                loss_sum += loss.detach()  # no host sync per micro-batch
            loss_sum = float(loss_sum)
            if layerwise:
                optimizer.step()
                grad_norm = optimizer.grad_norm
            else:
                grad_norm = parallel.clip_grad_norm_(cfg.method.max_grad_norm or math.inf)
                optimizer.step()
            comm_bytes = counter.reset() if ctx.enabled else 0
            comm_total += comm_bytes
            lr = optimizer.param_groups[0]["lr"]
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            step += 1
            if relora is not None and relora.maybe_reset(step, optimizer):
                if ctx.enabled:  # re-initialised adapters: rank 0's, whatever each RNG holds
                    # (the merged weights are equal already: every rank merged the same adapters)
                    for adapter in relora.lora_parameters():
                        torch.distributed.broadcast(adapter.data, src=0)
                logger.log({"event": "relora_reset", "step": step})
            # one collective: the global batch's loss, and whether any rank was signalled (all
            # ranks must stop at the same step, or the others would wait for it forever). The
            # decision is the reduced flag alone: a signal that lands after the collective is
            # seen by one rank only, so it waits for the next step's reduction.
            stopping = stop.signal is not None
            if ctx.enabled:
                flag = float(stopping)
                loss_total, signalled = all_reduce_sum(ctx, [loss_sum, flag], device)
                loss_sum = loss_total / ctx.world_size
                stopping = signalled > 0
            if not math.isfinite(loss_sum):
                raise FloatingPointError(
                    f"the training loss became {loss_sum} at step {step}; lower --lr or check --dtype"
                )
            train_loss = loss_sum
            dt = time.perf_counter() - t0
            if step % cfg.log_every == 0 or step == cfg.max_steps:
                mem = peak_memory_bytes(device)
                event = {
                    "event": "train",
                    "step": step,
                    "loss": loss_sum,
                    "lr": lr,
                    "tokens_per_s": tokens_per_step / dt,
                    "grad_norm": grad_norm,
                    "peak_memory_bytes": mem,
                }
                if ctx.enabled:
                    event["comm_bytes"] = comm_bytes  # this rank's payload, last step
                logger.log(event)
                bar.set_postfix(
                    loss=f"{loss_sum:.3f}",
                    lr=f"{lr:.2e}",
                    tok_s=f"{tokens_per_step / dt:,.0f}",
                    mem=f"{mem / 2**30:.2f}G",
                )
            bar.update(1)
            if val_batches and (
                (cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.max_steps
            ):
                total, count = evaluate_sums(
                    model,
                    my_val_batches,
                    device,
                    autocast,
                    forwards=eval_forwards,
                    filler=val_batches[0],
                )
                total, count = all_reduce_sum(ctx, [total, float(count)], device)
                eval_loss = total / max(count, 1)
                logger.log(
                    {
                        "event": "eval",
                        "step": step,
                        "eval_loss": eval_loss,
                        "eval_ppl": math.exp(min(eval_loss, 50.0)),
                    }
                )
            if (cfg.save_every and step % cfg.save_every == 0) or step == cfg.max_steps:
                save(step)
            if stopping:
                stop.signal = stop.signal or signal.SIGTERM  # another rank's signal
                path = save(step)
                bar.close()
                logger.log({"event": "interrupted", "step": step, "signal": stop.signal})
                logger.close()
                if ctx.is_main:
                    print(
                        f"\nstopped by signal {stop.signal} at step {step}; checkpoint {path}\n"
                        f"continue with: galore pretrain --resume --output-dir {out} …",
                        file=sys.stderr,
                    )
                raise SystemExit(128 + stop.signal)
    bar.close()
    seconds = time.perf_counter() - started
    end = {"event": "end", "step": step, "seconds": seconds}
    if ctx.enabled:
        end["comm_bytes_total"] = comm_total
    logger.log(end)
    logger.close()
    eval_ppl = math.exp(min(eval_loss, 50.0)) if math.isfinite(eval_loss) else math.nan
    if not ctx.is_main:
        return PretrainResult(out, step, eval_loss, eval_ppl, train_loss, seconds, "")
    method_name = cfg.method.method + (" (layer-wise)" if layerwise else "")
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
                "peak_mem_GiB": peak_memory_bytes(device) / 2**30,
                "seconds": seconds,
            }
        ],
        title=f"galore pretrain — {out}",
    )
    atomic_write_text(out / "summary.md", f"```\n{summary}\n```\n")
    if cfg.plot:
        from galorekit.train.plots import plot_run

        plot_run(out)
    return PretrainResult(out, step, eval_loss, eval_ppl, train_loss, seconds, summary)
