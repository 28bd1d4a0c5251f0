"""The model and optimizer a training configuration trains — built by the method layer that
``galore pretrain`` uses (``galorekit.methods``): the named model (a LLaMA, or GPT-2, ViT, the
CNN of ``galorekit.models.registry.FAMILY_CONFIGS``), the baseline's adapters or
factorised layers where the method has them, and the method's optimizer. Built on
``device="meta"`` for estimates (nothing is allocated) and on a real device for measurements —
the same function for both, so the estimate reads exactly what the measured run trains.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import nn

from galorekit import methods
from galorekit.memory.setup import BASELINE_METHODS, TrainingSetup
from galorekit.models import build_model, default_target_modules
from galorekit.models.targets import max_adapter_rank, resolve_target_modules
from galorekit.names import is_galore, method_info
from galorekit.optim import param_groups


@dataclass
class TrainingModel:
    """A built configuration: ``setup`` has its rank resolved (the default, or a clamped adapter
    rank); ``rank_note`` says what was changed, if anything."""

    model: nn.Module
    setup: TrainingSetup
    rank_note: str = ""


def adapter_rank_limit(net: nn.Module, setup: TrainingSetup) -> int:
    """The largest adapter rank (LoRA, ReLoRA, Low-Rank) on the linear layers ``setup`` targets:
    ``galorekit.models.targets.max_adapter_rank`` over them, the rule ``galore pretrain``
    applies (``galorekit.methods.adapter_rank``) generalised to explicit targets."""
    return max_adapter_rank(net, resolve_target_modules(net, _targets(setup)))


def galore_shapes(net: nn.Module, setup: TrainingSetup) -> list[tuple[int, int]]:
    """Shapes of the weights GaLore projects under ``setup`` (its optimizer's GaLore group)."""
    groups = param_groups(net, target_modules=_galore_targets(net, setup))
    return [tuple(p.shape) for g in groups if "rank" in g for p in g["params"]]


def resolve_rank(net: nn.Module, setup: TrainingSetup) -> tuple[int, str]:
    """``(rank, note)``: ``setup.rank``, or ``hidden_size // 4`` when None (``galore pretrain``'s
    ``default_rank``); an adapter rank at or above the smallest targeted dimension is clamped
    below it, as ``galore pretrain`` does. ``note`` says what was changed, if anything."""
    fixed = dict(method_info(setup.method).group).get("rank") if is_galore(setup.method) else None
    if fixed is not None:  # the method's own rank (APOLLO-Mini: 1), whatever --rank says
        return fixed, f"rank {fixed}, {setup.method}'s own"
    if setup.rank is None:
        rank = methods.default_rank(net)
        note = f"rank {rank} = hidden_size // 4 (the default)"
    else:
        rank, note = setup.rank, ""
    if setup.method in BASELINE_METHODS:  # clamped as galore pretrain does
        rank, clamped = methods.adapter_rank(net, rank, _targets(setup))
        note = clamped or note
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
    net = build_model(
        model, vocab_size=vocab_size, device=device, dtype=setup.param_dtype, seed=seed
    )
    # a transformers model runs the setup's attention kernel (the CNN has none)
    if getattr(net.config, "_attn_implementation", None) not in (None, setup.attn_implementation):
        net.set_attn_implementation(setup.attn_implementation)
    rank, note = resolve_rank(net, setup)
    setup = setup.with_(rank=rank)
    return TrainingModel(apply_method(net, setup), setup, note)


def method_config(setup: TrainingSetup, *, layerwise: bool | None = None) -> methods.MethodConfig:
    """``setup``'s method as :class:`galorekit.methods.MethodConfig`. The learning rate does not
    change memory; gradients are not clipped (the layer-wise hooks would keep no more state)."""
    return methods.MethodConfig(
        method=setup.method,
        lr=1e-3,
        rank=setup.rank,
        proj_type=setup.proj_type,
        layerwise=setup.layerwise if layerwise is None else layerwise,
        accumulation_steps=setup.accumulation_steps,
        max_grad_norm=None,
        lora_alpha=setup.lora_alpha,
        state_dtype=setup.state_dtype,
    )


def apply_method(net: nn.Module, setup: TrainingSetup) -> nn.Module:
    """Apply ``setup.method``'s change of the model (none for optimizer methods)."""
    if setup.method not in BASELINE_METHODS:
        return net
    # ReLoRA holds LoRA's adapters between restarts: its memory is LoRA's
    cfg = method_config(setup.with_(method="lora" if setup.method == "relora" else setup.method))
    device = next(net.parameters()).device
    # peft creates adapters on the default device and then moves them: under a device context
    # they are created on the model's device directly (on "meta" nothing is allocated; without
    # it peft would allocate and initialise every adapter on the CPU first)
    with torch.device(device):
        net, _ = methods.apply_adapters(net, cfg, rank=setup.rank, target_modules=_targets(setup))
    return net


def _targets(setup: TrainingSetup):
    tm = setup.target_modules
    return list(tm) if isinstance(tm, tuple) else tm


def _galore_targets(net: nn.Module, setup: TrainingSetup):
    """What the GaLore group of ``galore pretrain``'s optimizer selects: ``setup``'s targets, by
    default the linear layers inside the transformer blocks."""
    targets = _targets(setup)
    return default_target_modules(net) if targets is None else targets


def build_optimizer(
    net: nn.Module, setup: TrainingSetup, *, layerwise: bool | None = None
) -> torch.optim.Optimizer:
    """The optimizer ``galore pretrain`` builds for ``setup`` on ``net`` (already prepared by
    :func:`build_training_model`): :func:`galorekit.methods.build_optimizer`, GaLore groups over
    ``default_target_modules`` (or ``setup.target_modules``), plain AdamW over the trainable
    parameters for the baselines. ``layerwise`` overrides the setup's flag (estimates build the
    ordinary optimizer: the layer-wise wrapper keeps its state in the same inner optimizer)."""
    galore = is_galore(setup.method)
    if setup.rank is None and galore:
        raise ValueError("build_optimizer needs a resolved rank (use build_training_model)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rank clamping warnings: reported by the estimate
        return methods.build_optimizer(
            net,
            method_config(setup, layerwise=layerwise),
            rank=setup.rank or 1,  # unused without a GaLore group
            target_modules=_targets(setup) if galore else None,
        )
