"""``galore memory --measure``: run a few real training steps and measure what they hold.

The configuration is built exactly as the estimate reads it (``build_training_model`` and the
optimizer factory), on a real device, and trained for ``steps`` optimizer steps on random tokens.
Measured, each in its own way (see :mod:`galorekit.memory.trackers`):

- weights: the unique storages of the model's parameters and buffers;
- gradients: the peak of live ``.grad`` bytes (sampled in post-accumulate-grad hooks);
- optimizer states: the unique storages held in the optimizer's state after the last step;
- activations: the peak of tensors saved for backward (saved-tensor hooks);
- peak: the allocator's peak during the steps plus what was allocated before them (the model
  and the batch) — ``torch.cuda.max_memory_allocated`` on CUDA, ``torch.profiler``'s allocation
  events on CPU. This is the number to compare with the estimate's total, which sums the
  components although gradients and activations never peak at the same moment, and which leaves
  out transient buffers (logits and their gradient, the optimizer's temporaries, the SVD
  workspace of a subspace refresh).
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass

import torch

from galorekit.analysis import state_bytes
from galorekit.extras import needs_extra
from galorekit.memory.model import build_optimizer, build_training_model
from galorekit.memory.setup import TrainingSetup
from galorekit.memory.traced import example_inputs
from galorekit.memory.trackers import (
    GradientTracker,
    SavedTensorTracker,
    allocator_peak,
    storage_bytes,
)
from galorekit.models.build import enable_activation_checkpointing

#: headroom kept free when deciding whether a measurement can run at all
SAFETY_FRACTION = 0.8


class InsufficientMemoryError(RuntimeError):
    """The configuration would not fit in the memory available for a measurement."""


@dataclass
class Measurement:
    """Measured bytes of a few training steps (see the module docstring)."""

    device: str
    steps: int
    weights: int
    gradients: int
    optimizer_states: int
    activations: int
    peak: int

    def as_dict(self) -> dict[str, int | str]:
        return {
            "weights": self.weights,
            "gradients": self.gradients,
            "optimizer_states": self.optimizer_states,
            "activations": self.activations,
            "peak": self.peak,
            "device": self.device,
            "steps": self.steps,
        }


def available_memory(device: torch.device) -> int:
    """Bytes free for a measurement on ``device`` (CPU: the OS's available memory)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    with needs_extra("train"):  # psutil: only a CPU measurement needs it
        import psutil

    return int(psutil.virtual_memory().available)


def check_fits(
    required: int,
    device: torch.device,
    *,
    what: str = "the estimate",
    advice: str = "refusing to measure. Measure a smaller model (e.g. --model llama_9m or "
    "llama_20m), a smaller batch, or on a larger device.",
) -> None:
    """Raise :class:`InsufficientMemoryError` when ``required`` bytes exceed what a run may use on
    ``device`` (``SAFETY_FRACTION`` of the available memory); the message names ``what`` needs
    them and ends with ``advice``."""
    free = available_memory(device)
    if required > SAFETY_FRACTION * free:
        raise InsufficientMemoryError(
            f"{what} ({required / 1e9:.2f} GB) exceeds {SAFETY_FRACTION:.0%} of the memory "
            f"available on {device} ({free / 1e9:.2f} GB): {advice}"
        )


def measure(
    model: str | object,
    setup: TrainingSetup,
    *,
    vocab_size: int | None = None,
    steps: int = 3,
    device: str | torch.device = "cpu",
    seed: int = 0,
    required: int | None = None,
) -> Measurement:
    """Build ``setup`` on ``model`` (anything ``galorekit.models.build_model`` accepts) on
    ``device``, train it for ``steps`` optimizer steps and measure it (:func:`measure_model`).

    ``required`` (bytes, usually the estimate's total) is checked against the available memory
    first (:func:`check_fits`), before anything is allocated.
    """
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' asked for but CUDA is not available")
    if required is not None:
        check_fits(required, dev)
    built = build_training_model(model, setup, vocab_size=vocab_size, device=dev, seed=seed)
    return measure_model(built.model, built.setup, steps=steps, seed=seed)


def measure_model(
    net: torch.nn.Module, setup: TrainingSetup, *, steps: int = 3, seed: int = 0
) -> Measurement:
    """Train ``net`` (prepared for ``setup``, rank resolved, on its device) with the optimizer
    ``galore pretrain`` would build, for ``steps`` optimizer steps of
    ``setup.accumulation_steps`` micro-batches of random tokens, and measure it.

    The model's weights are updated in place (and, with ``setup.activation_checkpointing``,
    checkpointing is enabled on it).
    """
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    dev = next(net.parameters()).device
    net.train()
    if setup.activation_checkpointing:
        enable_activation_checkpointing(net, reentrant=True)
    params = list({id(p): p for p in net.parameters()}.values())
    grads = GradientTracker(params)  # before the optimizer: a layer-wise one frees in its hooks
    optimizer = build_optimizer(net, setup)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    batch = example_inputs(net, setup, gen)  # random tokens, or images for an image classifier
    weights = storage_bytes([*params, *net.buffers()])
    before = weights + storage_bytes(list(batch.values()))
    saved = SavedTensorTracker(exclude=params)
    autocast = (
        torch.autocast(dev.type, dtype=setup.autocast_dtype)
        if setup.autocast_dtype is not None
        else contextlib.nullcontext()
    )

    def train() -> None:
        for _ in range(steps):
            for _ in range(setup.accumulation_steps):
                with saved:
                    with autocast:
                        loss = net(**batch).loss
                    (loss / setup.accumulation_steps).backward()
                del loss
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            peak = allocator_peak(train, dev)
    finally:
        grads.remove()
        remove = getattr(optimizer, "remove_hooks", None)
        if callable(remove):
            remove()
    return Measurement(
        device=str(dev),
        steps=steps,
        weights=weights,
        gradients=grads.peak,
        optimizer_states=state_bytes(optimizer),
        activations=saved.peak,
        peak=before + peak,
    )
