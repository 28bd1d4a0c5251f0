"""The inner optimizers' update math as pure functions (moments updated in place).

These are the same whether the gradient is full-size or GaLore's low-rank projection R: GaLore only
changes *what* they are applied to, and the optimizer classes only decide that.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def adam_update(
    grad: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    *,
    step: int,
    beta1: float,
    beta2: float,
    eps: float,
    correct_bias: bool = True,
) -> tuple[Tensor, float]:
    """One Adam moment update; returns ``(direction, step_size)`` with ΔW = -lr·step_size·direction.

    Formulated as galore-torch's (and Hugging Face's former) AdamW: ``direction = m / (√v + eps)``
    and the bias correction folded into ``step_size = √(1-β₂ᵗ) / (1-β₁ᵗ)``, so that code moving from
    galore-torch keeps its trajectory. ``step`` counts from 1.
    """
    exp_avg.mul_(beta1).add_(grad, alpha=1.0 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
    denom = exp_avg_sq.sqrt().add_(eps)
    # into denom's memory: one temporary of the moments' size per step instead of two
    direction = torch.div(exp_avg, denom, out=denom)
    return direction, adam_step_size(step, beta1, beta2, correct_bias)


def adam_step_size(step: int, beta1: float, beta2: float, correct_bias: bool = True) -> float:
    """Adam's bias correction as a step-size factor, √(1-β₂ᵗ) / (1-β₁ᵗ) (1 without it)."""
    if not correct_bias:
        return 1.0
    return math.sqrt(1.0 - beta2**step) / (1.0 - beta1**step)


def adam_update_foreach(
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    *,
    beta1: float,
    beta2: float,
    eps: float,
) -> list[Tensor]:
    """``adam_update``'s moment update and direction for many tensors at once (torch's
    ``_foreach`` kernels: one launch per operation for the whole list on a GPU instead of one per
    tensor); the same operations in the same order, so the results are bit-identical to calling
    ``adam_update`` on each. Returns the directions; the step sizes are ``adam_step_size``'s."""
    torch._foreach_mul_(exp_avgs, beta1)
    torch._foreach_add_(exp_avgs, grads, alpha=1.0 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1.0 - beta2)
    denoms = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_add_(denoms, eps)
    return torch._foreach_div(exp_avgs, denoms)


def rms(tensor: Tensor) -> Tensor:
    """Root mean square, as a 0-d tensor."""
    return tensor.norm(2) / math.sqrt(tensor.numel())


def adafactor_lr(
    *,
    lr: float | None,
    step: int,
    param_rms: float,
    relative_step: bool,
    scale_parameter: bool,
    warmup_init: bool,
    eps2: float,
) -> float:
    """Adafactor's step size (Shazeer & Stern 2018, as in transformers.Adafactor).

    With ``relative_step`` the step is min(1e-2, 1/√t) (or 1e-6·t with ``warmup_init``), ignoring
    ``lr``; with ``scale_parameter`` it is multiplied by max(eps2, RMS(W)) so that updates are
    relative to the weight's scale.
    """
    if relative_step:
        min_step = 1e-6 * step if warmup_init else 1e-2
        step_size = min(min_step, 1.0 / math.sqrt(step))
    else:
        step_size = float(lr)
    if scale_parameter:
        step_size *= max(eps2, param_rms)
    return step_size


def adafactor_beta2(step: int, decay_rate: float) -> float:
    """The time-dependent second-moment decay 1 - t^decay_rate (decay_rate = -0.8 by default)."""
    return 1.0 - math.pow(step, decay_rate)


def _approx_sq_grad(exp_avg_sq_row: Tensor, exp_avg_sq_col: Tensor) -> Tensor:
    """1/√V̂ for the rank-1 factored estimate V̂ = row · colᵀ / mean(row)."""
    r_factor = (exp_avg_sq_row / exp_avg_sq_row.mean(dim=-1, keepdim=True)).rsqrt_().unsqueeze(-1)
    c_factor = exp_avg_sq_col.unsqueeze(-2).rsqrt()
    return torch.mul(r_factor, c_factor)


def adafactor_update(
    grad: Tensor,
    *,
    lr: float,
    beta2t: float,
    eps1: float,
    clip_threshold: float,
    exp_avg_sq_row: Tensor | None = None,
    exp_avg_sq_col: Tensor | None = None,
    exp_avg_sq: Tensor | None = None,
    exp_avg: Tensor | None = None,
    beta1: float | None = None,
) -> Tensor:
    """One Adafactor update; returns the lr-scaled update U with ΔW = -U.

    A matrix gradient uses the factored second moment (``exp_avg_sq_row``: rows, ``exp_avg_sq_col``:
    columns), anything else the full ``exp_avg_sq``. The update is clipped to RMS ≤ clip_threshold;
    with ``beta1`` the clipped update is averaged into ``exp_avg`` (first moment).
    """
    sq = grad.square().add_(eps1)
    if exp_avg_sq_row is not None and exp_avg_sq_col is not None:
        exp_avg_sq_row.mul_(beta2t).add_(sq.mean(dim=-1), alpha=1.0 - beta2t)
        exp_avg_sq_col.mul_(beta2t).add_(sq.mean(dim=-2), alpha=1.0 - beta2t)
        update = _approx_sq_grad(exp_avg_sq_row, exp_avg_sq_col).mul_(grad)
    elif exp_avg_sq is not None:
        exp_avg_sq.mul_(beta2t).add_(sq, alpha=1.0 - beta2t)
        update = exp_avg_sq.rsqrt().mul_(grad)
    else:
        raise ValueError("adafactor_update needs either the factored or the full second moment")
    update.div_((rms(update) / clip_threshold).clamp_(min=1.0))
    update.mul_(lr)
    if beta1 is not None:
        if exp_avg is None:
            raise ValueError("adafactor_update: beta1 is set but no exp_avg was given")
        exp_avg.mul_(beta1).add_(update, alpha=1.0 - beta1)
        update = exp_avg  # callers only read the update
    return update
