"""``galore memory``: estimate, compare, plot, measure, and fit training memory to a budget.

Examples::

    galore memory --model llama_7b --method galore_adamw8bit --layerwise --rank 1024 \\
        --batch-size 1 --seq-len 256 --precision bf16-true   # breakdown table
    galore memory --model llama_7b --compare --plot fig1.png  # every method, stacked bars
    galore memory --model llama_7b --budget 24GB              # what fits in 24 GB
    galore memory --model llama_20m --method adamw --precision fp32 --measure

This module builds the parser without torch (``galore --help`` imports it); ``run`` loads
``galorekit.memory.commands``, which does the work.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

# torch-free: ``galore --help`` builds this parser
from galorekit.config import (
    Flag,
    add_config_option,
    add_flags,
    add_renamed,
    flags_of,
    option,
    requested,
)
from galorekit.extras import report_missing_extra
from galorekit.memory.names import SetupFields
from galorekit.units import DISPLAY_UNITS


@dataclass(frozen=True)
class RunFields:
    """What ``galore memory`` estimates and measures besides the training setup: one flag and
    one ``--config`` key per field (default and help text here only)."""

    model: str = option(
        "llama_7b",
        "named config (llama_tiny, llama_9m, llama_20m, llama_60m, llama_130m, llama_350m, "
        "llama_1b, llama_3b, llama_7b), a JSON config file, or a Hugging Face config name/path",
        group="model",
    )
    vocab_size: int | None = option(
        None,
        "override the vocabulary (the named configs have 32000; galore pretrain's offline default "
        "trains an 8192-token BPE)",
        group="model",
    )
    measure_steps: int = option(3, "optimizer steps measured", group="measure")
    device: str = option("auto", "measurement device: auto, cpu, cuda, cuda:1", group="measure")
    seed: int = option(0, "seed of the measured run's init and data", group="measure")


_RUN_FLAGS = flags_of(RunFields)
#: the flags generated from ``TrainingSetup``'s fields (``SetupFields``)
SETUP_FLAGS: list[Flag] = flags_of(SetupFields)
_MEASURE_FLAGS = [fl for fl in _RUN_FLAGS if fl.group == "measure"]
#: every configuration flag of ``galore memory``; the modes and outputs are written by hand
FLAGS: list[Flag] = [
    *(fl for fl in _RUN_FLAGS if fl.group == "model"),
    *SETUP_FLAGS,
    *_MEASURE_FLAGS,
]
GROUPS = {"model": "model and method", "step": "training step", "output": "output and modes"}
RENAMED = {"--dtype": "use --precision (bf16 is now bf16-true; bfloat16 is bf16-mixed)"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = (
        "modes: a breakdown table (default), --compare (every method), --budget SIZE (what fits),"
        " --measure (run real steps here and compare).\n"
        "The estimate sums weights, weight gradients, optimizer states (projectors included) and"
        " activations (tensors saved for backward), read from the real model built on the meta"
        " device and from the optimizers' state layout."
    )
    add_renamed(p, RENAMED)
    groups = add_flags(p, [fl for fl in FLAGS if fl.group != "measure"], GROUPS)
    _output_arguments(groups["output"])
    add_config_option(groups["output"], example='precision = "fp32"')
    measurement = p.add_argument_group("measurement")
    _measure_arguments(measurement)
    add_flags(measurement, _MEASURE_FLAGS, {})


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    """``args`` with every configuration flag's value: the command line's, else a ``--config``
    file's, else the default; ``method`` stays None when not asked for (``--budget`` tries every
    method). Raises ``ConfigFileError`` (a ``ValueError``) for a bad config file."""
    values: dict[str, Any] = requested(args, FLAGS)
    for fl in FLAGS:
        setattr(args, fl.name, values.get(fl.name, None if fl.name == "method" else fl.default))
    return args


def _output_arguments(o: argparse._ArgumentGroup) -> None:
    o.add_argument(
        "--json",
        nargs="?",
        const="-",
        default=None,
        metavar="PATH",
        help="write JSON (byte counts) instead of tables: to PATH, or to stdout without one or "
        "with -",
    )
    o.add_argument(
        "--detail",
        action="store_true",
        help="also list the tensors saved by one layer and the head, and the optimizer states "
        "by kind",
    )
    o.add_argument(
        "--compare", action="store_true", help="every method side by side (ordinary and layer-wise)"
    )
    o.add_argument(
        "--plot",
        metavar="FILE.png",
        default=None,
        help="write stacked bars of every method (the --compare set) like the paper's Figure 1",
    )
    o.add_argument(
        "--budget",
        default=None,
        help="fit mode: list the methods, ranks and batch sizes that fit, e.g. 24GB, 24GiB, "
        "24000MB, 24G (a bare G is GiB)",
    )
    o.add_argument(
        "--ranks",
        default=None,
        help="ranks tried in fit mode, comma-separated (default: --rank if given, else "
        "128,256,512,1024 — those below the smallest matrix dimension)",
    )
    o.add_argument(
        "--unit",
        default="auto",
        choices=("auto", *DISPLAY_UNITS),
        help="unit of the tables: GB = 10^9 bytes (the paper's), GiB = 2^30, ...; auto (default): "
        "GB, or MB/KB for small models",
    )


def _measure_arguments(x: argparse._ArgumentGroup) -> None:
    x.add_argument(
        "--measure",
        action="store_true",
        help="also run a few real training steps here and report measured memory beside the "
        "estimate (small models on CPU; refused when the estimate exceeds the free memory)",
    )


def run(args: argparse.Namespace) -> int:
    """Run ``galore memory``; returns the exit status (0 ok, 1 refused measurement, 2 bad input)."""
    # torch and transformers load here, not when ``galore --help`` builds the parser
    from galorekit.memory.commands import run as run_command

    return report_missing_extra("memory", lambda: run_command(args))
