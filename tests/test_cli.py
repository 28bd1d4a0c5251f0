"""The `galore` command line: every command is listed, and building the parsers (what
`galore --help` and `galore CMD --help` do) imports neither torch nor transformers."""

from __future__ import annotations

import subprocess
import sys

from galorekit.cli import COMMANDS, build_parser


def test_every_command_is_listed_in_help():
    text = build_parser().format_help()
    for name in COMMANDS:
        assert name in text


def test_building_every_parser_imports_no_torch():
    code = (
        "import sys, galorekit.cli as c; c.build_parser(); "
        "heavy = [m for m in ('torch', 'transformers') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
