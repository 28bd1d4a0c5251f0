"""The one count of the bytes an optimizer's state holds (bench's state column, ``galore memory
--measure``, the fine-tuning report and the memory tests all read it)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def _region(t: Tensor) -> tuple[str, int, int]:
    """What a tensor occupies: its device, first element's address and byte size (meta tensors
    have no address: each counts as its own)."""
    nbytes = t.numel() * t.element_size()
    ptr = t.data_ptr() if t.device.type != "meta" else 0
    return (str(t.device), ptr or id(t), nbytes)


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the tensors ``optimizer`` holds in its state right now.

    Every tensor reachable from ``optimizer.state`` counts — inside dicts, lists and Python
    objects too (galore-torch keeps its projector in a ``GaLoreProjector``) — and a tensor that
    several entries share once (bitsandbytes' quantization maps serve all parameters). A tensor
    counts its own elements, not a larger storage it may be a view of: the size the optimizer's
    algorithm keeps, which is what ``galore memory`` estimates. A ``LayerwiseOptimizer`` exposes
    its inner optimizer's state."""
    regions: set[tuple[str, int, int]] = set()
    visited: set[int] = set()

    def walk(obj: Any) -> None:
        if isinstance(obj, Tensor):
            regions.add(_region(obj))
            return
        if id(obj) in visited:
            return
        visited.add(id(obj))
        if isinstance(obj, dict):
            values = obj.values()
        elif isinstance(obj, (list, tuple, set)):
            values = obj
        elif hasattr(obj, "__dict__") and not isinstance(obj, type):
            values = vars(obj).values()
        else:
            return
        for value in values:
            walk(value)

    for pstate in optimizer.state.values():
        walk(pstate)
    return sum(nbytes for _, _, nbytes in regions)
