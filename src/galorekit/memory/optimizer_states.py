"""Optimizer-state tensors as galorekit's optimizers create them, derived without running them.

For every parameter of every group of a (never stepped) optimizer this lists the state tensors
its first step creates — shape and dtype — by the rules the optimizer classes follow, using their
own helpers and constants so that the two cannot drift apart (``tests/test_memory.py`` checks the
bytes against real optimizers after a step, exactly):

- projection side and low-rank shape: ``galorekit.projection.choose_side`` / ``low_rank_shape``,
  the rank clamped to min(m, n) as ``GaLoreOptimizer._effective_rank`` does; projectors ``P``
  (m×r) and/or ``Qᵀ`` (r×n) in the parameter's dtype — none with ``projection="random"``
  (regenerated from a seed), uint8 codes and float32 block absmax with ``projector_bits``
  (``galorekit.projection.quantize``), and the norm-growth limiter's 0-d float32 reference
  with ``residual``/``scaling``;
- ``GaLoreAdamW``: ``exp_avg`` and ``exp_avg_sq`` shaped like the (projected) gradient, in the
  gradient's dtype (= the parameter's);
- ``GaLoreAdamW8bit``: bitsandbytes' block-wise states — ``state1``/``state2`` uint8 with one
  float32 ``absmax`` per block of ``BLOCK_SIZE`` elements, and the two 256-entry float32 maps,
  *shared* by all parameters of an optimizer on one device; a (projected) moment with fewer than
  the optimizer's ``min_8bit_size`` elements stays float32 (no absmax, no maps);
- ``GaLoreAdafactor``: factored second moment (row vector ``shape[:-1]`` and column vector) for a
  ≥2-D (projected) gradient, the full ``exp_avg_sq`` otherwise, plus ``exp_avg`` when ``beta1`` is
  set; always float32 (as transformers' Adafactor), projectors in the parameter's dtype.

Scalar ``step``/``proj_side``/... entries are Python numbers, not tensors: they take no tensor
memory.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from galorekit.extras import import_bitsandbytes_functional, needs_extra
from galorekit.names import PROJECTOR_BLOCK
from galorekit.optim.base import matrix_shape, state_dtype
from galorekit.projection import Side, choose_side, low_rank_shape
from galorekit.projection.quantize import block_count, code_count


@dataclass(frozen=True)
class StateTensor:
    """One optimizer-state tensor. ``shared`` names tensors held once per optimizer and device
    (bitsandbytes' quantization maps), counted once however many parameters refer to them."""

    param: str
    key: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    shared: str | None = None

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * _itemsize(self.dtype)

    @property
    def is_projector(self) -> bool:
        return self.key.startswith(("proj_left", "proj_right"))


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype, device="meta").element_size()


def total_bytes(tensors: list[StateTensor]) -> int:
    """Bytes of ``tensors``, shared tensors counted once."""
    seen: set[str] = set()
    total = 0
    for t in tensors:
        if t.shared is not None:
            if t.shared in seen:
                continue
            seen.add(t.shared)
        total += t.nbytes
    return total


# ---- GaLore projection ---------------------------------------------------------------------------
def _projected(p: Tensor, group: dict[str, Any], name: str) -> tuple[tuple[int, int], list]:
    """(shape of the projected gradient, projector tensors) for a parameter of a GaLore group."""
    shape = matrix_shape(p.shape)  # a kernel is projected as its out × rest unfolding
    side = choose_side(group["proj_type"], shape)
    rank = min(group["rank"], min(shape))  # GaLoreOptimizer._effective_rank
    factors = []
    if side in (Side.LEFT, Side.FULL):
        factors.append(("proj_left", (shape[0], rank)))
    if side in (Side.RIGHT, Side.FULL):
        factors.append(("proj_right", (rank, shape[1])))
    tensors = []
    bits = group.get("projector_bits")
    for key, factor in factors:
        if group.get("projection", "svd") == "random":
            break  # regenerated from its seed (an int) at every step: nothing stored
        if bits is None:
            tensors.append(StateTensor(name, key, factor, p.dtype))
            continue
        numel = math.prod(factor)
        tensors += [
            StateTensor(name, f"{key}_codes", (code_count(numel, bits),), torch.uint8),
            StateTensor(
                name, f"{key}_absmax", (block_count(numel, PROJECTOR_BLOCK),), torch.float32
            ),
        ]
    full_rank = group.get("residual") is not None or group.get("scaling") is not None
    if full_rank and group.get("norm_growth_limit") is not None:
        tensors.append(StateTensor(name, "limiter_norm", (), torch.float32))  # the limiter's
    return low_rank_shape(shape, rank, side), tensors


def _grad_like(
    p: Tensor, group: dict[str, Any], name: str
) -> tuple[tuple[int, ...], list[StateTensor]]:
    """Shape of what the inner optimizer sees (the gradient or its projection) and projectors."""
    if "rank" in group:
        return _projected(p, group, name)
    return tuple(int(s) for s in p.shape), []


# ---- per-class rules ------------------------------------------------------------------------------
def _adamw(opt: Any, p: Tensor, group: dict[str, Any], name: str) -> list[StateTensor]:
    shape, tensors = _grad_like(p, group, name)
    return [
        *tensors,
        StateTensor(name, "exp_avg", shape, state_dtype(group, p)),
        StateTensor(name, "exp_avg_sq", shape, state_dtype(group, p)),
    ]


def _adamw8bit(opt: Any, p: Tensor, group: dict[str, Any], name: str) -> list[StateTensor]:
    # bitsandbytes (galorekit[8bit]): only an 8-bit optimizer's layout needs it
    with needs_extra("8bit"):
        from galorekit.optim.galore_adamw8bit import BLOCK_SIZE

    shape, tensors = _grad_like(p, group, name)
    numel = math.prod(shape)
    if numel < opt.min_8bit_size:
        return [
            *tensors,
            StateTensor(name, "state1", shape, torch.float32),
            StateTensor(name, "state2", shape, torch.float32),
        ]
    blocks = -(-numel // BLOCK_SIZE)
    device = str(p.device)
    return [
        *tensors,
        StateTensor(name, "state1", shape, torch.uint8),
        StateTensor(name, "state2", shape, torch.uint8),
        StateTensor(name, "absmax1", (blocks,), torch.float32),
        StateTensor(name, "absmax2", (blocks,), torch.float32),
        StateTensor(name, "qmap1", (_qmap_len(True),), torch.float32, shared=f"qmap1@{device}"),
        StateTensor(name, "qmap2", (_qmap_len(False),), torch.float32, shared=f"qmap2@{device}"),
    ]


def _qmap_len(signed: bool) -> int:
    bnbf = import_bitsandbytes_functional()  # see _adamw8bit
    # the very maps GaLoreAdamW8bit._qmaps creates (256 entries each)
    return bnbf.create_dynamic_map(signed=signed).numel()


def _adafactor(opt: Any, p: Tensor, group: dict[str, Any], name: str) -> list[StateTensor]:
    shape, tensors = _grad_like(p, group, name)
    # statistics kept in float32 whatever the parameter's dtype, unless the group says otherwise
    f32 = getattr(torch, group.get("state_dtype") or "float32")
    if len(shape) >= 2:
        tensors += [
            StateTensor(name, "exp_avg_sq_row", shape[:-1], f32),
            StateTensor(name, "exp_avg_sq_col", (*shape[:-2], shape[-1]), f32),
        ]
    else:
        tensors.append(StateTensor(name, "exp_avg_sq", shape, f32))
    if group.get("beta1") is not None:
        tensors.append(StateTensor(name, "exp_avg", shape, f32))
    return tensors


#: the classes whose layout is known, by qualified name (so that bitsandbytes is imported only
#: when an 8-bit optimizer is actually used)
_RULES: dict[str, Callable[..., list[StateTensor]]] = {
    "galorekit.optim.galore_adamw.GaLoreAdamW": _adamw,
    "galorekit.optim.galore_adamw8bit.GaLoreAdamW8bit": _adamw8bit,
    "galorekit.optim.galore_adafactor.GaLoreAdafactor": _adafactor,
}


def _rule(optimizer: torch.optim.Optimizer) -> Callable[..., list[StateTensor]] | None:
    cls = type(optimizer)
    return _RULES.get(f"{cls.__module__}.{cls.__qualname__}")


def _unwrap(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The optimizer that owns the state (``LayerwiseOptimizer`` keeps it in ``inner``)."""
    return getattr(optimizer, "inner", optimizer)


def _named_params(optimizer: torch.optim.Optimizer) -> Iterator[tuple[Tensor, dict, str]]:
    seen: set[int] = set()
    for gi, group in enumerate(optimizer.param_groups):
        names = group.get("param_names") or []
        for i, p in enumerate(group["params"]):
            if id(p) in seen or not p.requires_grad:
                continue
            seen.add(id(p))
            yield p, group, names[i] if i < len(names) else f"group{gi}.param{i}"


def optimizer_state_tensors(optimizer: torch.optim.Optimizer) -> list[StateTensor]:
    """The state tensors ``optimizer`` holds after its first step over every parameter.

    ``optimizer`` is a galorekit optimizer (or a ``LayerwiseOptimizer`` around one) that may live
    on ``device="meta"``; it is only read. Raises ``TypeError`` for other optimizer classes.
    """
    inner = _unwrap(optimizer)
    rule = _rule(inner)
    if rule is None:
        raise TypeError(
            f"no state layout known for {type(inner).__name__}; supported: "
            f"{', '.join(name.rsplit('.', 1)[1] for name in _RULES)}"
        )
    out: list[StateTensor] = []
    for p, group, name in _named_params(inner):
        out.extend(rule(inner, p, group, name))
    return out
