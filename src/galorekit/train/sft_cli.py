"""``galore sft``: flags (generated from ``SFTConfig``) → SFTConfig → sft().

A setting's value comes from, lowest first: ``SFTConfig``'s default, the run's saved
``config.json`` (with ``--resume``), a ``--config`` file, the command line. Torch-free:
``galore --help`` imports it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from galorekit.config import UNSET, add_flags, differences, file_values, given, read_config_file
from galorekit.train.failures import failure
from galorekit.train.sft_config import FLAGS, GROUPS, SFTConfig, build_config

#: keys of config.json that are records of the run, not settings
_RUN_RECORDS = ("run", "world_size")


def add_arguments(p: argparse.ArgumentParser) -> None:
    groups = add_flags(p, FLAGS, GROUPS)
    groups["output"].add_argument(
        "--resume",
        nargs="?",
        const="latest",
        default=UNSET,
        metavar="CHECKPOINT",
        help="continue the run in --output-dir from its latest checkpoint (or from CHECKPOINT), "
        "with the settings of its config.json (a setting that changes the training is refused)",
    )
    groups["output"].add_argument(
        "--config",
        default=UNSET,
        metavar="FILE",
        help="settings from a .toml, .yaml or .json file (keys: the flags' names, e.g. lr = 1e-4, "
        "or a run's config.json); flags on the command line win",
    )


def _saved(out: str) -> dict[str, Any]:
    path = Path(out) / "config.json"
    if not path.exists():
        return {}
    values = file_values(read_config_file(path), FLAGS, str(path), ignore=_RUN_RECORDS)
    return {k: v for k, v in values.items() if k != "overwrite"}


def config_from_args(args: argparse.Namespace) -> SFTConfig:
    """The configuration of the flags over a ``--config`` file over (``--resume``) the run's
    saved settings; on resume a flag that changes the run's trajectory is refused."""
    values: dict[str, Any] = {}
    config = getattr(args, "config", UNSET)
    if config != UNSET:
        values = file_values(
            read_config_file(config), FLAGS, f"--config {config}", ignore=_RUN_RECORDS
        )
    explicit = given(args, FLAGS)
    resume = getattr(args, "resume", UNSET)
    if resume == UNSET:
        return build_config({**values, **explicit})
    out = explicit.get("output_dir", values.get("output_dir"))
    if out is None:
        raise ValueError("--resume needs --output-dir: the directory of the run to continue")
    saved = _saved(out)
    changed = differences(saved, {**saved, **values, **explicit}, FLAGS) if saved else {}
    if changed:
        named = ", ".join(
            f"--{k.replace('_', '-')} ({a!r} → {b!r})" for k, (a, b) in changed.items()
        )
        raise ValueError(
            f"--resume: {named} would change the run's training; resume with its own settings, "
            "or start a new run in another --output-dir"
        )
    return build_config({**saved, **values, **explicit, "resume": resume})


def run(args: argparse.Namespace) -> int:
    from galorekit.distributed.context import env_world_size, inside_torchrun
    from galorekit.train.sft import sft  # torch, transformers: not at --help time

    try:
        nproc = getattr(args, "nproc_per_node", UNSET)
        if inside_torchrun() and nproc not in (UNSET, env_world_size()):
            raise ValueError(
                f"--nproc-per-node {nproc} inside a torchrun job of {env_world_size()} "
                "processes: drop the flag (torchrun decides the process count)"
            )
        if inside_torchrun():
            args.nproc_per_node = UNSET
        cfg = config_from_args(args)
        if cfg.nproc_per_node > 1 and not inside_torchrun():
            from galorekit.train.pretrain_cli import relaunch
            from galorekit.train.sft_config import default_output_dir

            return relaunch("sft", args, cfg, add_arguments, default_output_dir)
        result = sft(cfg)
    except Exception as err:
        code, message = failure(err)
        if code is None:
            raise
        print(f"galore sft: error: {message}", file=sys.stderr)
        return code
    if not result.summary:  # not rank 0 of a torchrun job: rank 0 reports
        return 0
    print(result.summary)
    print(f"\nmetrics: {result.output_dir / 'metrics.jsonl'}")
    return 0
