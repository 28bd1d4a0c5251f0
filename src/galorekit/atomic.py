"""Atomic writes: a reader (or a run resumed after a crash) sees the old file or the complete new
one under the final name, never a half-written one.

Every writer here goes through a hidden temporary sibling of the target (same directory, so the
final ``os.replace`` is a rename, not a copy), fsyncs it, renames it over the target and fsyncs
the directory. The temporary is created the way ``open(path, "w")`` creates a file, so the result
has the ordinary umask-derived mode (0644 files and 0755 directories under umask 022), not the
0600/0700 of ``tempfile.mkstemp``/``mkdtemp``.

>>> atomic_write_json("out/result.json", {"loss": 2.5})                  # doctest: +SKIP
>>> with atomic_path("out/curves.png") as tmp:                           # doctest: +SKIP
...     fig.savefig(tmp)              # any writer that wants a path: savefig, torch.save, ...
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "fsync_path",
    "fsync_tree",
    "present_outputs",
    "publish_directory",
    "replace_outputs",
    "temp_sibling",
    "write_json_output",
]

PathLike = str | os.PathLike[str]


def temp_sibling(path: PathLike) -> Path:
    """A fresh hidden name next to ``path`` that keeps its suffix (``savefig`` reads the format
    from it): ``dir/.curves.png.<pid>-<random>.tmp.png``."""
    final = Path(path)
    token = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    return final.parent / f".{final.name}.{token}.tmp{final.suffix}"


def fsync_path(path: PathLike) -> None:
    """Flush ``path`` — a file, or a directory so that renames in it survive a power loss — to
    disk. A file that cannot be synced raises (its data would not be durable); a directory that
    cannot be opened or synced (Windows) is skipped: only the rename's durability is lost."""
    target = Path(path)
    is_dir = target.is_dir()
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if is_dir else 0)
    try:
        fd = os.open(target, flags)
    except OSError:
        if is_dir:
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not is_dir:
            raise
    finally:
        os.close(fd)


def fsync_tree(root: PathLike) -> None:
    """:func:`fsync_path` on every file and directory below ``root`` (``root`` included)."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            fsync_path(Path(dirpath) / name)
        fsync_path(dirpath)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` for a writer that wants a file name; when the
    block succeeds the file written there becomes ``path``, when it raises the temporary is
    removed and ``path`` is left as it was.

    The writer creates the file itself (``fig.savefig(tmp)``, ``torch.save(obj, tmp)``), so it
    gets the mode any ``open()`` would give it. Raises ``FileNotFoundError`` when the block
    wrote nothing there.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(final)
    try:
        yield tmp
        if not tmp.is_file():
            raise FileNotFoundError(f"nothing was written to {tmp} (the temporary of {final})")
        fsync_path(tmp)
        os.replace(tmp, final)
    except BaseException:
        _remove(tmp)
        raise
    fsync_path(final.parent)


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see the module docstring)."""
    with atomic_path(path) as tmp, open(tmp, "xb") as f:
        f.write(data)


def atomic_write_text(path: PathLike, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically; no newline translation (``"\\n"`` stays ``"\\n"``)."""
    atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(
    path: PathLike, obj: Any, *, indent: int | None = 2, sort_keys: bool = False, **kwargs: Any
) -> None:
    """Write ``obj`` as JSON (``json.dumps(obj, indent=..., sort_keys=..., **kwargs)`` and a final
    newline) to ``path`` atomically."""
    text = json.dumps(obj, indent=indent, sort_keys=sort_keys, **kwargs)
    atomic_write_text(path, text + "\n")


def present_outputs(out: PathLike, names: Iterable[str], *, empty_dirs: bool = True) -> list[str]:
    """Which of a command's output ``names`` already exist in ``out`` (the check before a run
    writes there); ``empty_dirs=False`` ignores empty directories (they hold nothing to protect).
    Raises ``NotADirectoryError`` when ``out`` is a file."""
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{folder} is a file, not a directory")

    def holds(path: Path) -> bool:
        if not path.exists():
            return False
        return empty_dirs or not path.is_dir() or any(path.iterdir())

    return [name for name in names if holds(folder / name)]


def replace_outputs(out: PathLike, names: Iterable[str]) -> Path:
    """Remove the outputs ``names`` from ``out`` (an overwritten run's; other files stay) and
    create ``out``; returns it."""
    folder = Path(out)
    for name in names:
        path = folder / name
        # unlike _remove (a temporary's clean-up), a failure here must stop the run
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink(True)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def output_file_error(target: str | PathLike | None, flag: str) -> str | None:
    """Why the file ``target`` that a command writes at its end cannot be written — a directory,
    a parent that is a file, or a parent not writable — checked before the command works; None
    when it can (also for ``-``, stdout, and for no target)."""
    if not isinstance(target, str | os.PathLike) or str(target) in ("", "-"):
        return None
    path = Path(target)
    if path.is_dir():
        return f"{flag} {target} is a directory: give a file name"
    parent = next((p for p in path.absolute().parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        return f"{flag} {target}: {parent} is a file, not a directory"
    if parent is not None and not os.access(parent, os.W_OK | os.X_OK):
        return f"{flag} {target}: {parent} is not writable"
    return None


def write_json_output(target: str | PathLike, obj: Any) -> None:
    """The ``--json PATH`` of every command: ``obj`` as JSON on stdout for ``-``, else written
    atomically to ``PATH`` (indented)."""
    if str(target) == "-":
        print(json.dumps(obj), flush=True)
    else:
        atomic_write_json(target, obj)


@contextlib.contextmanager
def publish_directory(path: PathLike) -> Iterator[Path]:
    """Yield an empty temporary directory next to ``path``; when the block succeeds it is renamed
    to ``path`` unless another process published one first; when it raises it is removed.
    (``galorekit.train.checkpoint.atomic_directory`` is the other policy: it *replaces* ``path``.)

    For caches built once under a content key: if another process published a complete
    ``path`` first, that copy is kept and ours is discarded (both were built from the same key).
    The directory gets the umask-derived mode of ``mkdir`` (0755 under umask 022).
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(final)
    tmp.mkdir()
    try:
        yield tmp
        fsync_tree(tmp)
        try:
            os.replace(tmp, final)
        except OSError:
            if not final.is_dir():
                raise
        else:
            fsync_path(final.parent)
    finally:
        _remove(tmp)
