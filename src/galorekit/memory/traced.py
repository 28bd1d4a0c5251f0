"""Activation memory of models outside the LLaMA formula (GPT-2, ViT, a CNN, any model
``build_model`` makes), traced instead of derived: one forward pass and loss on the meta device
(nothing is allocated) under ``torch.autograd.graph.saved_tensors_hooks``, summing the storage
bytes of every tensor autograd saves for backward — a view counted as its base, each base once,
parameters (and views of them) left out: they are the weights. Against the saved storages of a
real forward (``trackers.SavedTensorTracker``) this is exact for GPT-2 and the CNN and 6% above for
ViT (tests/test_memory_families.py): an upper bound.

Autocast does not run on the meta device, so a mixed precision (``bf16-mixed``) is refused here:
``bf16-true`` (the default) or ``fp32`` trace exactly what the model saves. Activation
checkpointing is estimated by the LLaMA formula only.
"""

from __future__ import annotations

import torch
from torch import nn

from galorekit.memory.activations import ActivationEstimate, Term, estimate_activations
from galorekit.memory.setup import TrainingSetup

#: the modules the LLaMA formula walks (``activations.llama_structure``): a decoder backbone
_LLAMA_BACKBONE = ("embed_tokens", "layers", "norm")


def activation_estimate(model: nn.Module, setup: TrainingSetup) -> ActivationEstimate:
    """The LLaMA formula (``activations.estimate_activations``) for a LLaMA-style decoder, the
    trace of :func:`traced_activations` for any other model."""
    if any(all(hasattr(m, a) for a in _LLAMA_BACKBONE) for m in model.modules()):
        return estimate_activations(model, setup)
    return traced_activations(model, setup)


def example_inputs(
    model: nn.Module, setup: TrainingSetup, generator: torch.Generator | None = None
) -> dict[str, torch.Tensor]:
    """One micro-batch for ``model`` on its device: ``batch_size × seq_len`` token ids (and
    labels) for a language model, ``batch_size`` images of the config's size and a label each
    for an image classifier; random under ``generator`` (drawn on the CPU), else zeros (the meta
    device holds no values)."""
    p = next(model.parameters())
    config = getattr(model, "config", None)
    b = setup.batch_size

    def draw(shape: tuple[int, ...], high: int | None, dtype: torch.dtype) -> torch.Tensor:
        if generator is None:
            return torch.zeros(shape, dtype=dtype, device=p.device)
        if high is None:
            return torch.randn(shape, generator=generator).to(p.device, dtype)
        return torch.randint(0, high, shape, generator=generator).to(p.device)

    vocab = getattr(config, "vocab_size", None)
    if vocab:
        ids = draw((b, setup.seq_len), vocab, torch.long)
        return {"input_ids": ids, "labels": ids}
    size = getattr(config, "image_size", None)
    if not size:
        raise ValueError(
            f"cannot make an example batch for {type(model).__name__}: its config has neither a "
            "vocab_size (language model) nor an image_size (image classifier)"
        )
    channels = getattr(config, "num_channels", None) or getattr(config, "in_channels", 3)
    return {
        "pixel_values": draw((b, channels, size, size), None, p.dtype),
        "labels": draw((b,), getattr(config, "num_labels", 2), torch.long),
    }


def traced_activations(model: nn.Module, setup: TrainingSetup) -> ActivationEstimate:
    """Saved-for-backward bytes of one micro-batch of ``setup`` on ``model`` (parameters on any
    device, ``"meta"`` included), traced (module docstring). The terms are per top-level child
    module (``transformer``, ``lm_head``, ``vit``, ``features``, …) and the loss."""
    if setup.autocast_dtype is not None:
        raise ValueError(
            f"--precision {setup.precision}: the activations of a {type(model).__name__} are "
            "traced on the meta device, where autocast does not run; estimate with "
            "--precision bf16-true or fp32"
        )
    if setup.activation_checkpointing:
        raise ValueError(
            "--activation-checkpointing is estimated for LLaMA-architecture models only; "
            f"{type(model).__name__}'s activations are traced without it"
        )
    params = {id(p) for p in model.parameters()}
    saved: dict[int, tuple[str, int, torch.Tensor]] = {}  # each base kept: its id stays unique
    where = ["loss"]
    children = dict(model.named_children())

    def pack(t: torch.Tensor) -> torch.Tensor:
        base = t if t._base is None else t._base  # a view shares its base's storage
        if id(base) not in params and id(base) not in saved:
            saved[id(base)] = (where[-1], base.untyped_storage().nbytes(), base)
        return t

    def enter(name: str):
        def hook(*_: object) -> None:  # a hook's return value would replace the module's input
            where.append(name)

        return hook

    def leave(*_: object) -> None:  # (or its output)
        where.pop()

    hooks = [m.register_forward_pre_hook(enter(n)) for n, m in children.items()]
    hooks += [m.register_forward_hook(leave) for m in children.values()]
    was_training = model.training
    model.train()
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(**example_inputs(model, setup))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    by_scope: dict[str, int] = {}
    for scope, nbytes, _ in saved.values():
        by_scope[scope] = by_scope.get(scope, 0) + nbytes
    terms = [Term("head", f"{name} (traced)", n) for name, n in by_scope.items()]
    total = sum(by_scope.values())
    return ActivationEstimate(total, [], total, 0, 0, terms)
