"""The README's fine-tuning journey runs as printed: the fine-tune and export commands (on a tiny
offline model in place of the hub one), then the transformers code that loads the export."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest
import torch

from _sft_fixtures import chat_rows, save_tiny_chat_model, write_jsonl
from galorekit.cli import main
from galorekit.train.sft_cli import add_arguments, config_from_args

README = Path(__file__).resolve().parents[1] / "README.md"


def _section() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("## Fine-tune a pretrained LLM: `galore sft`")
    return text[start : text.index("\n## ", start + 1)]


def _commands() -> list[list[str]]:
    block = re.search(r"```bash\n(.*?)```", _section(), re.S).group(1)
    joined = block.replace("\\\n", " ")
    lines = (line.split("#", 1)[0].strip() for line in joined.splitlines())
    return [shlex.split(line) for line in lines if line]


def test_the_commands_are_valid_galore_sft_commands():
    commands = _commands()
    assert [c[:2] for c in commands] == [["galore", "sft"], ["galore", "sft"]]
    assert commands[0] == ["galore", "sft"]  # the offline default: no arguments
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    for command in commands:
        config_from_args(parser.parse_args(command[2:]))  # every flag and value is accepted


def test_fine_tune_export_and_load_as_printed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = save_tiny_chat_model(tmp_path / "tiny")
    write_jsonl(tmp_path / "chats.jsonl", chat_rows(40))
    command = _commands()[1][1:]
    at = command.index("--model") + 1
    command[at] = str(model)  # the hub model of the README, offline
    fast = ["--max-steps", "2", "--batch-size", "4", "--rank", "4", "--generate-eval", "0"]
    assert main([*command, *fast, "--no-progress", "--no-tensorboard"]) == 0
    code = re.search(r"```python\n(.*?)```", _section(), re.S).group(1)
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    loaded, tokenizer = namespace["model"], namespace["tokenizer"]
    ids = tokenizer("the film was good", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.isfinite(loaded(input_ids=ids).logits).all()
    assert Path("my-model/final/model.safetensors").is_file()


@pytest.mark.slow
def test_the_default_model_converts_once_and_trains(tmp_path, monkeypatch, capsys):
    """The real SmolLM2-135M-Instruct GGUF: converted into the cache by the first run, loaded
    from it by the second; a couple of steps on the default task each."""
    monkeypatch.setenv("GALOREKIT_CACHE", str(tmp_path / "cache"))
    args = [
        "sft", "--max-steps", "1", "--batch-size", "2", "--max-train-samples", "8",
        "--max-eval-samples", "4", "--generate-eval", "4", "--max-new-tokens", "4",
        "--no-progress", "--no-tensorboard", "--save-every", "0",
    ]  # fmt: skip
    assert main([*args, "--output-dir", str(tmp_path / "a")]) == 0
    first = capsys.readouterr().out
    assert "converting SmolLM2-135M-Instruct.Q4_1.gguf" in first
    assert "accuracy before" in first
    assert main([*args, "--output-dir", str(tmp_path / "b"), "--method", "lora"]) == 0
    assert "converting" not in capsys.readouterr().out  # the cache served it
