"""``galore pretrain``: flags (generated from ``PretrainConfig``) → PretrainConfig → pretrain().

A setting's value comes from, lowest first: ``PretrainConfig``'s default, the run's saved
``config.json`` (with ``--resume``), a ``--config`` file, the command line.

With ``--nproc-per-node N`` (N > 1) the command checks the configuration, then relaunches itself as
N torchrun workers (``python -m torch.distributed.run --standalone``); ``torchrun --nproc_per_node N
-m galorekit pretrain ...`` runs the same job directly.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from galorekit.config import (
    UNSET,
    ConfigFileError,
    add_flags,
    add_renamed,
    file_values,
    given,
    read_config_file,
)
from galorekit.train.failures import failure
from galorekit.train.pretrain_config import (
    FLAGS,
    GROUPS,
    RENAMED,
    RUN_RECORD_KEYS,
    PretrainConfig,
    build_config,
    saved_values,
)
from galorekit.train.run_dir import check_output_dir, default_output_dir


def add_arguments(p: argparse.ArgumentParser) -> None:
    groups = add_flags(p, FLAGS, GROUPS)
    add_run_file_flags(groups["output"], resume="unless given again", lr_example="0.01")
    add_renamed(p, RENAMED)


def config_from_args(args: argparse.Namespace) -> PretrainConfig:
    """The configuration of the flags, over a ``--config`` file, over (``--resume``) the run's
    saved settings."""
    values: dict[str, Any] = {}
    config = getattr(args, "config", UNSET)
    if config != UNSET:
        # a run's config.json works as a config file: its records of the run are skipped
        where = f"--config {config}"
        values = file_values(read_config_file(config), FLAGS, where, ignore=RUN_RECORD_KEYS)
    explicit = given(args, FLAGS)
    resume = getattr(args, "resume", UNSET)
    if resume != UNSET:
        out = explicit.get("output_dir", values.get("output_dir"))
        if out is None:
            raise ValueError("--resume needs --output-dir: the directory of the run to continue")
        values = {**saved_values(out), **values, "resume": resume}
    return build_config({**values, **explicit})


def add_run_file_flags(group: Any, *, resume: str, lr_example: str) -> None:
    """``--resume [CHECKPOINT]`` and ``--config FILE`` of a training command (pretrain, sft);
    ``resume`` says what happens to settings given again."""
    group.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        default=UNSET,
        metavar="CHECKPOINT",
        help="continue the run in --output-dir from its latest checkpoint (or from CHECKPOINT), "
        f"with the settings of its config.json {resume}",
    )
    group.add_argument(
        "--config",
        default=UNSET,
        metavar="FILE",
        help="settings from a .toml, .yaml or .json file (keys: the flags' names, e.g. lr = "
        f"{lr_example}, or a run's config.json); flags on the command line win",
    )


def config_or_relaunch(
    command: str,
    args: argparse.Namespace,
    config_from_args: Callable[[argparse.Namespace], Any],
    add_arguments: Callable[[argparse.ArgumentParser], None],
    default_output_dir: Callable[[Any], Path],
) -> tuple[Any, int | None]:
    """The configuration of ``args`` and, when ``--nproc-per-node`` > 1 outside torchrun, the
    exit status of the job relaunched through torchrun (None: run it in this process)."""
    from galorekit.distributed.context import env_world_size, inside_torchrun

    nproc = getattr(args, "nproc_per_node", UNSET)
    if inside_torchrun() and nproc not in (UNSET, env_world_size()):
        raise ValueError(
            f"--nproc-per-node {nproc} inside a torchrun job of {env_world_size()} processes: "
            "drop the flag (torchrun decides the process count)"
        )
    if inside_torchrun():
        args.nproc_per_node = UNSET
    cfg = config_from_args(args)
    if cfg.nproc_per_node > 1 and not inside_torchrun():
        return cfg, relaunch(command, args, cfg, add_arguments, default_output_dir)
    return cfg, None


def relaunch(
    command: str,
    args: argparse.Namespace,
    cfg: Any,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    default_output_dir: Callable[[Any], Path],
) -> int:
    """Check everything a worker of ``galore COMMAND`` would refuse, then run the job through
    torchrun (``cfg.nproc_per_node`` processes; ``pretrain`` and ``sft`` share it)."""
    # torch (the launcher, the loop): imported when a job runs, not at --help time
    from galorekit.distributed.launch import check_nproc, launch, namespace_to_argv
    from galorekit.train.loop import resolve_device

    check_nproc(cfg.nproc_per_node, resolve_device(cfg.device).type)
    if args.output_dir == UNSET:  # one name for every rank, and printed here
        args.output_dir = str(default_output_dir(cfg))
    check_output_dir(cfg, Path(args.output_dir))
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    worker_argv = namespace_to_argv(parser, args)
    if "--nproc-per-node" in worker_argv:  # absent when it came from a file or config.json
        i = worker_argv.index("--nproc-per-node")
        del worker_argv[i : i + 2]
    print(
        f"galore {command}: launching {cfg.nproc_per_node} processes through torchrun "
        f"(output: {args.output_dir})",
        file=sys.stderr,
    )
    return launch(cfg.nproc_per_node, ["galorekit", command, *worker_argv])


def run(args: argparse.Namespace) -> int:
    # torch: imported when a job runs, not at --help time
    from galorekit.train.pretrain import RunFinished, pretrain

    try:
        cfg, relaunched = config_or_relaunch(
            "pretrain", args, config_from_args, add_arguments, default_output_dir
        )
        if relaunched is not None:
            return relaunched
        result = pretrain(cfg)
    except RunFinished as done:
        print(f"galore pretrain: {done}", file=sys.stderr)
        return 0
    except Exception as err:
        code, message = failure(err)
        if code is None:
            raise
        print(f"galore pretrain: error: {message}", file=sys.stderr)
        return code
    if not result.summary:  # not rank 0 of a torchrun job: rank 0 reports
        return 0
    print(result.summary)
    where = f"\nmetrics: {result.output_dir / 'metrics.jsonl'}"
    if cfg.plot:  # --no-plot writes none
        where += f"   plot: {result.output_dir / 'curves.png'}"
    print(where)
    return 0


__all__ = ["ConfigFileError", "add_arguments", "config_from_args", "run"]
