"""metrics.jsonl + TensorBoard logger, run config, summary tables."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from galorekit.train.logging import (
    MetricsLogger,
    format_bytes,
    read_metrics,
    summary_table,
    write_run_config,
)


def test_each_event_is_one_flushed_json_line(tmp_path):
    logger = MetricsLogger(tmp_path, tensorboard=False)
    logger.log({"event": "train", "step": 1, "loss": torch.tensor(0.5), "lr": 1e-3})
    # readable before close: every line is flushed
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1
    first = json.loads(lines[0])
    assert first["loss"] == 0.5 and first["event"] == "train" and isinstance(first["time"], float)
    logger.log({"event": "eval", "step": 2, "eval_loss": math.nan, "path": Path("/x"), "time": 3.0})
    logger.close()
    events = read_metrics(tmp_path)
    assert events[1] == {"event": "eval", "step": 2, "eval_loss": None, "path": "/x", "time": 3.0}
    with pytest.raises(RuntimeError, match="closed"):
        logger.log({"step": 3})


def test_logger_appends_to_an_existing_log(tmp_path):
    with MetricsLogger(tmp_path, tensorboard=False) as logger:
        logger.log({"a": 1})
    with MetricsLogger(tmp_path, tensorboard=False) as logger:
        logger.log({"a": 2})
    assert [e["a"] for e in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2]


def test_scalars_are_mirrored_to_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with MetricsLogger(tmp_path) as logger:
        logger.log(
            {"event": "eval", "step": 10, "eval_accuracy": 0.75, "method": "full", "ok": True}
        )
        logger.log({"event": "eval", "step": 20, "eval_accuracy": 0.8})
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert acc.Tags()["scalars"] == ["eval/eval_accuracy"]  # strings and bools are not scalars
    values = [(e.step, round(e.value, 4)) for e in acc.Scalars("eval/eval_accuracy")]
    assert values == [(10, 0.75), (20, 0.8)]


@dataclass
class _Cfg:
    lr: float
    out: Path
    betas: tuple[float, float]


def test_write_run_config(tmp_path):
    path = write_run_config(tmp_path / "run", _Cfg(1e-3, Path("/o"), (0.9, 0.99)))
    assert json.loads(path.read_text()) == {"betas": [0.9, 0.99], "lr": 1e-3, "out": "/o"}
    assert [p.name for p in path.parent.iterdir()] == ["config.json"]


def test_summary_table_plain():
    rows = [
        {"method": "galore_adamw", "accuracy": 0.81234, "params": 22713986},
        {"method": "full", "accuracy": 0.8, "params": 1000, "note": "x"},
    ]
    table = summary_table(rows, title="T")
    assert table.splitlines() == [
        "T",
        "method        accuracy      params  note",
        "------------  --------  ----------  ----",
        "galore_adamw    0.8123  22,713,986  -",
        "full            0.8000       1,000  x",
    ]
    rich = summary_table(rows, style="rich")
    assert "22,713,986" in rich and "galore_adamw" in rich and "0.8123" in rich
    with pytest.raises(ValueError, match="style must be"):
        summary_table(rows, style="html")


def test_format_bytes():
    assert format_bytes(512) == "512 B"
    assert format_bytes(1536) == "1.50 KiB"
    assert format_bytes(173.29 * 2**20) == "173.29 MiB"
    assert format_bytes(None) == "-"
