"""``--device`` of every command that trains or measures: one resolver, one set of messages."""

from __future__ import annotations

import torch

from galorekit.config import DEVICE_HELP


def resolve_device(name: str) -> torch.device:
    """``--device``: ``auto`` (CUDA if available, else the CPU), ``cpu``, ``cuda``, ``cuda:N``,
    ``mps``; a device that does not exist here is a one-line ``ValueError`` saying what is."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown --device {name!r}; valid: {DEVICE_HELP}") from None
    if device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"--device {name!r} is not supported; valid: {DEVICE_HELP}")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"--device {name}: no CUDA device is available here; use --device cpu")
        if device.index is not None and device.index >= count:
            raise ValueError(
                f"--device {name}: this machine has {count} CUDA device(s), cuda:0 to "
                f"cuda:{count - 1}"
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(
            f"--device {name}: MPS (Apple GPU) is not available here; use --device cpu"
        )
    if device.type == "cpu" and device.index not in (None, 0):
        raise ValueError(f"--device {name}: the CPU has no index; use --device cpu")
    return device
