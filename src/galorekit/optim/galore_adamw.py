"""GaLore-AdamW: AdamW whose moments live in a low-rank projection of each targeted gradient."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from galorekit.optim.base import GaLoreOptimizer, validate_betas
from galorekit.optim.functional import adam_update
from galorekit.optim.sharding import local


class GaLoreAdamW(GaLoreOptimizer):
    """AdamW with GaLore gradient low-rank projection (Zhao et al., 2024, Algorithm 2).

    A param group with a ``rank`` key is GaLore: its 2-D gradients are projected to rank ``rank``
    (the projector is refreshed from the gradient's SVD every ``update_proj_gap`` steps, on the side
    given by ``proj_type``), Adam runs on the projection, and the update is projected back and
    multiplied by ``scale``. A group without ``rank`` is plain AdamW. Group keys and defaults are
    galore-torch's (``update_proj_gap=200``, ``scale=0.25``, ``proj_type="std"``), plus
    ``svd`` (the refresh method: ``"warm"`` by default, ``"exact"`` for galore-torch's trajectory)
    and ``stagger`` (spread the group's refreshes over the period; off by default).

    The update follows galore-torch's AdamW (``m / (√v + eps)`` with the bias correction in the
    step size; decoupled weight decay applied after the update) so that a switch from galore-torch
    keeps the trajectory.

    Args:
        params: parameters or param groups (see ``galorekit.param_groups``).
        lr, betas, eps, weight_decay: as in ``torch.optim.AdamW`` (defaults as galore-torch's).
        correct_bias: Adam's bias correction (BERT-style training turns it off).
        on_nonfinite: ``"raise"`` (default) raises ``NonFiniteGradientError`` naming the parameter
            when a GaLore gradient holds NaN/Inf; ``"skip"`` skips that parameter's update and
            counts it in its state's ``nonfinite_skips``.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        correct_bias: bool = True,
        *,
        on_nonfinite: str = "raise",
    ) -> None:
        validate_betas(betas)
        if not eps >= 0.0:
            raise ValueError(f"eps must be ≥ 0, got {eps!r}")
        if not weight_decay >= 0.0:
            raise ValueError(f"weight_decay must be ≥ 0, got {weight_decay!r}")
        defaults = dict(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, correct_bias=correct_bias
        )
        super().__init__(params, defaults, on_nonfinite=on_nonfinite)

    def _update_param(self, p: Tensor, grad: Tensor, group: dict[str, Any]) -> None:
        state, grad = self._inner_grad(p, grad, group)
        if grad is None:
            return
        if "exp_avg" not in state:
            state["exp_avg"] = torch.zeros_like(grad, memory_format=torch.contiguous_format)
            state["exp_avg_sq"] = torch.zeros_like(grad, memory_format=torch.contiguous_format)
        state["step"] += 1
        beta1, beta2 = group["betas"]
        direction, step_size = adam_update(
            grad,
            state["exp_avg"],
            state["exp_avg_sq"],
            step=state["step"],
            beta1=beta1,
            beta2=beta2,
            eps=group["eps"],
            correct_bias=group["correct_bias"],
        )
        lr = float(group["lr"])
        self._apply_update(p, direction, group, state, -lr * step_size)
        if group["weight_decay"] > 0.0:
            local(p).mul_(1.0 - lr * group["weight_decay"])
