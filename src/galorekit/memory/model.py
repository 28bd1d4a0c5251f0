"""The model and optimizer a training configuration trains — built as ``galore pretrain`` builds
them (``galorekit.train.methods.setup_method``): the named LLaMA, the baseline's adapters or
factorised layers where the method has them, and the optimizer from ``create_optimizer``. Built on
``device="meta"`` for estimates (nothing is allocated) and on a real device for measurements —
the same function for both, so the estimate reads exactly what the measured run trains.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import nn

from galorekit.memory.setup import BASELINE_METHODS, TrainingSetup


@dataclass
class TrainingModel:
    """A built configuration: ``setup`` has its rank resolved (the default, or a clamped adapter
    rank); ``rank_note`` says what was changed, if anything."""

    model: nn.Module
    setup: TrainingSetup
    rank_note: str = ""


def adapter_rank_limit(net: nn.Module, setup: TrainingSetup) -> int:
    """The largest adapter rank (LoRA, ReLoRA, Low-Rank) on the linear layers ``setup`` targets:
    ``galorekit.train.baselines.max_adapter_rank`` over them, the rule ``galore pretrain``
    applies (``galorekit.train.methods.adapter_rank``) generalised to explicit targets."""
    from galorekit.train.baselines import max_adapter_rank, resolve_target_modules

    return max_adapter_rank(net, resolve_target_modules(net, _targets(setup)))


def galore_shapes(net: nn.Module, setup: TrainingSetup) -> list[tuple[int, int]]:
    """Shapes of the weights GaLore projects under ``setup`` (its optimizer's GaLore group)."""
    from galorekit.optim import param_groups

    groups = param_groups(net, target_modules=_galore_targets(net, setup))
    return [tuple(p.shape) for g in groups if "rank" in g for p in g["params"]]


def resolve_rank(net: nn.Module, setup: TrainingSetup) -> tuple[int, str]:
    """``(rank, note)``: ``setup.rank``, or ``hidden_size // 4`` when None (``galore pretrain``'s
    ``default_rank``); an adapter rank at or above the smallest targeted dimension is clamped
    below it, as ``galore pretrain`` does. ``note`` says what was changed, if anything."""
    from galorekit.train.methods import default_rank

    if setup.rank is None:
        rank = default_rank(net)
        note = f"rank {rank} = hidden_size // 4 (the default)"
    else:
        rank, note = setup.rank, ""
    if setup.method in BASELINE_METHODS:
        limit = adapter_rank_limit(net, setup)
        if rank > limit:
            note = f"rank {rank} ≥ the smallest targeted dimension {limit + 1}; clamped to {limit}"
            rank = limit
    return rank, note


def build_training_model(
    model: str | object,
    setup: TrainingSetup,
    *,
    vocab_size: int | None = None,
    device: torch.device | str = "meta",
    seed: int | None = None,
) -> TrainingModel:
    """``model`` (anything ``galorekit.models.build_model`` accepts) prepared for ``setup``.

    Parameters are in ``setup.param_dtype``; ``lora``/``relora`` wrap the targeted layers with
    peft LoRA adapters (targeted weights frozen, the rest trained), ``low_rank`` replaces them by
    ``B A`` factors. ``setup.rank=None`` means ``hidden_size // 4``; an adapter rank at or above
    the smallest targeted dimension is clamped below it, as ``galore pretrain`` does. Raises
    ``ValueError`` for an unknown model.
    """
    from galorekit.models import build_model

    net = build_model(
        model, vocab_size=vocab_size, device=device, dtype=setup.param_dtype, seed=seed
    )
    if net.config._attn_implementation != setup.attn_implementation:
        net.set_attn_implementation(setup.attn_implementation)
    rank, note = resolve_rank(net, setup)
    setup = setup.with_(rank=rank)
    return TrainingModel(apply_method(net, setup), setup, note)


def apply_method(net: nn.Module, setup: TrainingSetup) -> nn.Module:
    """Apply ``setup.method``'s change of the model (none for optimizer methods)."""
    if setup.method in ("lora", "relora"):
        from galorekit.train.baselines import apply_lora

        device = next(net.parameters()).device
        # peft creates adapters on the default device and then moves them: under a device context
        # they are created on the model's device directly (on "meta" nothing is allocated; without
        # it peft would allocate and initialise every adapter on the CPU first)
        with torch.device(device):
            return apply_lora(
                net, rank=setup.rank, alpha=setup.lora_alpha, target_modules=_targets(setup)
            )
    if setup.method == "low_rank":
        from galorekit.train.baselines import apply_low_rank

        return apply_low_rank(net, rank=setup.rank, target_modules=_targets(setup))
    return net


def _targets(setup: TrainingSetup):
    tm = setup.target_modules
    return list(tm) if isinstance(tm, tuple) else tm


def _galore_targets(net: nn.Module, setup: TrainingSetup):
    """What the GaLore group of ``galore pretrain``'s optimizer selects: ``setup``'s targets, by
    default the linear layers inside the transformer blocks."""
    from galorekit.models import default_target_modules

    targets = _targets(setup)
    return default_target_modules(net) if targets is None else targets


def build_optimizer(
    net: nn.Module, setup: TrainingSetup, *, layerwise: bool | None = None
) -> torch.optim.Optimizer:
    """The optimizer ``galore pretrain`` builds for ``setup`` on ``net`` (already prepared by
    :func:`build_training_model`): GaLore groups over ``default_target_modules`` (or
    ``setup.target_modules``), plain AdamW over the trainable parameters for the baselines.
    ``layerwise`` overrides the setup's flag (estimates build the ordinary optimizer: the
    layer-wise wrapper keeps its state in the same inner optimizer)."""
    from galorekit.optim import create_optimizer

    galore = setup.method.startswith("galore_")
    if setup.rank is None and galore:
        raise ValueError("build_optimizer needs a resolved rank (use build_training_model)")
    kwargs = {"target_modules": _galore_targets(net, setup)} if galore else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rank clamping warnings: reported by the estimate
        return create_optimizer(
            net,
            setup.optimizer,
            lr=1e-3,
            rank=setup.rank or 1,  # unused without a GaLore group
            proj_type=setup.proj_type,
            layerwise=setup.layerwise if layerwise is None else layerwise,
            accumulation_steps=setup.accumulation_steps,
            **kwargs,
        )
