"""One process per run directory: an exclusive lock held for the run's lifetime.

``RunLock(out)`` takes ``fcntl.flock(LOCK_EX | LOCK_NB)`` on ``out/.galore.lock`` and writes its
PID there. The kernel releases the lock when the process exits in any way (an exception, a
signal, SIGKILL), so a lock file left by a dead process is stale by construction: the next run
takes it over (and says whose it was). A second live process is refused with the holder's PID.
The file itself is never deleted (deleting a lock file while another process waits on it would let
two processes hold "the" lock). Under torchrun rank 0 alone holds it (it alone writes the run
directory). Where ``fcntl`` is missing (Windows) the lock is a no-op.
"""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".galore.lock"


class RunLockedError(RuntimeError):
    """Another live process holds the run directory."""


def _holder(path: Path) -> str:
    with contextlib.suppress(OSError):
        return path.read_text(encoding="utf-8").strip()
    return ""


class RunLock:
    """``with RunLock(out): ...`` — the exclusive lock of the run directory ``out`` (created if
    missing). ``stale`` is the PID line of a dead process whose lock file was taken over."""

    def __init__(self, out: str | os.PathLike[str], command: str = "galore") -> None:
        self.path = Path(out) / LOCK_FILE
        self.command = command
        self.stale = ""
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        if fcntl is None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            holder = _holder(self.path) or "pid unknown"
            raise RunLockedError(
                f"{self.path.parent} is in use by another run ({holder}); wait for it to finish "
                f"or stop it, or choose another --output-dir"
            ) from None
        self.stale = _holder(self.path)
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)  # closing the descriptor releases the flock

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()
