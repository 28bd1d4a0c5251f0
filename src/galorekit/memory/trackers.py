"""Measuring memory components of a real training step, one by one.

- :class:`SavedTensorTracker`: the peak bytes of tensors autograd holds for backward, through
  ``torch.autograd.graph.saved_tensors_hooks``: each packed tensor is kept in a handle whose
  lifetime is the graph node's, and a storage counts once while any handle holds it. Parameters
  (and their views) are not activations and are excluded. It sees what reentrant activation
  checkpointing saves and recomputes, but not the inside of non-reentrant checkpointing (which
  installs its own hooks), so measurements use ``use_reentrant=True``: both variants keep the same
  tensors — each layer's input and one recomputed layer at a time.
- :class:`GradientTracker`: the peak bytes of live ``.grad`` tensors, from post-accumulate-grad
  hooks registered *before* the optimizer's (a layer-wise optimizer frees each gradient in its own
  hook, which runs after ours).
- :func:`allocator_peak`: the peak of memory allocated by torch during a call — the CUDA caching
  allocator's ``max_memory_allocated`` on GPU; on CPU torch keeps no such statistic, so the call
  runs under ``torch.profiler`` with ``profile_memory=True``, whose allocation events carry the
  running total of bytes allocated since profiling began (blocks allocated before are not
  counted, so the result is the step's own peak on top of what already existed).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor


def _key(t: Tensor) -> tuple[str, int]:
    return (str(t.device), t.untyped_storage().data_ptr())


class _Handle:
    __slots__ = ("__weakref__", "key", "tensor", "tracker")

    def __init__(self, tracker: SavedTensorTracker, tensor: Tensor, key) -> None:
        self.tracker, self.tensor, self.key = tracker, tensor, key

    def __del__(self) -> None:
        if self.key is not None:
            self.tracker._release(self.key)


class SavedTensorTracker:
    """Context manager: ``peak`` is the largest total of live saved-tensor bytes (unique
    storages, parameters excluded) while it was active; keep it active across forward *and*
    backward so that releases and recomputations are seen."""

    def __init__(self, exclude: Iterable[Tensor] = ()) -> None:
        self._exclude = {_key(t) for t in exclude}
        self._live: dict[tuple[str, int], list[int]] = {}  # key -> [refcount, nbytes]
        self.current = 0
        self.peak = 0
        self._ctx: Any = None

    def _pack(self, t: Tensor) -> Any:
        key = _key(t)
        if key in self._exclude or t.device.type == "meta":
            return _Handle(self, t, None)
        entry = self._live.get(key)
        if entry is None:
            nbytes = t.untyped_storage().nbytes()
            self._live[key] = [1, nbytes]
            self.current += nbytes
            self.peak = max(self.peak, self.current)
        else:
            entry[0] += 1
        return _Handle(self, t, key)

    @staticmethod
    def _unpack(handle: _Handle) -> Tensor:
        return handle.tensor

    def _release(self, key) -> None:
        entry = self._live.get(key)
        if entry is None:
            return
        entry[0] -= 1
        if entry[0] == 0:
            self.current -= entry[1]
            del self._live[key]

    def __enter__(self) -> SavedTensorTracker:
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._ctx.__exit__(*exc)


class GradientTracker:
    """Peak bytes of live ``.grad`` tensors of ``params`` (unique storages), sampled each time a
    gradient is accumulated. Register before the optimizer; ``remove()`` detaches."""

    def __init__(self, params: Iterable[Tensor]) -> None:
        self.params = [p for p in params if p.requires_grad]
        self.peak = 0
        self._handles = [p.register_post_accumulate_grad_hook(self._hook) for p in self.params]

    def _hook(self, _param: Tensor) -> None:
        self.peak = max(self.peak, self.live())

    def live(self) -> int:
        storages = {}
        for p in self.params:
            if p.grad is not None:
                storages[_key(p.grad)] = p.grad.untyped_storage().nbytes()
        return sum(storages.values())

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


def storage_bytes(tensors: Iterable[Tensor]) -> int:
    """Bytes of the unique storages behind ``tensors``."""
    return sum({_key(t): t.untyped_storage().nbytes() for t in tensors}.values())


def allocator_peak(fn: Callable[[], Any], device: torch.device | str) -> int:
    """Peak bytes allocated by torch on ``device`` while ``fn()`` runs, above what was allocated
    before it (see the module docstring for how CPU is measured)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    if device.type != "cpu":
        raise ValueError(f"memory measurement supports cpu and cuda devices, not {device.type}")
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    fd, path = tempfile.mkstemp(suffix=".json", prefix="galore-memory-")
    os.close(fd)
    try:
        prof.export_chrome_trace(path)
        with open(path, encoding="utf-8") as fh:
            events = json.load(fh).get("traceEvents", [])
    finally:
        os.unlink(path)
    allocations = [
        e
        for e in events
        if e.get("name") == "[memory]" and e.get("args", {}).get("Device Type", 0) == 0
    ]
    if not allocations:
        return 0
    # the profiler's "Total Allocated" is a running total that still holds what was allocated
    # under an earlier profile and freed after it (a previous measurement's optimizer states):
    # the peak is taken above the total before the first event, as CUDA's is above
    # ``memory_allocated()``
    first = min(allocations, key=lambda e: e.get("ts", 0))["args"]
    base = first["Total Allocated"] - first["Bytes"]
    allocations = [e["args"] for e in allocations]
    return max(a["Total Allocated"] for a in allocations) - base
