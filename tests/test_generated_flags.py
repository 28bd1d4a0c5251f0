"""``galore bench`` and ``galore memory`` flags generated from their configuration dataclasses:
help on every flag, each default printed once, ``--config`` files refused with one line naming
the closest setting."""

from __future__ import annotations

import argparse

import pytest

from galorekit.cli import build_parser, main


def _command(name: str) -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


@pytest.mark.parametrize("command", ["bench", "memory"])
def test_every_flag_has_help_and_one_default(command):
    cmd = _command(command)
    for action in cmd._actions:
        if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
            continue
        assert action.help and action.help.strip(), action.option_strings
        assert action.help.count("default") <= 1, (action.option_strings, action.help)
    text = cmd.format_help()
    assert "UNSET" not in text and "(default: None)" not in text and "--config FILE" in text


@pytest.mark.parametrize(
    ("command", "text", "line"),
    [
        ("bench", "update_proj_gp = 7", "'update_proj_gp' (did you mean update_proj_gap?)"),
        ("memory", 'precison = "fp32"', "'precison' (did you mean precision?)"),
    ],
)
def test_an_unknown_key_in_a_config_file_is_one_line_with_a_pointer(
    command, text, line, tmp_path, capsys
):
    path = tmp_path / "run.toml"
    path.write_text(text + "\n")
    assert main([command, "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"galore {command}: error: --config {path}: unknown setting {line}"]


@pytest.mark.parametrize(
    ("command", "text", "message"),
    [("bench", 'steady_steps = "four"', "steady_steps must be int"),
     ("memory", "seq-len = 1.5", "seq_len must be int")],
)  # fmt: skip
def test_a_wrong_type_in_a_config_file_is_refused(command, text, message, tmp_path, capsys):
    path = tmp_path / "run.toml"
    path.write_text(text + "\n")
    assert main([command, "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"galore {command}: error: --config") and message in err
