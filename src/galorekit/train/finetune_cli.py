"""``galore finetune``: flags (generated from ``FinetuneConfig``) → FinetuneConfig → finetune().

A setting's value comes from, lowest first: ``FinetuneConfig``'s default (``None``: the data
source's preset), a ``--config`` file, the command line. Torch-free: ``galore --help`` imports it.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from galorekit.config import UNSET, add_flags, file_values, given, read_config_file
from galorekit.train.failures import failure
from galorekit.train.finetune_config import (
    FLAGS,
    GROUPS,
    METHODS,
    RENAMED_METHODS,
    FinetuneConfig,
    TrainingError,
    build_config,
    resolve_presets,
)


def _method(value: str) -> str:
    """``--method``'s type: an old name is refused with a pointer to the new one."""
    if value in RENAMED_METHODS:
        new = RENAMED_METHODS[value]
        raise argparse.ArgumentTypeError(f"{value!r} is now {new!r}: use --method {new}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``galore finetune``'s flags to ``parser`` (defaults: ``FinetuneConfig``'s)."""
    groups = add_flags(parser, FLAGS, GROUPS)
    groups["run"].add_argument(
        "--config",
        default=UNSET,
        metavar="FILE",
        help="settings from a .toml, .yaml or .json file (keys: the flags' names, e.g. "
        "lr = 3e-4); flags on the command line win",
    )
    for action in parser._actions:
        if action.dest == "method":
            action.type = _method
    assert set(METHODS).isdisjoint(RENAMED_METHODS)


def resolve_config(args: argparse.Namespace) -> FinetuneConfig:
    """The ``FinetuneConfig`` of the flags over a ``--config`` file (unset fields stay ``None``:
    the data source's preset, filled per method by ``resolve_presets``), checked."""
    values: dict[str, Any] = {}
    config = getattr(args, "config", UNSET)
    if config != UNSET:
        values = file_values(read_config_file(config), FLAGS, f"--config {config}")
    cfg = build_config({**values, **given(args, FLAGS)})
    resolve_presets(cfg)  # refuse bad values now, before anything is loaded
    return cfg


def run(args: argparse.Namespace) -> int:
    """``galore finetune`` entry point: 0 on success, 2 on bad input, 1 if training failed."""
    from galorekit.train.finetune import finetune  # torch, transformers: not at --help time

    try:
        finetune(resolve_config(args))
    except (TrainingError, FloatingPointError) as err:  # diverged: the run failed, not the input
        print(f"galore finetune: error: training failed: {err}", file=sys.stderr)
        return 1
    except Exception as err:  # a full or read-only disk, torch.save's writer: one line, exit 1
        code, message = failure(err)
        if code is None:
            raise
        print(f"galore finetune: error: {message}", file=sys.stderr)
        return code
    return 0
