"""The `galore` command line: every command is listed, and building the parsers (what
`galore --help` and `galore CMD --help` do) imports neither torch nor transformers."""

from __future__ import annotations

import subprocess
import sys

import pytest

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


@pytest.mark.parametrize("command", ["pretrain", "finetune", "memory", "bench", "reproduce"])
def test_an_unknown_flag_is_the_commands_one_line_error(command, capsys) -> None:
    from galorekit.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main([command, "--no-such-flag", "1"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err == f"galore {command}: error: unrecognized arguments: --no-such-flag 1\n"
