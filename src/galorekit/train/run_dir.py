"""A run's directory: its name, the refusal to mix two runs in one (pretrain and finetune), the
metrics a resumed run replays."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from galorekit.atomic import atomic_write_text, present_outputs, replace_outputs
from galorekit.train.checkpoint import (
    META_FILE,
    checkpoint_step,
    find_latest_checkpoint,
    list_checkpoints,
)
from galorekit.train.logging import metrics_lines

RUN_FILES = ("metrics.jsonl", "config.json", "checkpoints", "tensorboard", "wandb", "summary.md")


def default_output_dir(cfg: Any) -> Path:
    """``runs/pretrain-<model>-<method>-<time>``."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    model = Path(str(cfg.model)).name or str(cfg.model)  # a path or hub name: its last part
    return Path("runs") / f"pretrain-{model}-{cfg.method.method}-{stamp}"


def _checkpoint_steps(out: Path) -> list[int]:
    found = list_checkpoints(out / "checkpoints")
    return [c.step for c in found if c.step is not None and checkpoint_step(c.path) is not None]


def check_output_dir(cfg: Any, out: Path) -> list[str]:
    """The run files already in ``out``; raises when they forbid this run (nothing is changed).

    A new run in a directory holding one and ``--resume`` of a directory without a checkpoint get
    the same account of what is there and the same advice."""
    existing = present_outputs(out, RUN_FILES)
    steps = _checkpoint_steps(out) if existing else []
    if existing and cfg.resume is None and not cfg.overwrite:
        if steps:
            raise FileExistsError(
                f"{out} already holds a run (checkpoints up to step {max(steps)}); pass --resume "
                "to continue it, --overwrite to replace it, or another --output-dir"
            )
        raise FileExistsError(
            f"{out} already holds a run that wrote no checkpoint (it stopped before its first "
            "save); pass --overwrite to start it again, or another --output-dir"
        )
    if cfg.resume == "latest" and not steps:
        what = "a run that wrote no checkpoint" if existing else "no run"
        hint = (
            "pass --overwrite instead of --resume to start it again"
            if existing
            else "start a new run without --resume"
        )
        raise FileNotFoundError(f"--resume: {out} holds {what} to resume; {hint}")
    return existing


def clean_leftovers(out: Path) -> list[str]:
    """Remove what a crash leaves behind (temporaries of atomic writes, checkpoints moved aside
    and never deleted, checkpoint directories without meta.json); return their names. Only under
    the run's lock: the temporaries of a live writer are never touched."""
    removed: list[str] = []
    ckpts = out / "checkpoints"
    if ckpts.is_dir():
        find_latest_checkpoint(ckpts)  # first restores a checkpoint whose swap was interrupted
        for child in sorted(ckpts.iterdir()):
            hidden = child.name.startswith(".") and (".tmp-" in child.name or ".old-" in child.name)
            incomplete = (
                child.name.startswith("step-")
                and child.is_dir()
                and not (child / META_FILE).is_file()
            )
            if hidden or incomplete:
                _remove(child)
                removed.append(f"checkpoints/{child.name}")
    if out.is_dir():
        for child in sorted(out.iterdir()):  # atomic_write_*: .<name>.<pid>-<hex>.tmp<suffix>
            if child.name.startswith(".") and ".tmp" in child.name and child.is_file():
                _remove(child)
                removed.append(child.name)
    return removed


def _remove(path: Path) -> None:
    shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()


def prepare_output_dir(cfg: Any, lock: Any = None, out: Path | None = None) -> Path:
    """The run directory; refuses one that holds a run unless resuming or overwriting. With
    ``lock`` (a ``RunLock`` factory: ``lock(out)``), takes the run's lock first, then checks
    again under it and removes crash leftovers (saying so). ``out``: the directory, when the
    caller already chose it (default: ``--output-dir`` or a new name from the clock)."""
    if out is None:
        out = default_output_dir(cfg) if cfg.output_dir is None else Path(cfg.output_dir)
    if lock is None or not out.exists():
        check_output_dir(cfg, out)  # before anything is created
    if lock is not None:  # a live holder is named before what its run left so far
        held = lock(out)
        if held.stale:
            print(f"galore: took over the lock of a process that died ({held.stale})")
    existing = check_output_dir(cfg, out)
    removed = clean_leftovers(out)
    if removed:
        print(f"galore: removed what an interrupted run left in {out}: {', '.join(removed)}")
    replace_outputs(out, existing if cfg.resume is None else [])  # removes only with --overwrite
    return out


def truncate_metrics(path: Path, after_step: int) -> None:
    """On resume, drop the events logged after the checkpoint (they will be logged again), a
    line torn by a crash, and an ``end`` event (a finished run trained further ends once)."""
    if not path.exists():
        return
    kept = [
        line
        for line, event in metrics_lines(path)
        if event.get("step", 0) <= after_step and event.get("event") != "end"
    ]
    atomic_write_text(path, "".join(f"{line}\n" for line in kept))


def finished_step(out: Path, max_steps: int) -> int | None:
    """The step a finished run of ``out`` ended at when it trained ``max_steps`` or more and wrote
    its end event and summary (None otherwise: a resume has something to do)."""
    metrics = out / "metrics.jsonl"
    if not metrics.exists() or not (out / "summary.md").exists():
        return None
    steps = _checkpoint_steps(out)
    ends = [e.get("step", 0) for _, e in metrics_lines(metrics) if e.get("event") == "end"]
    if not steps or not ends or max(ends) < max(steps) or max(steps) < max_steps:
        return None
    return max(ends)
