"""The memory estimate of one training configuration: weights, weight gradients, optimizer
states (projectors included) and activations, in bytes.

Everything is read from the real model built on ``device="meta"`` (nothing is allocated) and from
the real optimizer constructed over it (never stepped):

- **weights**: every parameter and buffer of the model, unique storages (tied weights once), in
  their dtypes — for LoRA the frozen base weights plus the adapters;
- **gradients**: one gradient per trainable parameter, in its dtype. With ``layerwise`` (and no
  gradient accumulation) each gradient is freed as soon as its parameter is updated during
  backward, so at most one exists at a time: the largest. With accumulation the layer-wise
  optimizer keeps every accumulated gradient between micro-batches, like ordinary training;
- **optimizer states**: :func:`galorekit.memory.optimizer_states.optimizer_state_tensors`;
- **activations**: :func:`galorekit.memory.activations.estimate_activations` (LLaMA-style
  decoders), traced on the meta device for other families (:mod:`galorekit.memory.traced`).

``total`` is their sum, the convention of the paper's Figure 1 (58 GB = 14 + 42 + 2 for LLaMA 7B):
an upper bound of the step's peak, since gradients grow while activations are freed during
backward. Framework overhead (CUDA context, allocator fragmentation, kernel workspaces) is not
part of it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from galorekit.memory.activations import ActivationEstimate
from galorekit.memory.model import build_optimizer, build_training_model
from galorekit.memory.optimizer_states import StateTensor, optimizer_state_tensors, total_bytes
from galorekit.memory.setup import TrainingSetup
from galorekit.memory.traced import activation_estimate
from galorekit.methods import default_rank
from galorekit.optim.validation import matrix_shape

#: the JSON keys of an estimate, in table order
COMPONENTS = ("weights", "gradients", "optimizer_states", "activations")
#: how tables and plots name them
COMPONENT_NAMES = {
    "weights": "Weights",
    "gradients": "Weight gradients",
    "optimizer_states": "Optimizer states",
    "activations": "Activations",
}


@dataclass
class MemoryEstimate:
    """Bytes of each component of one training configuration (see the module docstring)."""

    setup: TrainingSetup
    weights: int
    gradients: int
    optimizer_states: int
    activations: int
    projectors: int = 0
    parameters: int = 0
    trainable_parameters: int = 0
    clamped_matrices: int = 0
    rank_note: str = ""
    activation_detail: ActivationEstimate | None = field(default=None, repr=False)
    state_tensors: list[StateTensor] = field(default_factory=list, repr=False)

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer_states + self.activations

    def as_dict(self) -> dict[str, int]:
        """The byte counts: ``weights``, ``gradients``, ``optimizer_states``, ``activations``,
        ``total``."""
        return {**{k: int(getattr(self, k)) for k in COMPONENTS}, "total": int(self.total)}


def _unique(tensors) -> dict[int, Any]:
    out = {}
    for t in tensors:
        out.setdefault(id(t), t)
    return out


def gradient_bytes(model: nn.Module, setup: TrainingSetup) -> int:
    """Weight-gradient bytes of ``setup`` on ``model``: every trainable parameter's, or only the
    largest with layer-wise updates and no accumulation (see the module docstring)."""
    trainable = [p for p in _unique(model.parameters()).values() if p.requires_grad]
    sizes = [p.numel() * p.element_size() for p in trainable]
    if setup.layerwise and setup.accumulation_steps == 1:
        return max(sizes, default=0)
    return sum(sizes)


def static_components(model: nn.Module, setup: TrainingSetup) -> dict[str, Any]:
    """Weights, gradients and optimizer states of ``setup`` on ``model`` (any device)."""
    params = _unique(model.parameters())
    buffers = _unique(model.buffers())
    weights = sum(t.numel() * t.element_size() for t in [*params.values(), *buffers.values()])
    trainable = [p for p in params.values() if p.requires_grad]
    gradients = gradient_bytes(model, setup)
    with warnings.catch_warnings():
        # rank ≥ min(m, n) is clamped with a warning at the first step; the estimate clamps too
        warnings.simplefilter("ignore")
        optimizer = build_optimizer(model, setup, layerwise=False)
    states = optimizer_state_tensors(optimizer)
    clamped = sum(
        1
        for g in optimizer.param_groups
        if "rank" in g
        for p in g["params"]
        if g["rank"] >= min(matrix_shape(p.shape))  # a kernel: its out × in·k unfolding
    )
    return {
        "clamped_matrices": clamped,
        "weights": weights,
        "gradients": gradients,
        "optimizer_states": total_bytes(states),
        "projectors": sum(t.nbytes for t in states if t.is_projector),
        "parameters": sum(p.numel() for p in params.values()),
        "trainable_parameters": sum(p.numel() for p in trainable),
        "state_tensors": states,
    }


def estimate_model(model: nn.Module, setup: TrainingSetup) -> MemoryEstimate:
    """The estimate for ``model`` already prepared for ``setup`` (see
    :func:`galorekit.memory.model.build_training_model`; ``setup.rank`` resolved); ``model`` is
    only read: the optimizer built over it is never stepped and registers no hooks. A ``rank``
    of None means ``hidden_size // 4``, as in ``galore pretrain``."""
    if setup.rank is None:
        setup = setup.with_(rank=default_rank(model))
    static = static_components(model, setup)
    acts = activation_estimate(model, setup)  # the LLaMA formula, or traced for other families
    return MemoryEstimate(setup=setup, activations=acts.total, activation_detail=acts, **static)


def estimate(
    model: str | object, setup: TrainingSetup, *, vocab_size: int | None = None
) -> MemoryEstimate:
    """Estimate the training memory of ``model`` (a name such as ``"llama_7b"``, a config path,
    anything ``galorekit.models.build_model`` accepts) under ``setup``.

    >>> est = estimate("llama_7b", TrainingSetup(method="galore_adamw8bit", rank=1024,
    ...                layerwise=True, precision="bf16-true"))          # doctest: +SKIP
    >>> est.total / 1e9                                            # doctest: +SKIP
    21.0
    """
    built = build_training_model(model, setup, vocab_size=vocab_size, device="meta")
    est = estimate_model(built.model, built.setup)
    est.rank_note = built.rank_note
    return est
