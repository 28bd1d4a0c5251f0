"""A run's directory: its name, the refusal to mix two runs in one (pretrain and finetune), the
metrics a resumed run replays."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from galorekit.atomic import atomic_write_text

RUN_FILES = ("metrics.jsonl", "config.json", "checkpoints", "tensorboard", "summary.md")


def run_files(out: Path, markers: tuple[str, ...]) -> list[str]:
    """The run files (``markers``, relative paths) in ``out``; an ``out`` that is a file is
    refused."""
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--output-dir {out} is a file, not a directory")
    return [name for name in markers if (out / name).exists()]


def clear_run(out: Path, names: list[str]) -> None:
    """Remove the run files ``names`` of ``out`` (--overwrite; other files are left alone) and
    make sure ``out`` exists."""
    for name in names:
        path = out / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    out.mkdir(parents=True, exist_ok=True)


def default_output_dir(cfg: Any) -> Path:
    """``runs/pretrain-<model>-<method>-<time>``."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"pretrain-{cfg.model}-{cfg.method.method}-{stamp}"


def check_output_dir(cfg: Any, out: Path) -> list[str]:
    """The run files already in ``out``; raises when they forbid this run (nothing is changed)."""
    existing = run_files(out, RUN_FILES)
    if existing and cfg.resume is None and not cfg.overwrite:
        raise FileExistsError(
            f"{out} already holds a run ({', '.join(existing)}); pass --resume to continue "
            "it, --overwrite to replace it, or another --output-dir"
        )
    if cfg.resume is not None and not existing and cfg.resume == "latest":
        raise FileNotFoundError(f"--resume: {out} holds no run to resume")
    return existing


def prepare_output_dir(cfg: Any) -> Path:
    """The run directory; refuses one that holds a run unless resuming or overwriting."""
    out = default_output_dir(cfg) if cfg.output_dir is None else Path(cfg.output_dir)
    existing = check_output_dir(cfg, out)
    clear_run(out, existing if cfg.resume is None else [])  # removes only with --overwrite
    return out


def truncate_metrics(path: Path, after_step: int) -> None:
    """On resume, drop the events logged after the checkpoint (they will be logged again)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            event = json.loads(line)
            if event.get("step", 0) <= after_step:
                kept.append(line)
    atomic_write_text(path, "".join(f"{line}\n" for line in kept))
