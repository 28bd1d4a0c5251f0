"""What a training command prints and returns for an exception (torch-free).

Exit codes (README "Failure modes"): **2** bad input — a flag, a file, a directory that holds
another run or is in use, a checkpoint that cannot be resumed; nothing on disk was changed.
**1** a failure during the run — divergence, a full or read-only disk, an I/O error; the run's
last complete checkpoint is intact and ``--resume`` continues from it. Anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import errno

from galorekit.train.checkpoint import CheckpointError
from galorekit.train.run_lock import RunLockedError

#: bad input: refused before the run changed anything
BAD_INPUT = (
    ValueError,
    FileExistsError,
    FileNotFoundError,
    NotADirectoryError,
    IsADirectoryError,
    CheckpointError,
    RunLockedError,
)

_RESUME = "the last complete checkpoint is intact: continue with --resume"

_OS_ERRORS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EIO: "input/output error",
}


def _os_message(err: OSError) -> str:
    what = _OS_ERRORS.get(err.errno or 0, err.strerror or str(err))
    where = f" ({err.filename})" if err.filename else ""
    return f"cannot write the run's files: {what}{where}; {_RESUME} once that is fixed"


def failure(err: BaseException) -> tuple[int | None, str]:
    """``(exit code, one-line message)`` of ``err``; ``(None, "")`` for an unexpected error."""
    if isinstance(err, FloatingPointError):  # NonFiniteError: the run diverged
        return 1, str(err)
    if isinstance(err, OSError) and err.errno in _OS_ERRORS:
        return 1, _os_message(err)
    if isinstance(err, BAD_INPUT):
        return 2, str(err)
    text = str(err)
    if isinstance(err, RuntimeError) and (
        "inline_container" in text or "PytorchStreamWriter" in text or "file write failed" in text
    ):
        # torch.save's C++ writer: a full disk (or quota) shows up as an "enforce fail"
        first = text.strip().splitlines()[0] if text.strip() else type(err).__name__
        return 1, (
            f"writing a checkpoint failed, most likely no space left on device (torch: {first}); "
            f"{_RESUME} once space is freed"
        )
    if isinstance(err, OSError):
        return 1, f"{err}; {_RESUME} once that is fixed"
    return None, ""
