"""GaLore-AdamW: AdamW whose moments live in a low-rank projection of each targeted gradient."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from galorekit.optim.base import (
    GaLoreOptimizer,
    normalize_state_dtype,
    state_dtype,
    validate_betas,
)
from galorekit.optim.functional import adam_step_size, adam_update, adam_update_foreach
from galorekit.optim.sharding import local
from galorekit.projection.alignment import rotate_first, rotate_second


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
            when a gradient holds NaN/Inf (checked for every parameter before any is updated);
            ``"skip"`` skips that parameter's update and counts it in its state's
            ``nonfinite_skips``.
        state_dtype: the moments' dtype (also a group key): None (default) keeps them in the
            parameter's dtype, as torch and galore-torch do and as the paper's memory figures
            assume; ``"float32"`` keeps float32 moments for bf16 weights — in bf16 a β₂ = 0.999
            decay is not representable (v·0.999 rounds back to v), so after a gradient spike
            ``exp_avg_sq`` stays high for thousands of steps and the updates shrink.
        foreach: ``step()`` updates the moments of a group's parameters (the projected
            gradients R of a GaLore group) in chunks with torch's ``_foreach`` kernels, then
            projects each update back into its weight (one fused ``addmm_`` per matrix). The same
            operations in the same order as the per-parameter loop: bit-identical on a CPU
            (tested); a GPU's fused kernels may round differently in the last bit. It saves a
            kernel launch per tensor and operation on a GPU, at the cost of holding a chunk's R's
            and two temporaries of up to ``FOREACH_CHUNK_ELEMENTS`` elements instead of one
            tensor's. Default (None): on when every parameter is on a GPU, as in torch's AdamW.
            Layer-wise updates (``LayerwiseOptimizer``) are one parameter at a time whatever this
            says.
    """

    #: a foreach chunk's size in elements of R (a larger tensor makes a chunk alone): its R's, the
    #: directions and their denominators are what the batched update holds at once
    FOREACH_CHUNK_ELEMENTS = 1 << 24
    _moment_keys = ("exp_avg", "exp_avg_sq")

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
        foreach: bool | None = None,
        state_dtype: str | torch.dtype | None = None,
    ) -> None:
        validate_betas(betas)
        if not eps >= 0.0:
            raise ValueError(f"eps must be ≥ 0, got {eps!r}")
        if not weight_decay >= 0.0:
            raise ValueError(f"weight_decay must be ≥ 0, got {weight_decay!r}")
        if foreach is not None and not isinstance(foreach, bool):
            raise ValueError(f"foreach must be True, False or None, got {foreach!r}")
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            correct_bias=correct_bias,
            state_dtype=normalize_state_dtype(state_dtype),
        )
        super().__init__(params, defaults, on_nonfinite=on_nonfinite)
        if foreach is None:
            params = [p for g in self.param_groups for p in g["params"]]
            foreach = bool(params) and all(p.is_cuda for p in params)
        self.foreach = foreach

    def _prepare(
        self, p: Tensor, grad: Tensor, group: dict[str, Any]
    ) -> tuple[dict, Tensor | None]:
        """The state and the (projected) gradient of ``p``'s update, its moments created and its
        step counted; the gradient is None when the update is skipped."""
        state, grad = self._inner_grad(p, grad, group)
        if grad is None:
            return state, None
        if "exp_avg" not in state:
            dtype = state_dtype(group, p)
            state["exp_avg"] = torch.zeros_like(
                grad, dtype=dtype, memory_format=torch.contiguous_format
            )
            state["exp_avg_sq"] = torch.zeros_like(
                grad, dtype=dtype, memory_format=torch.contiguous_format
            )
        state["step"] += 1
        return state, grad

    def _rotate_moments(
        self,
        state: dict,
        group: dict[str, Any],
        c_left: Tensor | None,
        c_right: Tensor | None,
    ) -> None:
        first = state["exp_avg"]
        weight = self._mean_weight(state, group)
        state["exp_avg_sq"].copy_(
            rotate_second(state["exp_avg_sq"], c_left, c_right, first=first, mean_weight=weight)
        )
        first.copy_(rotate_first(first, c_left, c_right))

    def _state_shapes(self, shape: tuple[int, ...], group: dict[str, Any]) -> dict[str, tuple]:
        return {"exp_avg": shape, "exp_avg_sq": shape}

    def _update_params(self, pairs: list[tuple[Tensor, dict[str, Any]]]) -> None:
        if not self.foreach:
            super()._update_params(pairs)
            return
        # project (and refresh) gradients into a chunk per group, device and dtype; a chunk is
        # updated as soon as it is full, so that no more than a chunk's R's live at once
        pending: dict[tuple, tuple[dict, list[tuple[Tensor, dict, Tensor]]]] = {}
        elements: dict[tuple, int] = {}  # R elements in each pending chunk
        for p, group in pairs:
            state, grad = self._prepare(p, p.grad, group)
            if grad is None:
                continue
            if grad.dtype != state["exp_avg"].dtype:  # _foreach kernels want one dtype
                grad = grad.to(state["exp_avg"].dtype)
            key = (id(group), grad.device, grad.dtype)
            _, items = pending.setdefault(key, (group, []))
            items.append((p, state, grad))
            elements[key] = elements.get(key, 0) + grad.numel()
            if elements[key] >= self.FOREACH_CHUNK_ELEMENTS:
                self._foreach_update(items, group)
                del pending[key], elements[key]
        for group, items in pending.values():
            self._foreach_update(items, group)

    def _foreach_update(self, items: list[tuple[Tensor, dict, Tensor]], group: dict) -> None:
        beta1, beta2 = group["betas"]
        directions = adam_update_foreach(
            [grad for _, _, grad in items],
            [state["exp_avg"] for _, state, _ in items],
            [state["exp_avg_sq"] for _, state, _ in items],
            beta1=beta1,
            beta2=beta2,
            eps=group["eps"],
        )
        lr = float(group["lr"])
        for (p, state, _), direction in zip(items, directions):
            step_size = adam_step_size(
                self._moment_step(state), beta1, beta2, group["correct_bias"]
            )
            self._apply_update(p, direction, group, state, -lr * step_size)
        if group["weight_decay"] > 0.0:
            torch._foreach_mul_([local(p) for p, _, _ in items], 1.0 - lr * group["weight_decay"])

    def _update_param(self, p: Tensor, grad: Tensor, group: dict[str, Any]) -> None:
        state, grad = self._prepare(p, grad, group)
        if grad is None:
            return
        beta1, beta2 = group["betas"]
        direction, step_size = adam_update(
            grad,
            state["exp_avg"],
            state["exp_avg_sq"],
            step=self._moment_step(state),
            beta1=beta1,
            beta2=beta2,
            eps=group["eps"],
            correct_bias=group["correct_bias"],
        )
        lr = float(group["lr"])
        self._apply_update(p, direction, group, state, -lr * step_size)
        if group["weight_decay"] > 0.0:
            local(p).mul_(1.0 - lr * group["weight_decay"])
