"""``--report-to tensorboard,wandb,none``: MetricsLogger mirrors metrics.jsonl's scalars to the
chosen trackers (wandb offline here), ``galore pretrain`` and ``galore finetune`` take the flag, and
a bad value is the command's one-line error."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from galorekit.train.logging import (
    MetricsLogger,
    parse_report_to,
    read_metrics,
    report_to_error,
)


@pytest.fixture
def wandb_offline(monkeypatch, tmp_path):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))


def test_parse_report_to():
    assert parse_report_to("tensorboard,wandb") == ("tensorboard", "wandb")
    assert parse_report_to(" wandb , wandb ") == ("wandb",)
    assert parse_report_to("none") == ()
    assert parse_report_to(["tensorboard"]) == ("tensorboard",)
    for bad in ("mlflow", "none,wandb", ""):
        with pytest.raises(ValueError, match="valid are tensorboard, wandb"):
            parse_report_to(bad)
    assert report_to_error("tensorboard") is None and "mlflow" in report_to_error("mlflow")


def test_none_writes_only_metrics_jsonl(tmp_path):
    with MetricsLogger(tmp_path, report_to="none") as logger:
        logger.log({"event": "train", "step": 1, "loss": 0.5})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]
    assert read_metrics(tmp_path)[0]["loss"] == 0.5


@dataclass
class _Cfg:
    lr: float = 0.01
    report_to: str = "tensorboard,wandb"
    tensorboard: bool = True


def test_tensorboard_and_wandb_mirror_the_scalars(tmp_path, wandb_offline):
    out = tmp_path / "run"
    logger = MetricsLogger.for_run(out, _Cfg())
    logger.log({"event": "train", "step": 1, "loss": 0.5, "note": "text"})
    logger.log({"event": "train", "step": 2, "loss": 0.25})
    logger.log({"event": "end", "tokens": 128})  # no step: the run's summary
    run = logger._wandb.run
    # wandb commits a step when the next one begins: step 1 is in, the summary updated at once
    assert run.summary["train/loss"] == 0.5 and run.summary["end/tokens"] == 128
    assert run.config["lr"] == 0.01
    run_id = run.id
    logger.close()
    assert list((out / "tensorboard").iterdir())  # event files
    (record,) = (out / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb")
    written = record.read_bytes()  # the offline run's records (protobuf: keys and JSON values)
    assert b"train/loss" in written and b"0.25" in written
    assert len(read_metrics(out)) == 3  # metrics.jsonl stays
    # a resumed run (same directory) continues the same wandb run
    with MetricsLogger(out, report_to="wandb") as again:
        assert again._wandb.run.id == run_id


def test_no_tensorboard_flag_still_wins(tmp_path, wandb_offline):
    with MetricsLogger.for_run(tmp_path, _Cfg(tensorboard=False)):
        pass
    assert not (tmp_path / "tensorboard").exists() and (tmp_path / "wandb").is_dir()


@pytest.mark.slow
def test_pretrain_reports_to_wandb_and_refuses_a_bad_value(
    tmp_path, pretrain_corpus, wandb_offline, capsys
):
    from _pretrain_fixtures import pretrain_argv
    from galorekit.cli import main

    bad = pretrain_argv(pretrain_corpus, tmp_path / "bad", "--max-steps", "2", "--report-to", "x")
    assert main(bad) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("galore pretrain: error:") and "'x'" in err[0]
    assert not (tmp_path / "bad").exists()
    out = tmp_path / "run"
    argv = pretrain_argv(pretrain_corpus, out, "--max-steps", "2", "--report-to", "wandb")
    assert main(argv) == 0
    assert (out / "wandb" / "galorekit-run-id").is_file() and not (out / "tensorboard").exists()


def test_finetune_takes_the_flag():
    from _finetune_fixtures import parse
    from galorekit.train.finetune_cli import resolve_config
    from galorekit.train.finetune_config import ConfigError

    assert (
        resolve_config(parse("--report-to", "tensorboard,wandb")).report_to == "tensorboard,wandb"
    )
    with pytest.raises(ConfigError, match="mlflow"):
        resolve_config(parse("--report-to", "mlflow"))


def test_sft_takes_the_flag_and_refuses_a_bad_value(tmp_path, capsys):
    import argparse

    from galorekit.cli import main
    from galorekit.train.sft_cli import add_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    cfg = config_from_args(parser.parse_args(["--report-to", "tensorboard,wandb"]))
    assert cfg.report_to == "tensorboard,wandb"
    out = tmp_path / "bad"
    assert main(["sft", "--output-dir", str(out), "--report-to", "mlflow"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("galore sft: error:") and "mlflow" in err[0]
    assert not out.exists()
