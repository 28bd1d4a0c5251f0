"""Time one optimizer step: torch AdamW vs galore-torch vs galorekit (see benchmarks/README.md).

    python benchmarks/optimizer_step.py --model 130m --json out.json

Same as ``galore bench``; the logic lives in ``galorekit.bench``.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from galorekit import bench


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="optimizer_step.py", description=__doc__.splitlines()[0])
    bench.add_arguments(parser)
    args = parser.parse_args(argv)
    args.command_line = shlex.join(
        ["python", "benchmarks/optimizer_step.py", *(argv or sys.argv[1:])]
    )
    return bench.run(args)


if __name__ == "__main__":
    raise SystemExit(main())
