"""A model or tokenizer that ships its own code (``auto_map``) is never run — nor asked about in
a terminal — unless ``--trust-remote-code`` is given."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def _remote_code_model(tmp_path: Path) -> tuple[Path, Path]:
    """A model directory whose config needs its own module; importing it leaves a marker."""
    model, marker = tmp_path / "custom-model", tmp_path / "remote-code-ran"
    model.mkdir()
    (model / "configuration_custom.py").write_text(
        "from pathlib import Path\n"
        f"Path({str(marker)!r}).write_text('ran')\n"
        "from transformers import PretrainedConfig\n"
        "class CustomConfig(PretrainedConfig):\n"
        "    model_type = 'custom'\n"
    )
    config = {
        "model_type": "custom",
        "auto_map": {"AutoConfig": "configuration_custom.CustomConfig"},
    }
    (model / "config.json").write_text(json.dumps(config))
    return model, marker


def _galore(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "hf-modules")}
    return subprocess.run(
        [sys.executable, "-m", "galorekit", *argv],
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=300,
    )


@pytest.mark.parametrize("command", ["pretrain", "finetune"])
def test_remote_code_is_refused_without_the_flag(tmp_path, command) -> None:
    model, marker = _remote_code_model(tmp_path)
    out = _galore(tmp_path, command, "--model", str(model), "--output-dir", str(tmp_path / "run"))
    assert out.returncode == 2, out.stderr
    assert "holds its own code" in out.stderr and "--trust-remote-code" in out.stderr
    assert "[y/N]" not in out.stdout + out.stderr  # never asked
    assert not marker.exists() and not (tmp_path / "run").exists()


def test_remote_code_runs_with_the_flag(tmp_path) -> None:
    model, marker = _remote_code_model(tmp_path)
    out = _galore(
        tmp_path,
        "pretrain",
        "--model",
        str(model),
        "--trust-remote-code",
        "--max-steps",
        "1",
        "--output-dir",
        str(tmp_path / "run"),
    )
    # its config class ran; it defines no causal LM, so building the model then fails cleanly
    assert marker.exists(), out.stderr
    assert "galore pretrain: error:" in out.stderr
