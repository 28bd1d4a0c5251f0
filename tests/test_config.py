"""Configuration in one place: flags generated from the config dataclasses, ``--config`` files,
config.json that reads back, ``--resume`` from the saved settings, changes refused or recorded, old
spellings refused."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil

import pytest

from _pretrain_fixtures import events, pretrain_argv
from galorekit.cli import build_parser, main
from galorekit.config import UNSET, ConfigFileError
from galorekit.train import pretrain_cli
from galorekit.train.pretrain_config import _METHOD, FLAGS, build_config, config_values


@pytest.fixture
def corpus(pretrain_corpus):
    return pretrain_corpus


def _parse(*flags: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    pretrain_cli.add_arguments(parser)
    return parser.parse_args(list(flags))


# ------------------------------------------------------------------------- generated flags
@pytest.mark.parametrize("command", ["pretrain", "finetune"])
def test_every_flag_has_help_and_one_default(command):
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    cmd = sub.choices[command]
    for action in cmd._actions:
        if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
            continue
        assert action.help and action.help.strip(), action.option_strings
        assert action.help.count("default:") <= 1, (action.option_strings, action.help)
    text = cmd.format_help()
    assert "UNSET" not in text and "(default: None)" not in text


def test_method_flag_defaults_are_method_configs():
    """Each method flag's default and help are MethodConfig's own (one place for both)."""
    from galorekit.methods import MethodConfig, field_help

    cfg, helps = MethodConfig(), field_help()
    # None: resolved from the method when the config is built (a successor's scale, moments, …)
    own = {f.name: f.default for f in dataclasses.fields(MethodConfig)}
    flags = {fl.name: fl for fl in FLAGS if fl.path[0] == "method"}
    assert set(flags) == set(_METHOD)
    for name, fl in flags.items():
        assert fl.default == own[name], name
        assert fl.default is None or fl.default == getattr(cfg, name), name
        assert fl.help == helps[name] and fl.help, name


def test_defaults_are_the_dataclass_defaults():
    cfg = pretrain_cli.config_from_args(_parse())
    from galorekit.train.pretrain import PretrainConfig

    assert config_values(cfg) == config_values(PretrainConfig())
    assert {fl.name for fl in FLAGS} >= {"lr", "rank", "seq_len", "max_grad_norm", "precision"}


def test_config_values_read_back():
    cfg = pretrain_cli.config_from_args(
        _parse("--lr", "0.02", "--rank", "4", "--proj-type", "left", "--streaming", "no")
    )
    again = build_config(json.loads(json.dumps(config_values(cfg))))
    assert config_values(again) == config_values(cfg)
    assert again.method.rank == 4 and again.data.streaming is False


# ------------------------------------------------------------------------- --config files
@pytest.mark.parametrize("suffix", [".toml", ".yaml", ".json"])
def test_config_file_with_command_line_override(tmp_path, suffix):
    text = {
        ".toml": "lr = 0.02\nrank = 4\nmax-steps = 30\n[data]\nseq_len = 64\n",
        ".yaml": "lr: 0.02\nrank: 4\nmax_steps: 30\ndata:\n  seq_len: 64\n",
        ".json": '{"lr": 0.02, "rank": 4, "max_steps": 30, "data": {"seq_len": 64}}',
    }[suffix]
    path = tmp_path / f"run{suffix}"
    path.write_text(text)
    cfg = pretrain_cli.config_from_args(_parse("--config", str(path), "--rank", "8"))
    assert cfg.method.lr == 0.02 and cfg.max_steps == 30 and cfg.data.seq_len == 64
    assert cfg.method.rank == 8  # the command line wins


@pytest.mark.parametrize(
    "text,message",
    [
        ("lrr = 0.1\n", "unknown setting 'lrr' (did you mean lr?)"),
        ('rank = "four"\n', "rank must be int"),
        ('precision = "bf16"\n', "precision must be one of fp32, bf16-mixed"),
        ("lr = \n", "not valid toml"),
    ],
)
def test_bad_config_file_is_one_line(tmp_path, capsys, text, message):
    path = tmp_path / "run.toml"
    path.write_text(text)
    with pytest.raises(ConfigFileError, match=r"run\.toml"):
        pretrain_cli.config_from_args(_parse("--config", str(path)))
    assert main(["pretrain", "--config", str(path), "--output-dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("galore pretrain: error: --config") and message in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------- old spellings
@pytest.mark.parametrize(
    "command,old,pointer",
    [
        ("pretrain", ["--grad-clip", "0.5"], "--max-grad-norm"),
        ("pretrain", ["--dtype", "bfloat16"], "--precision"),
        ("finetune", ["--method", "full"], "--method adamw"),
    ],
)
def test_old_spellings_are_refused_with_a_pointer(capsys, command, old, pointer):
    with pytest.raises(SystemExit) as exit_info:
        main([command, *old])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"galore {command}: error:") and pointer in err
    assert len(err.strip().splitlines()) == 1  # one line, no usage dump


# ------------------------------------------------------------------------- --resume
@pytest.mark.slow
def test_resume_reads_the_saved_config_and_refuses_or_records_changes(corpus, tmp_path, capsys):
    common = ("--max-steps", "8", "--eval-every", "4", "--save-every", "4", "--rank", "8")
    extra = ("--update-proj-gap", "3", "--lr", "0.02", "--seed", "3")
    straight, halted = tmp_path / "straight", tmp_path / "halted"
    assert main(pretrain_argv(corpus, straight, *common, *extra)) == 0
    assert main(pretrain_argv(corpus, halted, *common, *extra)) == 0
    shutil.rmtree(halted / "checkpoints" / "step-00000008")
    saved = json.loads((halted / "config.json").read_text())
    assert saved["lr"] == 0.02 and saved["rank"] == 8 and saved["update_proj_gap"] == 3
    assert saved["seed"] == 3 and saved["max_grad_norm"] == 1.0 and saved["precision"] == "fp32"

    # a changed trajectory setting is refused, naming each difference; nothing is touched
    before = {p: (halted / p).read_bytes() for p in ("config.json", "metrics.jsonl")}
    argv = ["pretrain", "--resume", "--output-dir", str(halted)]
    assert main([*argv, "--lr", "0.5", "--rank", "4", "--proj-type", "left"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("galore pretrain: error: --resume:") and len(err.splitlines()) == 1
    for change in ("--lr 0.02 → 0.5", "--rank 8 → 4", "--proj-type std → left"):
        assert change in err
    assert "--allow-config-change" in err
    assert "--proj-type, --rank cannot change on resume" in err  # no flag accepts these
    assert {p: (halted / p).read_bytes() for p in before} == before
    # not even with --allow-config-change: loading the checkpoint would restore its own (rank 8)
    assert main([*argv, "--rank", "4", "--allow-config-change"]) == 2
    assert "cannot change on resume, even with --allow-config-change" in capsys.readouterr().err
    assert {p: (halted / p).read_bytes() for p in before} == before

    # a run's config.json is a config file: the same settings, another directory
    again = pretrain_cli.config_from_args(
        _parse("--config", str(halted / "config.json"), "--output-dir", str(tmp_path / "again"))
    )
    assert config_values(again) == {**saved_keys(saved), "output_dir": str(tmp_path / "again")}

    # nothing retyped: the saved settings continue the run bit-identically
    assert main(argv) == 0
    assert events(halted, "eval")[-1]["eval_loss"] == events(straight, "eval")[-1]["eval_loss"]

    # an accepted change is recorded in config.json and metrics.jsonl
    shutil.rmtree(halted / "checkpoints" / "step-00000008")
    assert main([*argv, "--lr", "0.01", "--allow-config-change"]) == 0
    saved = json.loads((halted / "config.json").read_text())
    assert saved["lr"] == 0.01 and saved["allow_config_change"] is True
    assert saved["config_changes"] == [{"step": 4, "changes": {"lr": [0.02, 0.01]}}]
    assert events(halted, "config_change") == [
        {**events(halted, "config_change")[0], "step": 4, "changes": {"lr": [0.02, 0.01]}}
    ]
    # and the flag is not carried over: the next resume compares against lr 0.01
    shutil.rmtree(halted / "checkpoints" / "step-00000008")
    assert main([*argv, "--lr", "0.02"]) == 2
    assert "--lr 0.01 → 0.02" in capsys.readouterr().err


def saved_keys(saved: dict) -> dict:
    """The settings of a config.json (without its records of the run)."""
    return {k: v for k, v in saved.items() if k not in ("run", "world_size", "config_changes")}


def test_resume_without_output_dir_is_refused(capsys):
    assert main(["pretrain", "--resume"]) == 2
    assert "--resume needs --output-dir" in capsys.readouterr().err


def test_unset_is_not_a_value():
    assert UNSET == UNSET and UNSET != None  # noqa: E711


def test_finetune_config_values_read_back_as_a_config_file(tmp_path):
    from galorekit.train import finetune_cli
    from galorekit.train.finetune_config import config_values, resolve_presets

    parser = argparse.ArgumentParser()
    finetune_cli.add_arguments(parser)
    flags = ("--task", "rte", "--text-columns", "a,b", "--rank", "4", "--seed", "3")
    cfg = resolve_presets(finetune_cli.resolve_config(parser.parse_args(list(flags))))
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config_values(cfg)))
    again = finetune_cli.resolve_config(parser.parse_args(["--config", str(path)]))
    assert again == cfg and again.data.text_columns == ("a", "b") and again.data.seed == 3


def test_finetune_eval_every_has_one_meaning():
    from galorekit.train import finetune_cli
    from galorekit.train.finetune_config import resolve_presets

    def resolved(*flags: str):
        parser = argparse.ArgumentParser()
        finetune_cli.add_arguments(parser)
        return resolve_presets(finetune_cli.resolve_config(parser.parse_args(list(flags))))

    offline = resolved()
    assert offline.eval_every == 50 and offline.eval_each_epoch is False
    files = resolved("--train-file", "t.csv", "--eval-every", "0")
    assert files.eval_every == 0 and files.eval_each_epoch is True  # the per-epoch preset
    assert resolved("--train-file", "t.csv", "--no-eval-each-epoch").eval_each_epoch is False
    assert resolved("--seed", "3").data.seed == 3 and resolved().seed == 0


@pytest.mark.slow
def test_a_checkpoint_trained_with_another_rank_is_refused(corpus, tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(pretrain_argv(corpus, a, "--max-steps", "2", "--rank", "8")) == 0
    assert main(pretrain_argv(corpus, b, "--max-steps", "2", "--rank", "4")) == 0
    before = (b / "metrics.jsonl").read_bytes()
    other = a / "checkpoints" / "step-00000002"
    argv = ["pretrain", "--output-dir", str(b), "--max-steps", "4", "--resume", str(other)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "was trained with other settings: --rank 8 → 4" in err and len(err.splitlines()) == 1
    assert (b / "metrics.jsonl").read_bytes() == before


@pytest.mark.slow
def test_divergence_keeps_the_last_good_checkpoint_and_resumes_with_a_lower_lr(
    corpus, tmp_path, capsys, monkeypatch
):
    """A non-finite loss stops the run before its update (exit 1, one line); the latest checkpoint
    is the last good one, and `--resume --lr … --allow-config-change` goes on from it."""
    import math

    import torch

    from galorekit.train import pretrain as pretrain_module
    from galorekit.train.loop import lm_loss

    calls = []

    def nan_at_step_3(model, batch):
        calls.append(1)
        loss = lm_loss(model, batch)
        return loss * float("nan") if len(calls) == 3 else loss

    out = tmp_path / "run"
    argv = pretrain_argv(corpus, out, "--max-steps", "6", "--save-every", "2", "--lr", "0.02")
    with monkeypatch.context() as patch:
        patch.setattr(pretrain_module, "lm_loss", nan_at_step_3)
        assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("galore pretrain: error: training diverged at step 3")
    assert "--allow-config-change" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000002"]
    state = torch.load(out / "checkpoints" / "step-00000002" / "state.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert events(out, "diverged")[0]["step"] == 3
    resume = ["pretrain", "--resume", "--output-dir", str(out), "--lr", "0.01"]
    assert main(resume) == 2  # a lower LR changes the trajectory: explicit only
    assert main([*resume, "--allow-config-change"]) == 0
    assert [e["step"] for e in events(out, "train")] == list(range(1, 7))
    assert math.isfinite(events(out, "eval")[-1]["eval_loss"])
    changes = json.loads((out / "config.json").read_text())["config_changes"]
    assert changes == [{"step": 2, "changes": {"lr": [0.02, 0.01]}}]
