"""``galore bench``'s command line: the parser (torch-free: ``galore --help`` builds it) and
``run``, which loads the benchmark only when it runs."""

from __future__ import annotations

import argparse
import sys

from galorekit.atomic import atomic_write_text, output_file_error, write_json_output
from galorekit.bench.config import FLAGS, BenchConfig, build_config
from galorekit.bench.report import format_markdown
from galorekit.config import add_config_option, add_flags, add_renamed, requested
from galorekit.extras import report_missing_extra

#: the old spellings, refused with a pointer to the new one
RENAMED = {"--T": "use --update-proj-gap"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``galore bench``'s flags to ``parser``: the settings generated from ``BenchConfig``
    (defaults and help text there), ``--config``, and the outputs ``--json`` and ``--md``."""
    add_flags(parser, FLAGS, {})
    add_config_option(parser, example="update_proj_gap = 50")
    parser.add_argument(
        "--json",
        nargs="?",
        const="-",
        default=None,
        metavar="PATH",
        help="write the result as JSON to PATH (to stdout without one, or with -)",
    )
    parser.add_argument("--md", metavar="FILE", default=None, help="write a markdown report")
    add_renamed(parser, RENAMED)


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """The ``BenchConfig`` of the flags over a ``--config`` file over the defaults, checked
    (``ValueError``, ``ConfigFileError`` with the message to show)."""
    return build_config(requested(args, FLAGS))


def run(args: argparse.Namespace) -> int:
    """Run ``galore bench``; returns the exit status (0 ok, 2 bad input, too big, or a missing
    extra)."""
    return report_missing_extra("bench", lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    try:
        cfg = config_from_args(args)
        for flag, target in (("--json", args.json), ("--md", args.md)):
            if (problem := output_file_error(target, flag)) is not None:
                raise ValueError(problem)  # before the timing runs, not after
    except ValueError as err:
        print(f"galore bench: error: {err}", file=sys.stderr)
        return 2
    # torch loads here, not when ``galore --help`` builds the parser
    from galorekit.bench.benchmark import run_benchmark
    from galorekit.bench.timing import reference_available
    from galorekit.memory.measure import InsufficientMemoryError

    if cfg.reference and not reference_available():
        print("galore bench: galore-torch is not installed; timing without it", file=sys.stderr)

    try:
        result = run_benchmark(cfg, progress=lambda msg: print(f"[bench] {msg}", file=sys.stderr))
    except InsufficientMemoryError as err:
        print(f"galore bench: {err}", file=sys.stderr)
        return 2
    command = getattr(args, "command_line", None) or "galore " + " ".join(sys.argv[1:])
    if args.json != "-":  # JSON on stdout replaces the table there
        print(format_markdown(result, command))
    if args.json:
        write_json_output(args.json, result)
    if args.md:
        atomic_write_text(args.md, format_markdown(result, command) + "\n")
    return 0
