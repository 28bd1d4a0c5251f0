"""GaLore-Adafactor: Adafactor's factored second moment on the low-rank projected gradient."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from galorekit.optim.base import GaLoreOptimizer, normalize_state_dtype, validate_lr
from galorekit.optim.functional import adafactor_beta2, adafactor_lr, adafactor_update, rms
from galorekit.optim.sharding import is_sharded
from galorekit.projection.alignment import rotate_first, rotate_second


class GaLoreAdafactor(GaLoreOptimizer):
    """Adafactor (Shazeer & Stern, 2018) with GaLore projection.

    Semantics and defaults as ``transformers.Adafactor``: ``eps=(1e-30, 1e-3)``,
    ``clip_threshold=1.0``, ``decay_rate=-0.8``, ``beta1=None`` (no first moment),
    ``scale_parameter=True``, ``warmup_init=False``. ``relative_step`` defaults to True when no
    ``lr`` is given (time-dependent step min(1e-2, 1/√t)) and to False when one is, so that a manual
    ``lr`` works (with ``scale_parameter`` it is relative to the weight's RMS). A 2-D (projected)
    gradient uses the factored second moment: one row and one column vector. The statistics are
    kept and updated in float32 whatever the parameter's dtype (as transformers.Adafactor does): in
    bf16, late in training, row·β₂ₜ rounds back to row and the statistics would freeze.
    """

    _moment_keys = ("exp_avg_sq_row", "exp_avg_sq_col", "exp_avg_sq", "exp_avg")
    _keep_dtype_keys = frozenset(_moment_keys)

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | None = None,
        eps: tuple[float, float] = (1e-30, 1e-3),
        clip_threshold: float = 1.0,
        decay_rate: float = -0.8,
        beta1: float | None = None,
        weight_decay: float = 0.0,
        scale_parameter: bool = True,
        relative_step: bool | None = None,
        warmup_init: bool = False,
        *,
        on_nonfinite: str = "raise",
        state_dtype: str | torch.dtype | None = None,
    ) -> None:
        if relative_step is None:
            relative_step = lr is None
        if lr is not None and relative_step:
            raise ValueError("GaLoreAdafactor: give either lr or relative_step=True, not both")
        if lr is None and not relative_step:
            raise ValueError("GaLoreAdafactor: relative_step=False needs an lr")
        if warmup_init and not relative_step:
            raise ValueError("GaLoreAdafactor: warmup_init=True needs relative_step=True")
        if beta1 is not None and not 0.0 <= beta1 < 1.0:
            raise ValueError(f"beta1 must be None or in [0, 1), got {beta1!r}")
        if not clip_threshold > 0:
            raise ValueError(f"clip_threshold must be > 0, got {clip_threshold!r}")
        if not weight_decay >= 0.0:
            raise ValueError(f"weight_decay must be ≥ 0, got {weight_decay!r}")
        defaults = dict(
            lr=lr,
            eps=tuple(eps),
            clip_threshold=clip_threshold,
            decay_rate=decay_rate,
            beta1=beta1,
            weight_decay=weight_decay,
            scale_parameter=scale_parameter,
            relative_step=relative_step,
            warmup_init=warmup_init,
            state_dtype=normalize_state_dtype(state_dtype),
        )
        super().__init__(params, defaults, on_nonfinite=on_nonfinite)

    def _validate_group(self, group: dict[str, Any]) -> None:
        validate_lr(group["lr"], allow_none=group.get("relative_step", False))
        if any(is_sharded(p) for p in group["params"]):
            # the factored statistics are means over whole rows and columns, and the update is
            # clipped by its RMS over the whole matrix: none of it is local to a row shard
            raise ValueError(
                "GaLoreAdafactor does not support FSDP2-sharded parameters (its row/column "
                "statistics and update clipping span the whole matrix); use GaLoreAdamW or "
                "GaLoreAdamW8bit, or data parallelism (DDP)"
            )
        for key in ("residual", "scaling"):
            if group.get(key) is not None:
                # both scale the full-rank term by Adam's ‖N‖/‖R‖; Adafactor's update is clipped
                # by its RMS and carries its learning rate, which that ratio would mix in
                raise ValueError(
                    f"GaLoreAdafactor does not take {key}={group[key]!r} (Fira's residual and "
                    "APOLLO's scaling are defined on Adam's update); use GaLoreAdamW or "
                    "GaLoreAdamW8bit. Its projection options (projection, projector_bits, "
                    "lazy_refresh, random_after) apply"
                )

    def _update_param(self, p: Tensor, grad: Tensor, group: dict[str, Any]) -> None:
        state, grad = self._inner_grad(p, grad, group)
        if grad is None:
            return
        grad = grad.float()
        factored = grad.dim() >= 2
        if "exp_avg_sq_row" not in state and "exp_avg_sq" not in state:
            # float32 statistics unless asked otherwise (they would freeze in bf16, see above)
            stats_dtype = getattr(torch, group.get("state_dtype") or "float32")
            if factored:
                state["exp_avg_sq_row"] = grad.new_zeros(grad.shape[:-1], dtype=stats_dtype)
                state["exp_avg_sq_col"] = grad.new_zeros(
                    grad.shape[:-2] + grad.shape[-1:], dtype=stats_dtype
                )
            else:
                state["exp_avg_sq"] = torch.zeros_like(grad, dtype=stats_dtype)
            if group["beta1"] is not None:
                state["exp_avg"] = torch.zeros_like(grad, dtype=stats_dtype)
        state["step"] += 1
        eps1, eps2 = group["eps"]
        lr = adafactor_lr(
            lr=group["lr"],
            step=state["step"],
            param_rms=float(rms(p)) if group["scale_parameter"] else 0.0,
            relative_step=group["relative_step"],
            scale_parameter=group["scale_parameter"],
            warmup_init=group["warmup_init"],
            eps2=eps2,
        )
        update = adafactor_update(
            grad,
            lr=lr,
            beta2t=adafactor_beta2(self._moment_step(state), group["decay_rate"]),
            eps1=eps1,
            clip_threshold=group["clip_threshold"],
            exp_avg_sq_row=state.get("exp_avg_sq_row"),
            exp_avg_sq_col=state.get("exp_avg_sq_col"),
            exp_avg_sq=state.get("exp_avg_sq"),
            exp_avg=state.get("exp_avg"),
            beta1=group["beta1"],
        )
        if group["weight_decay"] > 0.0:
            p.mul_(1.0 - group["weight_decay"] * lr)
        self._apply_update(p, update, group, state, -1.0)

    def _rotate_moments(
        self,
        state: dict,
        group: dict[str, Any],
        c_left: Tensor | None,
        c_right: Tensor | None,
    ) -> None:
        # the factored statistics are R²'s row and column means: a basis change on the left
        # mixes R's rows (the row statistics rotate, the column means keep their sum of
        # squares), one on the right mixes its columns. There is no first moment of the
        # gradient to centre them with (``exp_avg`` averages clipped updates): (C∘C)·V
        if "exp_avg_sq_row" in state and c_left is not None:
            row = state["exp_avg_sq_row"]
            row.copy_(rotate_second(row.unsqueeze(-1), c_left, None).squeeze(-1))
        if "exp_avg_sq_col" in state and c_right is not None:
            col = state["exp_avg_sq_col"]
            col.copy_(rotate_second(col.unsqueeze(-2), None, c_right).squeeze(-2))
        if "exp_avg" in state:
            state["exp_avg"].copy_(rotate_first(state["exp_avg"], c_left, c_right))

    def _state_shapes(self, shape: tuple[int, ...], group: dict[str, Any]) -> dict[str, tuple]:
        if len(shape) >= 2:
            shapes = {"exp_avg_sq_row": shape[:-1], "exp_avg_sq_col": shape[:-2] + shape[-1:]}
        else:
            shapes = {"exp_avg_sq": shape}
        if group.get("beta1") is not None:
            shapes["exp_avg"] = shape
        return shapes
