"""GaLore-AdamW with 8-bit block-wise moments, stored and updated by bitsandbytes.

The moments are bitsandbytes' own 8-bit block-wise states (uint8 codes, one float32 absmax per
block of 256, dynamic quantization maps), updated by its fused ``optimizer_update_8bit_blockwise``
kernel on CUDA and its CPU implementation elsewhere — no quantizer is written here. Unlike
galore-torch 1.0 this never swaps ``p.data``, never calls ``torch.cuda.synchronize`` and passes
every bitsandbytes option by keyword (positional arguments bind to the wrong options from
bitsandbytes 0.50 on).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from galorekit.extras import import_bitsandbytes_functional
from galorekit.optim.base import GaLoreOptimizer, validate_betas
from galorekit.optim.rounding import rounds_stochastically
from galorekit.optim.sharding import local
from galorekit.projection.alignment import rotate_first, rotate_second

# the [8bit] extra: a missing bitsandbytes says which extra to install
bnbf = import_bitsandbytes_functional()

BLOCK_SIZE = 256  # bitsandbytes' block size for 8-bit optimizer states


class GaLoreAdamW8bit(GaLoreOptimizer):
    """AdamW with 8-bit block-wise moments (bitsandbytes) and GaLore projection.

    Param groups as in ``GaLoreAdamW``. The update is bitsandbytes' Adam (``m̂ / (√v̂ + eps)``, its
    defaults ``eps=1e-8``, ``weight_decay=1e-2``). States with fewer than ``min_8bit_size``
    elements stay 32-bit, as in bitsandbytes; for a GaLore parameter that is counted on the
    low-rank moments.

    State keys follow bitsandbytes: ``state1``/``state2`` (first/second moment, uint8 or float32),
    ``absmax1``/``absmax2`` (float32 per block), ``qmap1``/``qmap2`` (the dynamic maps).
    """

    _keep_dtype_keys = frozenset({"state1", "state2", "absmax1", "absmax2", "qmap1", "qmap2"})
    _moment_keys = ("state1", "state2", "absmax1", "absmax2")

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        *,
        min_8bit_size: int = 4096,
        on_nonfinite: str = "raise",
        state_dtype: None = None,
    ) -> None:
        validate_betas(betas)
        if not eps >= 0.0:
            raise ValueError(f"eps must be ≥ 0, got {eps!r}")
        if not weight_decay >= 0.0:
            raise ValueError(f"weight_decay must be ≥ 0, got {weight_decay!r}")
        if min_8bit_size < 0:
            raise ValueError(f"min_8bit_size must be ≥ 0, got {min_8bit_size}")
        self.min_8bit_size = min_8bit_size
        self._qmap_cache: dict[torch.device, tuple[Tensor, Tensor]] = {}
        super().__init__(
            params,
            dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, state_dtype=state_dtype),
            on_nonfinite=on_nonfinite,
        )

    def _qmaps(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """The signed (first moment) and unsigned (second moment) dynamic maps, one per device."""
        if device not in self._qmap_cache:
            self._qmap_cache[device] = (
                bnbf.create_dynamic_map(signed=True).to(device),
                bnbf.create_dynamic_map(signed=False).to(device),
            )
        return self._qmap_cache[device]

    def _init_state(self, state: dict[str, Any], like: Tensor) -> None:
        if like.numel() < self.min_8bit_size:
            state["state1"] = torch.zeros(like.shape, dtype=torch.float32, device=like.device)
            state["state2"] = torch.zeros(like.shape, dtype=torch.float32, device=like.device)
            return
        blocks = -(-like.numel() // BLOCK_SIZE)
        state["state1"] = torch.zeros(like.shape, dtype=torch.uint8, device=like.device)
        state["state2"] = torch.zeros(like.shape, dtype=torch.uint8, device=like.device)
        state["absmax1"] = torch.zeros(blocks, dtype=torch.float32, device=like.device)
        state["absmax2"] = torch.zeros(blocks, dtype=torch.float32, device=like.device)
        state["qmap1"], state["qmap2"] = self._qmaps(like.device)

    def _adam(self, grad: Tensor, target: Tensor, state: dict, group: dict, lr: float, wd: float):
        """bitsandbytes' in-place Adam step on ``target`` (the weight, or a low-rank buffer)."""
        beta1, beta2 = group["betas"]
        if state["state1"].dtype == torch.uint8:
            bnbf.optimizer_update_8bit_blockwise(
                "adam",
                grad,
                target,
                state["state1"],
                state["state2"],
                beta1=beta1,
                beta2=beta2,
                beta3=0.0,
                alpha=0.0,
                eps=group["eps"],
                step=self._moment_step(state),
                lr=lr,
                qmap1=state["qmap1"],
                qmap2=state["qmap2"],
                absmax1=state["absmax1"],
                absmax2=state["absmax2"],
                weight_decay=wd,
                gnorm_scale=1.0,
                skip_zeros=False,
            )
        else:
            bnbf.optimizer_update_32bit(
                "adam",
                grad,
                target,
                state["state1"],
                beta1=beta1,
                eps=group["eps"],
                step=self._moment_step(state),
                lr=lr,
                state2=state["state2"],
                beta2=beta2,
                weight_decay=wd,
                gnorm_scale=1.0,
            )

    def _update_param(self, p: Tensor, grad: Tensor, group: dict[str, Any]) -> None:
        state, low_rank = self._inner_grad(p, grad, group)
        if low_rank is None:
            return
        lr, wd = float(group["lr"]), group["weight_decay"]
        # low_rank is the gradient itself (this process's shard); stochastic rounding takes the
        # buffer path below (bitsandbytes would round its in-place update to nearest)
        if "rank" not in group and not rounds_stochastically(group, local(p)):
            weight = local(p)
            if "state1" not in state:
                self._init_state(state, weight)
            state["step"] += 1
            self._adam(low_rank.contiguous(), weight, state, group, lr, wd)
            return
        if "state1" not in state:
            self._init_state(state, low_rank)
        state["step"] += 1
        # bitsandbytes applies its step to a tensor in place: give it a zero low-rank buffer (never
        # the weight itself), which then holds -N; project it back into the weight.
        buffer = torch.zeros_like(low_rank, memory_format=torch.contiguous_format)
        self._adam(low_rank.contiguous(), buffer, state, group, lr=1.0, wd=0.0)
        # N itself (not -N) goes back: Fira's and APOLLO's ratios read its orientation
        self._apply_update(p, buffer.neg_(), group, state, -lr)
        if wd > 0.0:
            local(p).mul_(1.0 - lr * wd)

    def _validate_group(self, group: dict[str, Any]) -> None:
        super()._validate_group(group)
        if group.get("state_dtype") is not None:
            raise ValueError(
                "GaLoreAdamW8bit keeps its moments as 8-bit codes (float32 below min_8bit_size "
                f"elements): state_dtype must be None, got {group['state_dtype']!r}; use "
                "GaLoreAdamW(state_dtype=...) for float32 moments"
            )

    def _rotate_moments(
        self,
        state: dict,
        group: dict[str, Any],
        c_left: Tensor | None,
        c_right: Tensor | None,
    ) -> None:
        # de-quantized, carried into the new basis and quantized again (the codes of a rotated
        # block are not a rotation of the codes)
        first, second = self._moment(state, 1), self._moment(state, 2)
        weight = self._mean_weight(state, group)
        self._store(state, 1, rotate_first(first, c_left, c_right))
        self._store(
            state, 2, rotate_second(second, c_left, c_right, first=first, mean_weight=weight)
        )

    @staticmethod
    def _moment(state: dict, index: int) -> Tensor:
        """Moment ``index`` (1 or 2) as float32 values (de-quantized from 8-bit codes)."""
        codes = state[f"state{index}"]
        if codes.dtype != torch.uint8:
            return codes.clone()
        values = bnbf.dequantize_blockwise(
            codes, absmax=state[f"absmax{index}"], code=state[f"qmap{index}"], blocksize=BLOCK_SIZE
        )
        return values.view(codes.shape)

    @staticmethod
    def _store(state: dict, index: int, values: Tensor) -> None:
        """Write float32 ``values`` into moment ``index`` (quantized again for 8-bit codes)."""
        codes = state[f"state{index}"]
        if codes.dtype != torch.uint8:
            codes.copy_(values)
            return
        new_codes, quant = bnbf.quantize_blockwise(
            values.contiguous(), code=state[f"qmap{index}"], blocksize=BLOCK_SIZE
        )
        codes.copy_(new_codes.view(codes.shape))
        state[f"absmax{index}"].copy_(quant.absmax)

    def _state_shapes(self, shape: tuple[int, ...], group: dict[str, Any]) -> dict[str, tuple]:
        return {"state1": shape, "state2": shape}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        # share the quantization maps again instead of one copy per parameter
        for pstate in self.state.values():
            if "qmap1" in pstate:
                pstate["qmap1"], pstate["qmap2"] = self._qmaps(pstate["qmap1"].device)
