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
from galorekit.train.pretrain_cli import add_run_file_flags, config_or_relaunch
from galorekit.train.sft_config import FLAGS, GROUPS, SFTConfig, build_config

#: keys of config.json that are records of the run, not settings
_RUN_RECORDS = ("run", "world_size")


def add_arguments(p: argparse.ArgumentParser) -> None:
    groups = add_flags(p, FLAGS, GROUPS)
    add_run_file_flags(
        groups["output"],
        resume="(a setting that changes the training is refused)",
        lr_example="1e-4",
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
    from galorekit.train.sft import sft  # torch, transformers: not at --help time
    from galorekit.train.sft_config import default_output_dir

    try:
        cfg, relaunched = config_or_relaunch(
            "sft", args, config_from_args, add_arguments, default_output_dir
        )
        if relaunched is not None:
            return relaunched
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
