"""Relaunch a ``galore`` command through torchrun (``python -m torch.distributed.run``) on this
machine: checks that the machine has room for the processes, rebuilds the command line from the
parsed flags, and forwards SIGTERM/SIGINT to the job so that its ranks checkpoint and stop.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from galorekit.distributed.context import inside_torchrun


def cpu_slots() -> int:
    """CPU cores this process may run on (the affinity mask, not the machine's total)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def check_nproc(nproc: int, device_type: str) -> None:
    """Refuse a process count this machine cannot hold: more processes than GPUs (CUDA: one GPU
    per process, NCCL refuses two ranks on one GPU) or than CPU cores (CPU)."""
    if not isinstance(nproc, int) or nproc < 1:
        raise ValueError(f"--nproc-per-node must be an integer ≥ 1, got {nproc!r}")
    if device_type == "cuda":
        import torch

        gpus = torch.cuda.device_count()
        if nproc > gpus:
            raise ValueError(
                f"--nproc-per-node {nproc} exceeds the {gpus} visible CUDA device(s): NCCL needs one "
                f"GPU per process; use --nproc-per-node ≤ {gpus} (or --device cpu for gloo on CPU)"
            )
    else:
        cores = cpu_slots()
        if nproc > cores:
            raise ValueError(
                f"--nproc-per-node {nproc} exceeds the {cores} CPU core(s) available to this "
                f"process; on CPU each rank needs a core of its own: use --nproc-per-node ≤ {cores}"
            )


def namespace_to_argv(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    """The flags that reproduce ``args`` with ``parser`` (those left at their default are
    omitted), so that the relaunched processes parse exactly the same configuration."""
    argv: list[str] = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction) or not action.option_strings:
            continue
        if not hasattr(args, action.dest):
            continue
        value = getattr(args, action.dest)
        if value == action.default:
            continue
        flag = next(
            (s for s in action.option_strings if s.startswith("--")), action.option_strings[0]
        )
        is_switch = isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction)
        if is_switch or (action.nargs == "?" and value == action.const):
            argv.append(flag)
        elif isinstance(value, list | tuple):
            argv += [flag, *map(str, value)]
        else:
            argv += [flag, str(value)]
    return argv


def torchrun_command(nproc: int, module_argv: Sequence[str]) -> list[str]:
    """``python -m torch.distributed.run --standalone --nproc-per-node N -m <module_argv>``.

    ``--standalone`` runs the rendezvous on localhost with a free port, so concurrent jobs on one
    machine do not collide."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nnodes",
        "1",
        "--nproc-per-node",
        str(nproc),
        "-m",
        *module_argv,
    ]


def launch(nproc: int, module_argv: Sequence[str], env: dict[str, str] | None = None) -> int:
    """Run ``python -m <module_argv>`` as ``nproc`` torchrun workers and wait; the job's exit code
    (128 + signal when it was stopped by one)."""
    if inside_torchrun():
        raise RuntimeError("already inside a torchrun job: not launching another one")
    child_env = dict(os.environ if env is None else env)
    # torchrun would set 1 and warn; share the cores instead
    child_env.setdefault("OMP_NUM_THREADS", str(max(1, cpu_slots() // nproc)))
    # a session of its own: a terminal's Ctrl-C reaches only this process, which forwards it once
    # (torchrun then stops the workers with SIGTERM; they finish the step and checkpoint)
    proc = subprocess.Popen(
        torchrun_command(nproc, module_argv), env=child_env, start_new_session=True
    )
    previous: dict[int, Any] = {}

    received: list[int] = []

    def forward(signum: int, frame: Any) -> None:
        # torchrun passes it on to the workers, which finish the step and checkpoint
        received.append(signum)
        proc.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(ValueError):  # not the main thread: no forwarding
            previous[sig] = signal.signal(sig, forward)
    try:
        rc = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received and rc != 0:  # torchrun reports a stop by signal as a failure of its own
        return 128 + received[0]
    return 128 - rc if rc < 0 else rc
