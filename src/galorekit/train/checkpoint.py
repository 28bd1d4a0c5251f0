"""Atomic training checkpoints: save, load (``weights_only``), discover the latest, keep the last N.

A checkpoint is a directory ``<root>/step-00001000/`` holding ``state.pt`` (one ``torch.save`` of a
dict of tensors and plain Python values) and ``meta.json`` (format, step, size and SHA-256 of
``state.pt``). Directories are built under a hidden temporary name in the same parent, fsynced and
renamed into place, so a crash never leaves a half-written checkpoint under a real name, and an
existing checkpoint is only moved aside once its replacement is complete.

``atomic_directory`` is the same mechanism for anything written as a directory (for example a
``save_pretrained`` model).
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import re
import shutil
import uuid
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from galorekit.atomic import fsync_path, fsync_tree

if TYPE_CHECKING:  # imported where used: the atomic-file helpers must not cost a torch import
    import torch
    from torch import nn

FORMAT = "galorekit-checkpoint"
FORMAT_VERSION = 1
STATE_FILE = "state.pt"
META_FILE = "meta.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")
_OLD_MARK = ".old-"
_TMP_MARK = ".tmp-"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete, corrupt or does not match what the caller expects."""


@dataclass(frozen=True)
class CheckpointInfo:
    """A complete checkpoint found on disk."""

    path: Path
    step: int | None
    meta: dict[str, Any]


def checkpoint_name(step: int) -> str:
    """The directory name of the checkpoint for ``step`` (sortable: ``step-00001000``)."""
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    return f"step-{step:08d}"


def checkpoint_step(path: str | os.PathLike[str]) -> int | None:
    """The step of a ``step-<n>`` checkpoint directory's name (None for any other name)."""
    m = _STEP_DIR.match(Path(path).name)
    return int(m.group(1)) if m else None


# --------------------------------------------------------------------------- atomic directories


def _temp_sibling(final: Path) -> Path:
    # Hidden, unique, and in the same directory so that os.replace is a rename, not a copy.
    return final.parent / f".{final.name}{_TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _recover(path: Path) -> None:
    """Undo an interrupted swap: ``path`` missing but its moved-aside previous version present."""
    if path.exists():
        return
    olds = sorted(path.parent.glob(f".{path.name}{_OLD_MARK}*")) if path.parent.is_dir() else []
    if olds:
        os.replace(olds[-1], path)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temporary directory next to ``path``; on success it becomes ``path``.

    The temporary directory is fsynced and renamed to ``path``. A previous ``path`` is renamed
    aside only after that, then deleted; if the process dies in between, the next
    ``atomic_directory``/``load_checkpoint`` on that path restores it. On an exception the
    temporary directory is removed and ``path`` is left untouched.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    _recover(final)
    tmp = _temp_sibling(final)
    tmp.mkdir()  # unlike mkdtemp this honours the umask: the result is a normal directory
    try:
        yield tmp
        fsync_tree(tmp)
        old: Path | None = None
        if final.exists() or final.is_symlink():
            old = final.parent / f".{final.name}{_OLD_MARK}{uuid.uuid4().hex[:8]}"
            os.replace(final, old)
        os.replace(tmp, final)
        fsync_path(final.parent)
        if old is not None:
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# --------------------------------------------------------------------------- save


def _check_loadable(obj: Any, where: str) -> None:
    """Refuse at save time what ``torch.load(weights_only=True)`` would refuse at resume time."""
    import torch

    safe = (
        torch.Tensor,
        torch.dtype,
        torch.device,
        torch.Size,
        str,
        bytes,
        int,
        float,
        bool,
        complex,
    )
    if obj is None or isinstance(obj, safe):
        return
    if isinstance(obj, dict | OrderedDict):
        for key, value in obj.items():
            if not isinstance(key, str | int | float | bool | type(None)):
                raise TypeError(f"checkpoint key {where}[{key!r}] is a {type(key).__name__}")
            _check_loadable(value, f"{where}[{key!r}]")
        return
    if isinstance(obj, list | tuple):
        for i, value in enumerate(obj):
            _check_loadable(value, f"{where}[{i}]")
        return
    raise TypeError(
        f"checkpoint value {where} is a {type(obj).__module__}.{type(obj).__qualname__}, which "
        "torch.load(weights_only=True) cannot restore; store tensors, numbers, strings, "
        "None and dicts/lists/tuples of them (e.g. a state_dict(), not the object)"
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_checkpoint(
    path_dir: str | os.PathLike[str],
    state: Mapping[str, Any],
    *,
    keep_last: int | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Atomically write ``state`` as the checkpoint directory ``path_dir``; return its path.

    ``state`` must be loadable with ``torch.load(weights_only=True)`` (tensors, numbers, strings,
    containers of them; checked before anything is written). An integer ``state["step"]`` is
    recorded in ``meta.json`` for discovery; ``metadata`` (JSON-serialisable) is stored there too.
    ``keep_last=N`` then deletes all but the N highest-step ``step-*`` siblings (other names, e.g.
    ``best``, are never deleted).
    """
    if not isinstance(state, Mapping):
        raise TypeError(f"state must be a dict, got {type(state).__name__}")
    if keep_last is not None and keep_last < 1:
        raise ValueError(f"keep_last must be >= 1 or None, got {keep_last}")

    _check_loadable(dict(state), "state")
    final = Path(path_dir)
    with atomic_directory(final) as tmp:
        write_state_files(tmp, state, metadata)
    if keep_last is not None:
        prune_checkpoints(final.parent, keep_last=keep_last, protect=(final,))
    return final


def write_state_files(
    directory: Path,
    state: Mapping[str, Any],
    metadata: Mapping[str, Any] | None = None,
    extra_files: Sequence[str] = (),
) -> None:
    """Write ``state.pt`` and ``meta.json`` into ``directory`` (the temporary directory of an
    atomic checkpoint). ``meta.json`` records the size and SHA-256 of ``state.pt`` and of the
    ``extra_files`` already written there (e.g. the shards of a sharded checkpoint)."""
    import torch

    step = state.get("step")
    step = int(step) if isinstance(step, int) and not isinstance(step, bool) else None
    state_path = directory / STATE_FILE
    torch.save(dict(state), state_path)
    files = {
        name: {"bytes": (directory / name).stat().st_size, "sha256": _sha256(directory / name)}
        for name in (STATE_FILE, *extra_files)
    }
    meta = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "step": step,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "torch": torch.__version__,
        "keys": sorted(str(k) for k in state),
        "files": files,
        "metadata": dict(metadata or {}),
    }
    (directory / META_FILE).write_text(json.dumps(meta, indent=2, default=str), encoding="utf-8")


def verify_file(checkpoint: Path, name: str) -> Path:
    """``checkpoint/name`` after checking its size and SHA-256 against ``meta.json``."""
    path = checkpoint / name
    meta = _read_meta(checkpoint) or {}
    expected = meta.get("files", {}).get(name)
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: the checkpoint is incomplete")
    if expected is None:
        raise CheckpointError(f"{checkpoint / META_FILE} does not list {name}")
    size = path.stat().st_size
    if size != expected["bytes"]:
        raise CheckpointError(f"{path} is corrupt: {size} bytes, {expected['bytes']} were written")
    if _sha256(path) != expected["sha256"]:
        raise CheckpointError(f"{path} is corrupt: its SHA-256 does not match {META_FILE}")
    return path


def read_meta(checkpoint: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``meta.json`` of a checkpoint directory (``CheckpointError`` when missing/invalid)."""
    meta = _read_meta(Path(checkpoint))
    if meta is None:
        raise CheckpointError(f"{Path(checkpoint) / META_FILE} is missing or not a {FORMAT} file")
    return meta


def resolve_checkpoint(path: str | os.PathLike[str]) -> Path:
    """The checkpoint directory ``path`` names: itself, the directory of its ``state.pt``, or the
    latest ``step-*`` checkpoint under it."""
    p = Path(path)
    if p.is_file() and p.name == STATE_FILE:
        p = p.parent
    _recover(p)
    if not p.exists():
        raise CheckpointError(f"checkpoint {p} does not exist")
    if p.is_file():
        raise CheckpointError(
            f"{p} is a file, not a galorekit checkpoint directory (expected a directory holding "
            f"{STATE_FILE} and {META_FILE}, or {STATE_FILE} itself)"
        )
    if not (p / META_FILE).exists() and not (p / STATE_FILE).exists():
        latest = find_latest_checkpoint(p)
        if latest is None:
            raise CheckpointError(
                f"{p} is neither a checkpoint (no {STATE_FILE}/{META_FILE}) nor a directory of "
                "step-* checkpoints"
            )
        p = latest
    return p


# --------------------------------------------------------------------------- discovery


def _read_meta(path: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        return None
    return meta


def list_checkpoints(root: str | os.PathLike[str]) -> list[CheckpointInfo]:
    """The complete checkpoints directly under ``root``, oldest (lowest step) first.

    Hidden temporaries and directories without a valid ``meta.json`` + ``state.pt`` are ignored.
    Checkpoints without a step sort first, by name.
    """
    root = Path(root)
    if not root.is_dir():
        return []
    found: list[CheckpointInfo] = []
    for child in root.iterdir():
        if child.name.startswith(".") or not child.is_dir():
            continue
        meta = _read_meta(child)
        if meta is None or not (child / STATE_FILE).is_file():
            continue
        step = meta.get("step")
        if step is None:
            m = _STEP_DIR.match(child.name)
            step = int(m.group(1)) if m else None
        found.append(CheckpointInfo(child, step, meta))
    found.sort(key=lambda c: (c.step is not None, c.step or 0, c.path.name))
    return found


def find_latest_checkpoint(root: str | os.PathLike[str]) -> Path | None:
    """The highest-step complete ``step-*`` checkpoint under ``root`` (None when there is none)."""
    root = Path(root)
    if root.is_dir():
        for child in root.iterdir():  # finish a swap that a crash interrupted
            if child.name.startswith(".") and _OLD_MARK in child.name:
                _recover(root / child.name[1 : child.name.index(_OLD_MARK)])
    steps = [c for c in list_checkpoints(root) if _STEP_DIR.match(c.path.name)]
    return steps[-1].path if steps else None


def prune_checkpoints(
    root: str | os.PathLike[str], *, keep_last: int, protect: Sequence[str | os.PathLike[str]] = ()
) -> list[Path]:
    """Delete all but the ``keep_last`` highest-step ``step-*`` checkpoints under ``root``.

    Only directories named ``step-<n>`` with a valid ``meta.json`` are candidates; ``protect``
    paths are kept regardless. Returns the deleted paths.
    """
    if keep_last < 1:
        raise ValueError(f"keep_last must be >= 1, got {keep_last}")
    keep = {Path(p).resolve() for p in protect}
    steps = [c for c in list_checkpoints(root) if _STEP_DIR.match(c.path.name)]
    deleted: list[Path] = []
    for info in steps[: max(0, len(steps) - keep_last)]:
        if info.path.resolve() in keep:
            continue
        shutil.rmtree(info.path)
        deleted.append(info.path)
    return deleted


# --------------------------------------------------------------------------- load


def load_checkpoint(
    path: str | os.PathLike[str],
    map_location: str | torch.device | None = "cpu",
    *,
    required_keys: Sequence[str] = (),
    verify: bool = True,
) -> dict[str, Any]:
    """Load a checkpoint saved by ``save_checkpoint`` with ``torch.load(weights_only=True)``.

    ``path`` is a checkpoint directory, its ``state.pt``, or a root holding ``step-*``
    checkpoints (the latest is loaded). ``verify`` checks the size and SHA-256 recorded at save
    time. ``required_keys`` must all be present. Raises ``CheckpointError`` naming the problem.
    """
    import torch

    p = resolve_checkpoint(path)
    meta = _read_meta(p)
    if meta is None:
        raise CheckpointError(
            f"{p / META_FILE} is missing, unreadable or not a {FORMAT} file: {p} is incomplete "
            "or was not written by galorekit.train.checkpoint.save_checkpoint"
        )
    if int(meta.get("version", 0)) > FORMAT_VERSION:
        raise CheckpointError(
            f"{p} uses checkpoint format version {meta.get('version')}, newer than this galorekit "
            f"supports ({FORMAT_VERSION}); upgrade galorekit"
        )
    state_path = p / STATE_FILE
    if not state_path.is_file():
        raise CheckpointError(f"{state_path} is missing: the checkpoint is incomplete")
    if verify:
        verify_file(p, STATE_FILE)
    try:
        state = torch.load(state_path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise CheckpointError(
            f"cannot load {state_path}: it is corrupt or not a galorekit checkpoint "
            f"({_load_reason(err)})"
        ) from err
    if not isinstance(state, dict):
        raise CheckpointError(f"{state_path} holds a {type(state).__name__}, expected a dict")
    missing = [k for k in required_keys if k not in state]
    if missing:
        raise CheckpointError(
            f"checkpoint {p} lacks {', '.join(map(repr, missing))}; it holds "
            f"{', '.join(map(repr, sorted(map(str, state))))}"
        )
    return state


def _load_reason(err: BaseException) -> str:
    """torch.load's reason, without its advice to retry with ``weights_only=False`` (which would
    run whatever code the file holds, and cannot repair a corrupt file anyway)."""
    text = " ".join(str(err).split())
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
        text = text.split("Check the documentation", 1)[0]
        return f"unpickling: {text.strip() or type(err).__name__}"
    return text.split(". ")[0] if "weights_only" in text else text or type(err).__name__


def check_identity(
    where: Path, ckpt: dict[str, Any], identity: dict[str, Any], keys: Sequence[str]
) -> None:
    """Refuse a checkpoint of another run: the ``keys`` of its ``identity`` must equal ours."""
    saved = ckpt.get("identity", {})
    mismatched = [
        f"{k}: checkpoint {saved.get(k)!r} vs now {identity[k]!r}"
        for k in keys
        if saved.get(k) != identity[k]
    ]
    if mismatched:
        raise CheckpointError(
            f"checkpoint {where} belongs to another run: " + "; ".join(mismatched)
        )


def load_module_state(
    module: nn.Module, state_dict: Mapping[str, torch.Tensor], *, what: str
) -> None:
    """``module.load_state_dict(strict=True)`` with one clear error listing every mismatch."""
    import torch

    own = module.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [
        f"{k}: checkpoint {tuple(v.shape)} vs {what} {tuple(own[k].shape)}"
        for k, v in state_dict.items()
        if k in own and isinstance(v, torch.Tensor) and v.shape != own[k].shape
    ]
    if missing or unexpected or shapes:

        def head(items: list[str]) -> str:
            return ", ".join(items[:5]) + (f" … (+{len(items) - 5})" if len(items) > 5 else "")

        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s): {head(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} key(s): {head(unexpected)}")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatch(es): {head(shapes)}")
        raise CheckpointError(f"checkpoint does not match the {what}: " + "; ".join(parts))
    module.load_state_dict(state_dict, strict=True)
