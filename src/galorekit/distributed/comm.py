"""Bytes communicated, counted at the process-group calls.

``CommCounter`` wraps the ``torch.distributed`` collectives for as long as it is active and adds up
the payload each rank hands to them (numel × element size of the tensor passed in; for gathers the
input shard). That is what a rank contributes to the collective; a ring all-reduce moves about
2·(W−1)/W times it over each link.

It sees every collective issued from Python — the layer-wise optimizer's in-hook all-reduce, our
DDP communication hooks (``galorekit.distributed.hooks``), FSDP2's all-gathers and reduce-scatters
— but not those DDP's C++ reducer issues without a comm hook. That is why data-parallel training
here always registers one of our hooks: the default one is numerically torch's own.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Any

import torch
import torch.distributed as dist

#: collective name -> index of the tensor (or list of tensors) whose bytes are the payload
_COLLECTIVES: dict[str, int] = {
    "all_reduce": 0,
    "broadcast": 0,
    "reduce": 0,
    "all_gather": 1,
    "all_gather_into_tensor": 1,
    "all_gather_single": 1,  # FSDP2's all-gather (torch ≥ 2.13)
    "reduce_scatter": 1,
    "reduce_scatter_single": 1,  # FSDP2's reduce-scatter (torch ≥ 2.13)
    "reduce_scatter_tensor": 1,
    "all_to_all_single": 1,
}
_PAYLOAD_KWARGS = {
    "all_reduce": "tensor",
    "broadcast": "tensor",
    "reduce": "tensor",
    "all_gather": "tensor",
    "all_gather_into_tensor": "input_tensor",
    "all_gather_single": "input_tensor",
    "reduce_scatter": "input_list",
    "reduce_scatter_single": "input",
    "reduce_scatter_tensor": "input",
    "all_to_all_single": "input",
}


def _nbytes(obj: Any) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, (list, tuple)):
        return sum(_nbytes(x) for x in obj)
    return 0


class CommCounter:
    """Counts collective payload bytes and calls while active (a context manager; re-entrant use
    of one instance is an error, nesting two instances is not supported).

    ``bytes`` and ``calls`` are totals; ``by_op`` splits bytes by collective name; ``reset()``
    returns the bytes counted since the previous reset and zeroes the totals.
    """

    _lock = threading.Lock()
    _active: CommCounter | None = None

    def __init__(self) -> None:
        self.bytes = 0
        self.calls = 0
        self.by_op: dict[str, int] = defaultdict(int)
        self._originals: dict[str, Any] = {}

    def _wrap(self, name: str, fn: Any) -> Any:
        index, kw = _COLLECTIVES[name], _PAYLOAD_KWARGS[name]

        def counted(*args: Any, **kwargs: Any) -> Any:
            payload = args[index] if len(args) > index else kwargs.get(kw)
            size = _nbytes(payload)
            self.bytes += size
            self.calls += 1
            self.by_op[name] += size
            return fn(*args, **kwargs)

        counted.__wrapped__ = fn  # type: ignore[attr-defined]
        return counted

    def __enter__(self) -> CommCounter:
        with CommCounter._lock:
            if CommCounter._active is not None:
                raise RuntimeError("a CommCounter is already active in this process")
            CommCounter._active = self
            for name in _COLLECTIVES:
                fn = getattr(dist, name, None)
                if fn is not None:
                    self._originals[name] = fn
                    setattr(dist, name, self._wrap(name, fn))
        return self

    def __exit__(self, *exc: object) -> None:
        with CommCounter._lock:
            for name, fn in self._originals.items():
                setattr(dist, name, fn)
            self._originals.clear()
            CommCounter._active = None

    def reset(self) -> int:
        counted = self.bytes
        self.bytes = 0
        self.calls = 0
        self.by_op.clear()
        return counted
