"""On-disk cache helpers: content keys and memory-mapped token arrays.

Every cache entry is published atomically (:mod:`galorekit.atomic`) only once it is complete, so
a crash or a concurrent builder (e.g. several ranks) never leaves a half-written file under its
final name.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from galorekit.atomic import atomic_write_bytes, atomic_write_json

# Bump when the layout of cached token files changes.
TOKENS_FORMAT_VERSION = 1


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype that holds token ids below ``vocab_size``."""
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def save_tokens(path: Path, tokens: np.ndarray, meta: dict[str, Any]) -> None:
    """Store a 1-D token array as raw ``path`` + ``path.json`` metadata (written last)."""
    atomic_write_bytes(path, np.ascontiguousarray(tokens).tobytes())
    meta = {
        **meta,
        "format": TOKENS_FORMAT_VERSION,
        "dtype": tokens.dtype.str,
        "num_tokens": len(tokens),
    }
    atomic_write_json(_meta_path(path), meta, indent=1, sort_keys=True)


def load_tokens(path: Path) -> tuple[np.ndarray, dict[str, Any]] | None:
    """Memory-map a token array saved by :func:`save_tokens`; ``None`` if absent or stale."""
    meta_path = _meta_path(path)
    try:
        meta = json.loads(meta_path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if meta.get("format") != TOKENS_FORMAT_VERSION or not path.is_file():
        return None
    dtype = np.dtype(meta["dtype"])
    if path.stat().st_size != meta["num_tokens"] * dtype.itemsize:
        return None  # truncated or foreign file: rebuild rather than read garbage
    if meta["num_tokens"] == 0:
        return np.zeros(0, dtype=dtype), meta
    return np.memmap(path, dtype=dtype, mode="r"), meta


def _meta_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")
