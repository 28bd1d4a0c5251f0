"""On-disk cache helpers: atomic writes, content keys and memory-mapped token arrays.

Every cache entry is published with ``os.replace`` only once it is complete, so a crash or a
concurrent builder (e.g. several ranks) never leaves a half-written file under its final name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

# Bump when the layout of cached token files changes.
TOKENS_FORMAT_VERSION = 1


def content_key(*parts: Any) -> str:
    """A short stable hex key for JSON-serialisable ``parts``."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` atomically."""
    atomic_write_bytes(path, json.dumps(obj, indent=1, sort_keys=True).encode())


@contextlib.contextmanager
def atomic_directory(path: Path) -> Iterator[Path]:
    """Yield a temporary directory that is renamed to ``path`` when the block succeeds.

    If another process published ``path`` first, its copy is kept and ours discarded (both
    were built from the same key, so they are equivalent).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        try:
            os.replace(tmp, path)
        except OSError:
            if not path.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


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
    atomic_write_json(_meta_path(path), meta)


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
