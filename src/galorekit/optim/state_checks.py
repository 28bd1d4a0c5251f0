"""Checking a state dict against an optimizer before loading it: torch's own
``Optimizer.load_state_dict`` maps state by position only, so another model's state would load
and fail at the next step with an opaque matmul error, or silently give one parameter another's
moments."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from galorekit.names import PROJECTOR_BLOCK
from galorekit.optim.sharding import local
from galorekit.optim.validation import matrix_shape, validate_galore_group
from galorekit.projection import Side, effective_rank
from galorekit.projection.projector import low_rank_shape
from galorekit.projection.quantize import block_count, code_count


def check_state_dict(opt: Any, state_dict: Any) -> None:
    """Refuse (``ValueError`` naming the first mismatch) a state dict that does not belong to
    this optimizer's parameters: another number of groups or parameters, other parameter
    names (where both sides have them), a GaLore group where this one is plain or the other
    way round, or a state tensor whose shape does not fit its parameter (projectors against
    the side and rank, moments against the projected gradient). torch's own load maps state by
    position only: such a dict would load and fail at the next step with an opaque matmul
    error, or silently give one parameter another's moments."""
    if not (
        isinstance(state_dict, dict)
        and isinstance(state_dict.get("param_groups"), list)
        and isinstance(state_dict.get("state"), dict)
    ):
        raise ValueError(
            "not an optimizer state dict (expected the keys 'state' and 'param_groups')"
        )
    for pstate in state_dict["state"].values():
        if isinstance(pstate, dict) and any(hasattr(v, "ortho_matrix") for v in pstate.values()):
            raise ValueError(
                "cannot load the optimizer state: it holds galore-torch 1.0 projector objects "
                "(saved by galore_torch.GaLoreAdamW, whose state torch.load(weights_only=True) "
                "cannot read either); galorekit keeps projectors as tensors. Resume the "
                "weights and start this optimizer fresh; nothing was loaded"
            )
    saved_groups = state_dict["param_groups"]
    if len(saved_groups) != len(opt.param_groups):
        raise ValueError(
            f"cannot load the optimizer state: it has {len(saved_groups)} param group(s), "
            f"this optimizer {len(opt.param_groups)} — it was saved for another model or "
            "another grouping of its parameters; nothing was loaded"
        )
    for index, (saved, group) in enumerate(zip(saved_groups, opt.param_groups)):
        _check_group(opt, index, saved, group, state_dict["state"])
        if "rank" in saved:  # e.g. an svd method not registered in this process
            validate_galore_group({**saved, "params": group["params"]})


def _check_group(
    opt: Any, index: int, saved: dict[str, Any], group: dict[str, Any], state: dict
) -> None:
    where = f"param group {index}"
    if len(saved["params"]) != len(group["params"]):
        raise ValueError(
            f"cannot load the optimizer state: {where} holds {len(saved['params'])} "
            f"parameter(s) there and {len(group['params'])} here — it was saved for another "
            "model; nothing was loaded"
        )
    saved_names, names = saved.get("param_names"), group.get("param_names")
    if saved_names and names:
        for i, (theirs, ours) in enumerate(zip(saved_names, names)):
            if theirs != ours:
                raise ValueError(
                    f"cannot load the optimizer state: parameter {i} of {where} is {ours!r} "
                    f"here but {theirs!r} in the state dict (another model, or parameters in "
                    "another order); nothing was loaded"
                )
    if ("rank" in saved) != ("rank" in group):
        kind = "a GaLore group" if "rank" in group else "a plain group"
        raise ValueError(
            f"cannot load the optimizer state: {where} is {kind} here but not in the state "
            "dict; nothing was loaded"
        )
    for i, pid in enumerate(saved["params"]):
        pstate = state.get(pid)
        if not pstate:
            continue
        p = group["params"][i]
        name = (names or saved_names or [None] * (i + 1))[i] or (f"parameter {i} of {where}")
        for key, shape in _expected_shapes(opt, p, saved, pstate, name).items():
            value = pstate.get(key)
            if isinstance(value, Tensor) and tuple(value.shape) != tuple(shape):
                raise ValueError(
                    f"cannot load the optimizer state: {name} (shape "
                    f"{tuple(p.shape)}) has state {key!r} of shape {tuple(value.shape)}, "
                    f"expected {tuple(shape)} — it was saved for another model, rank or "
                    "parameter order; nothing was loaded"
                )


def _expected_shapes(
    opt: Any, p: Tensor, group: dict[str, Any], pstate: dict[str, Any], name: str
) -> dict[str, tuple]:
    own = tuple(local(p).shape)
    if "rank" not in group:
        return opt._state_shapes(own, group)
    own = matrix_shape(own)
    side = pstate.get("proj_side")
    if side is None:  # never projected: only a step count or skip counter
        return {}
    if side not in tuple(Side):
        raise ValueError(
            f"cannot load the optimizer state: {name} has proj_side {side!r}, which is not "
            f"one of {[int(s) for s in Side]}; nothing was loaded"
        )
    side = Side(side)
    m, n = matrix_shape(p.shape)  # a DTensor's shape is the whole parameter's
    rank = effective_rank(group["rank"], (m, n))
    shapes: dict[str, tuple] = {"limiter_norm": ()}
    factors = []
    if side in (Side.LEFT, Side.FULL):
        factors.append(("proj_left", (m, rank)))
    if side in (Side.RIGHT, Side.FULL):
        factors.append(("proj_right", (rank, n)))
    bits = group.get("projector_bits")
    for key, shape in factors:
        shapes[key] = shape
        if bits is not None:  # Q-GaLore's block-quantized projector
            numel = shape[0] * shape[1]
            shapes[f"{key}_codes"] = (code_count(numel, bits),)
            shapes[f"{key}_absmax"] = (block_count(numel, PROJECTOR_BLOCK),)
    shapes.update(opt._state_shapes(low_rank_shape(own, rank, side), group))
    return shapes
