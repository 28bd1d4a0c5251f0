"""One run, in a worker process: ``galore pretrain`` (or the theory loop), then its result.

``execute(job)`` is what the runner's processes call; it returns a ``RunResult`` as a dict (a
picklable, JSON-ready value). A run stopped by a non-finite loss is a result too (status
"diverged"); any other error propagates and the run is not cached.
"""

from __future__ import annotations

import math
import os
import platform
import resource
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import torch

from galorekit.data import build_tokenizer
from galorekit.memory import TrainingSetup, estimate
from galorekit.reproduce.configs import Job, data_config, pretrain_config
from galorekit.reproduce.results import RunResult
from galorekit.reproduce.theory import run_theory
from galorekit.train.logging import read_metrics
from galorekit.train.pretrain import pretrain


class RunInterrupted(RuntimeError):
    """The run was stopped by SIGINT/SIGTERM before its end."""


def init_worker() -> None:
    """Worker start-up: one thread (two single-threaded runs use two cores better than one run
    with two threads on these small matrices), and Ctrl-C left to the run's own handler (which
    stops it at the end of a step) instead of killing the idle worker."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            lines = [line for line in info if line.startswith("model name")]
        return lines[0].split(":", 1)[1].strip() if lines else platform.processor()
    except OSError:  # not Linux
        return platform.processor()


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def memory_row(job: Job, vocab_size: int) -> dict[str, int]:
    """Optimizer-state bytes from the memory model (float32, as trained here), and the paper's
    Table 2 convention: BF16 weights + optimizer states. galore-torch's GaLoreAdamW keeps the same
    tensors as galorekit's (a projector and two moments of the projected gradient)."""
    cfg, spec = job.config, job.spec
    method = "galore_adamw" if spec.method == "galore_torch_adamw" else spec.method
    row: dict[str, int] = {}
    for precision in ("fp32", "bf16-true"):
        setup = TrainingSetup(
            method=method,
            rank=spec.rank,
            precision=precision,
            batch_size=cfg.batch_size,
            seq_len=cfg.seq_len,
        )
        est = estimate(cfg.model, setup, vocab_size=vocab_size)
        if precision == "fp32":
            row.update(
                optimizer_states=est.optimizer_states,
                projectors=est.projectors,
                weights=est.weights,
                parameters=est.parameters,
                trainable_parameters=est.trainable_parameters,
            )
        else:
            row["paper_memory_bf16"] = est.weights + est.optimizer_states
            row["optimizer_states_bf16"] = est.optimizer_states
    return row


def _curves(run_dir: Path) -> tuple[list[list[float]], list[list[float]]]:
    events = read_metrics(run_dir) if (run_dir / "metrics.jsonl").exists() else []
    evals = [[e["step"], e["eval_ppl"]] for e in events if e.get("event") == "eval"]
    train = [[e["step"], e["loss"]] for e in events if e.get("event") == "train"]
    return evals, train


def _pretrain(job: Job) -> RunResult:
    cfg = pretrain_config(job)
    run_dir = Path(job.run_dir)
    status, error = "ok", None
    eval_loss = eval_ppl = train_loss = None
    seconds = 0.0
    try:
        result = pretrain(cfg)
    except FloatingPointError as err:  # a non-finite loss or gradient: the LR is too high
        status, error = "diverged", str(err).splitlines()[0]
    except SystemExit as stop:
        raise RunInterrupted(f"{job.spec.key} stopped (exit {stop.code})") from None
    else:
        eval_loss, eval_ppl = result.eval_loss, result.eval_ppl
        train_loss, seconds = result.train_loss, result.seconds
    # the final checkpoint is not needed: the result is cached and a finished run never resumes
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    evals, train = _curves(run_dir)
    return RunResult(
        key=job.spec.key,
        status=status,
        identity=job.identity,
        lr=job.lr,
        steps=job.spec.steps,
        tokens=job.tokens,
        eval_loss=eval_loss,
        eval_ppl=eval_ppl if eval_ppl is None or math.isfinite(eval_ppl) else None,
        train_loss=train_loss,
        seconds=seconds,
        eval_curve=evals,
        train_curve=train,
        error=error,
    )


def execute(job: Job) -> dict[str, Any]:
    """Run ``job`` in this process; its result as a dict (``RunResult.to_dict``)."""
    started, cpu0 = time.perf_counter(), _cpu_seconds()
    if job.spec.kind == "theory":
        try:
            result = run_theory(job)
        except FloatingPointError as err:
            result = RunResult(
                key=job.spec.key,
                status="diverged",
                identity=job.identity,
                lr=job.lr,
                steps=job.spec.steps,
                tokens=job.tokens,
                error=str(err).splitlines()[0],
            )
        except SystemExit as stop:
            raise RunInterrupted(f"{job.spec.key} stopped (exit {stop.code})") from None
    else:
        result = _pretrain(job)
    vocab = len(build_tokenizer(data_config(job.config)))  # cached: milliseconds
    result.memory = memory_row(job, vocab)
    result.wall_seconds = time.perf_counter() - started
    result.cpu_seconds = _cpu_seconds() - cpu0
    # the host too: CPU seconds compare only on one machine (the Nov 30 grid runs took 0.48
    # CPU-s a step on one host, the same code 0.16 on the Dec 4 one)
    result.worker = {
        "pid": os.getpid(),
        "threads": torch.get_num_threads(),
        "host": platform.platform(),
        "cpu": _cpu_model(),
    }
    return result.to_dict()
