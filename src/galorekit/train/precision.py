"""``--precision`` in one place, for every training command.

- ``fp32``: float32 weights, gradients and optimizer states.
- ``bf16-mixed``: float32 weights and states; forward/backward under bfloat16 autocast.
- ``bf16-true``: the paper's setting (and galore-torch's): the weights themselves are bfloat16,
  cast before the optimizer is built, so there is no float32 master copy; gradients are bfloat16,
  no autocast. The optimizer's moments follow ``--state-dtype`` (default: the weights' dtype,
  bfloat16; ``float32`` keeps a slowly decaying second moment exact).

A driver calls :func:`apply_precision` once, after the model is on its device and before the
optimizer (and any adapters' optimizer) is built, and runs forward/backward under the context it
returns.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager

import torch
from torch import nn

from galorekit.config import PRECISIONS

__all__ = ["PRECISIONS", "apply_precision", "autocast_for", "weight_dtype"]


def weight_dtype(precision: str) -> torch.dtype:
    """The dtype ``precision`` holds the trained weights in."""
    _check(precision)
    return torch.bfloat16 if precision == "bf16-true" else torch.float32


def autocast_for(precision: str, device: torch.device) -> Callable[[], AbstractContextManager]:
    """The forward/backward context of ``precision``: bf16-mixed autocasts, the others run as is
    (bf16-true's weights are bfloat16 already)."""
    _check(precision)
    if precision == "bf16-mixed":
        return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def apply_precision(
    model: nn.Module, precision: str, device: torch.device
) -> Callable[[], AbstractContextManager]:
    """Put ``model``'s floating-point weights in ``precision``'s dtype (in place: bf16-true casts
    to bfloat16, fp32/bf16-mixed to float32) and return the forward/backward context
    (:func:`autocast_for`). Call it before the optimizer is built: the optimizer must hold the
    cast parameters, and its moments are created in their dtype unless ``state_dtype`` says
    otherwise."""
    dtype = weight_dtype(precision)
    for p in model.parameters():
        if p.is_floating_point() and p.dtype != dtype:
            p.data = p.data.to(dtype)
    for name, buf in model.named_buffers():
        # rotary inverse frequencies stay float32 (transformers keeps them so under bf16 too)
        if buf.is_floating_point() and buf.dtype != dtype and "inv_freq" not in name:
            module_name, _, attr = name.rpartition(".")
            owner = model.get_submodule(module_name) if module_name else model
            setattr(owner, attr, buf.to(dtype))
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "dtype"):
        config.dtype = dtype  # what save_pretrained records
    return autocast_for(precision, device)


def _check(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
