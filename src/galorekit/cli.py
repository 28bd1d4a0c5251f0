"""The ``galore`` command: one sub-command per job, each defined in the module that does the job.

Each module exposes ``add_arguments(parser)`` and ``run(args) -> int`` and imports its heavy
dependencies inside ``run`` so that ``galore --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import NoReturn

from galorekit import __version__

#: name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "pretrain": (
        "galorekit.train.pretrain_cli",
        "pre-train a LLaMA with GaLore or a baseline (offline default: a small model on KJV text)",
    ),
    "finetune": (
        "galorekit.train.finetune_cli",
        "fine-tune a pretrained encoder on GLUE or your own classification data",
    ),
    "sft": (
        "galorekit.train.sft_cli",
        "fine-tune a pretrained causal LM on instructions (offline default: SmolLM2-135M-Instruct "
        "on movie-review sentiment as chat)",
    ),
    "memory": (
        "galorekit.memory.cli",
        "estimate (or measure) training memory per method; which configurations fit a budget",
    ),
    "bench": (
        "galorekit.bench",
        "time one optimizer step (steady, refresh, amortized) against AdamW and galore-torch",
    ),
    "reproduce": (
        "galorekit.reproduce.cli",
        "reproduce the paper's Table 2, Fig. 5 ablations and low-rank-gradient theory at laptop "
        "scale",
    ),
}


class Parser(argparse.ArgumentParser):
    """Bad input is one line, ``galore <cmd>: error: …``, and exit 2 (``--help`` shows usage)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="galore",
        description="GaLore — memory-efficient full-parameter training by gradient low-rank "
        "projection (Zhao et al., 2024).",
    )
    parser.add_argument("--version", action="version", version=f"galorekit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for name, (module, help_text) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        importlib.import_module(module).add_arguments(command)
        command.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # argparse would report them as "galore: error:", not the command's
        command = f"{parser.prog} {args.command}" if args.command else parser.prog
        parser.exit(2, f"{command}: error: unrecognized arguments: {' '.join(unknown)}\n")
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
