"""The training-loop core every command drives (``pretrain``, ``finetune``, the theory run).

A driver builds its model, optimizer and schedule, then::

    loop = Loop(model, optimizer, scheduler, next_batch, loss_of, max_grad_norm=1.0)
    with StopFlag() as stop:
        while loop.step < max_steps:
            out = loop.train_step()          # one optimizer step, the same way everywhere
            ...log, evaluate (``due``), checkpoint: the driver's own...
            if out.stopping: ...checkpoint, raise SystemExit(128 + signal)...

One step (``Loop.train_step``), top to bottom:

1. ``accumulation`` micro-batches: forward under ``autocast``, backward of loss / accumulation
   (inside ``accumulate(last)``: DDP synchronises gradients on the last micro-batch only);
2. clip the global gradient norm to ``max_grad_norm`` (None: measured, not clipped);
3. refuse a non-finite loss or gradient norm *before* the update (``NonFiniteError``: one message
   for every command, and nothing diverged is applied, evaluated or checkpointed);
4. ``before_update(loop)``: the per-step callback hook (the theory run measures the clipped
   gradients and the projectors GaLore used; a real-gradient benchmark records them);
5. the optimizer step, ``after_update(loop)``, zero the gradients, advance the LR schedule;
6. ``sync(loss, stop_requested)``: under torchrun one all-reduce of the loss and of the stop flag
   (every rank must stop at the same step), checked for a finite loss again.

Layer-wise optimizers update inside backward, so for them step 3 follows the update and the norm is
the previous step's (``LayerwiseOptimizer.grad_norm``).
"""

from __future__ import annotations

import contextlib
import math
import random
import resource
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from galorekit.devices import resolve_device  # noqa: F401 (the loops' --device, re-exported)

#: what the loop calls to synchronise (loss, stop requested) over ranks; identity in one process
Sync = Callable[[float, bool], tuple[float, bool]]


class NonFiniteError(FloatingPointError):
    """Training diverged: a non-finite loss or gradient norm (the update was not applied)."""


def check_finite(
    step: int, loss: float | None, grad_norm: float | None = None, hint: str = ""
) -> None:
    """Raise the one divergence message of every command if ``loss`` or ``grad_norm`` is not
    finite at optimizer step ``step`` (counted from 1); None: not checked."""
    bad = [
        f"{name} became {value}"
        for name, value in (("the training loss", loss), ("the gradient norm", grad_norm))
        if value is not None and not math.isfinite(value)
    ]
    if bad:
        raise NonFiniteError(
            f"training diverged at step {step}: {' and '.join(bad)}; the step's update was not "
            f"applied{'; ' + hint if hint else ''}"
        )


def due(step: int, every: int, last: int) -> bool:
    """Whether a periodic action (eval, checkpoint, log) runs after ``step``: every ``every``
    optimizer steps (0: never periodically) and always at the ``last`` step."""
    return step == last or (every > 0 and step % every == 0)


# ------------------------------------------------------------------------------ RNG, signals
def seed_everything(seed: int) -> None:
    """Seed torch, NumPy and Python's ``random`` (CUDA follows torch's seed)."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


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


def restore_rank_rng(ckpt: dict[str, Any], rank: int, world_size: int) -> None:
    """This rank's RNG state from a checkpoint's ``rng_ranks`` (one per rank, when the world
    size is the one it was saved with), else rank 0's ``rng``."""
    per_rank = ckpt.get("rng_ranks")
    same_world = isinstance(per_rank, list) and len(per_rank) == world_size
    set_rng_state(per_rank[rank] if same_world else ckpt["rng"])


class StopFlag:
    """Set by SIGTERM / SIGINT: the loop finishes its step, checkpoints and exits 128 + signal."""

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


# ------------------------------------------------------------------------------ devices
def peak_memory_bytes(device: torch.device) -> int:
    """Peak memory of this process: the CUDA allocator's peak, or the peak RSS on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is KiB on Linux
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * scale


# ------------------------------------------------------------------------------ the loop
@dataclass
class StepOutput:
    """What one optimizer step reports."""

    step: int  # optimizer steps done, this one included
    loss: float  # mean over the micro-batches (and over the ranks, after ``sync``)
    grad_norm: float | None  # global pre-clip norm (layer-wise: the previous step's)
    lr: float  # the rate this step used (first parameter group)
    seconds: float
    stopping: bool  # a stop signal reached this (or, under torchrun, any) process


def _no_accumulate(last: bool) -> AbstractContextManager:
    return contextlib.nullcontext()


class Loop:
    """One optimizer step at a time (module docstring); ``step`` counts the steps done."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: Any,
        scheduler: Any,
        next_batch: Callable[[], Any],
        loss_of: Callable[[nn.Module, Any], torch.Tensor],
        *,
        accumulation: int = 1,
        max_grad_norm: float | None = None,
        layerwise: bool = False,
        autocast: Callable[[], AbstractContextManager] = contextlib.nullcontext,
        clip_grad_norm: Callable[[float], float] | None = None,
        accumulate: Callable[[bool], AbstractContextManager] = _no_accumulate,
        sync: Sync | None = None,
        stop: StopFlag | None = None,
        before_update: Callable[[Loop], None] | None = None,
        after_update: Callable[[Loop], None] | None = None,
        check_loss_locally: bool = True,
        hint: str = "",
        step: int = 0,
    ) -> None:
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.next_batch, self.loss_of = next_batch, loss_of
        self.accumulation = accumulation
        self.max_grad_norm, self.layerwise = max_grad_norm, layerwise
        self.autocast, self.accumulate, self.sync, self.stop = autocast, accumulate, sync, stop
        self.clip_grad_norm = clip_grad_norm or self._clip_local
        self.before_update, self.after_update = before_update, after_update
        # under torchrun a rank's local loss may differ; the (global) gradient norm decides, so
        # that every rank stops at the same step
        self.check_loss_locally = check_loss_locally
        self.hint = hint
        self.step = step

    def _clip_local(self, max_norm: float) -> float:
        params = [p for p in self.model.parameters() if p.grad is not None]
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm))

    def train_step(self) -> StepOutput:
        """One optimizer step (the module docstring's 1-6)."""
        t0 = time.perf_counter()
        step = self.step + 1
        loss_sum = None
        for i in range(self.accumulation):
            batch = self.next_batch()
            with self.accumulate(i == self.accumulation - 1):
                with self.autocast():
                    loss = self.loss_of(self.model, batch) / self.accumulation
                loss.backward()  # layer-wise: the last micro-batch updates here
            # summed on the device: no host sync per micro-batch
            loss_sum = loss.detach() if loss_sum is None else loss_sum + loss.detach()
        loss_value = float(loss_sum)
        local_loss = loss_value if self.check_loss_locally else None
        if self.layerwise:
            self.optimizer.step()  # ends the step: the update happened during backward
            grad_norm = self.optimizer.grad_norm
            check_finite(step, local_loss, None, self.hint)
        else:
            grad_norm = self.clip_grad_norm(self.max_grad_norm or math.inf)
            check_finite(step, local_loss, grad_norm, self.hint)
            if self.before_update is not None:
                self.before_update(self)
            self.optimizer.step()
        if self.after_update is not None:
            self.after_update(self)
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step = step
        stopping = self.stop is not None and self.stop.signal is not None
        if self.sync is not None:
            loss_value, stopping = self.sync(loss_value, stopping)
        check_finite(step, loss_value, None, self.hint)
        return StepOutput(step, loss_value, grad_norm, lr, time.perf_counter() - t0, stopping)

    def steps(self, max_steps: int) -> Iterator[StepOutput]:
        """``train_step`` until ``max_steps`` optimizer steps are done."""
        while self.step < max_steps:
            yield self.train_step()


def lm_loss(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Causal-LM cross-entropy of a batch of token ids (the labels are the inputs, shifted inside
    the model)."""
    return model(input_ids=batch, labels=batch).loss
