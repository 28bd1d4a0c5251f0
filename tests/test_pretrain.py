"""`galore pretrain`: every method end to end on a tiny model, resume equivalence, CLI errors."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

from _pretrain_fixtures import events, pretrain_argv
from galorekit.cli import main
from galorekit.names import METHODS

pytestmark = pytest.mark.slow


@pytest.fixture
def corpus(pretrain_corpus):
    return pretrain_corpus


def args(corpus, out, *extra: str) -> list[str]:
    return pretrain_argv(corpus, out, "--max-steps", "6", "--eval-every", "3", *extra)


@pytest.mark.parametrize(
    "method,extra",
    [(m, ()) for m in METHODS]
    + [("galore_adamw", ("--layerwise",)), ("galore_adamw8bit", ("--layerwise",))]
    + [("galore_adamw", ("--total-batch-size", "8", "--proj-type", "full", "--rank", "4"))],
)
def test_every_method_trains(corpus, tmp_path, method, extra):
    out = tmp_path / "run"
    lr = "0.003" if method in ("lora", "relora", "low_rank", "adamw", "adamw8bit") else "0.01"
    rc = main(args(corpus, out, "--method", method, "--lr", lr, "--rank", "8", *extra))
    assert rc == 0
    train = events(out, "train")
    assert [e["step"] for e in train] == list(range(1, 7))
    for e in train:
        assert math.isfinite(e["loss"]) and e["grad_norm"] > 0 and e["tokens_per_s"] > 0
    evals = events(out, "eval")
    assert evals[-1]["eval_loss"] < math.log(400) - 0.05  # it learns (random init: ln V)
    assert [e["step"] for e in evals] == [3, 6]
    assert evals[-1]["eval_ppl"] == pytest.approx(math.exp(evals[-1]["eval_loss"]))
    config = json.loads((out / "config.json").read_text())
    assert config["method"] == method
    assert (out / "checkpoints").is_dir()


def test_lr_schedule_warmup_then_cosine(corpus, tmp_path):
    out = tmp_path / "run"
    assert (
        main(args(corpus, out, "--max-steps", "10", "--warmup-ratio", "0.2", "--lr", "0.01")) == 0
    )
    lrs = [e["lr"] for e in events(out, "train")]
    assert lrs[0] < lrs[1] < lrs[2]  # warm-up
    assert lrs[2] == pytest.approx(0.01)  # peak after 2 warm-up steps
    assert all(a >= b for a, b in itertools.pairwise(lrs[2:]))  # cosine decay
    assert lrs[-1] >= 0.001 - 1e-12  # to 10% of the peak


def test_resume_is_bit_identical(corpus, tmp_path):
    straight = tmp_path / "straight"
    common = ("--max-steps", "8", "--eval-every", "4", "--update-proj-gap", "3", "--rank", "8")
    assert main(args(corpus, straight, *common, "--save-every", "4")) == 0

    halted = tmp_path / "halted"
    # the first half: a run that stops after step 4 (its own max) is not the same schedule, so
    # stop it the way a user would: a checkpoint at step 4, then kill (here: delete later steps)
    assert main(args(corpus, halted, *common, "--save-every", "4")) == 0
    import shutil

    shutil.rmtree(halted / "checkpoints" / "step-00000008")
    assert main(args(corpus, halted, *common, "--save-every", "4", "--resume")) == 0

    a, b = events(straight, "eval"), events(halted, "eval")
    assert [e["step"] for e in b] == [4, 8]  # metrics after the checkpoint were replaced
    assert a[-1]["eval_loss"] == b[-1]["eval_loss"]
    sa = torch.load(straight / "checkpoints" / "step-00000008" / "state.pt", weights_only=True)
    sb = torch.load(halted / "checkpoints" / "step-00000008" / "state.pt", weights_only=True)
    for key, value in sa["model"].items():
        assert torch.equal(value, sb["model"][key]), key


def test_existing_run_is_refused_and_kept(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(args(corpus, out, "--max-steps", "2")) == 0
    printed = capsys.readouterr().out
    assert "metrics:" in printed and "plot:" not in printed  # --no-plot: no plot named
    assert not (out / "curves.png").exists()
    before = (out / "metrics.jsonl").read_text()
    assert main(args(corpus, out, "--max-steps", "2")) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (out / "metrics.jsonl").read_text() == before
    assert main(args(corpus, out, "--max-steps", "2", "--overwrite")) == 0


def test_mismatched_checkpoint_is_a_clear_error(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(args(corpus, out, "--max-steps", "2")) == 0
    rc = main(args(corpus, out, "--max-steps", "4", "--resume", "--method", "adamw"))
    assert rc == 2  # the saved config.json refuses the change first
    assert "--method galore_adamw → adamw" in capsys.readouterr().err
    argv = args(corpus, out, "--max-steps", "4", "--resume", "--method", "adamw")
    assert main([*argv, "--allow-config-change"]) == 2  # no flag changes the method on resume
    assert "cannot change on resume, even with --allow-config-change" in capsys.readouterr().err


def test_corrupt_checkpoint_is_a_clear_error(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(args(corpus, out, "--max-steps", "2")) == 0
    state = out / "checkpoints" / "step-00000002" / "state.pt"
    state.write_bytes(state.read_bytes()[:-100])
    assert main(args(corpus, out, "--max-steps", "4", "--resume")) == 2
    assert "corrupt" in capsys.readouterr().err
    assert state.exists()  # nothing deleted


@pytest.mark.parametrize(
    "extra,message",
    [
        (("--model", "llama_5b"), "llama_9m"),
        (("--dataset", "no_such_corpus_xyz"), "default"),
        (("--total-batch-size", "6"), "multiple of --batch-size"),
        (("--method", "lora", "--layerwise"), "--layerwise"),
        (("--resume",), "no run to resume"),
    ],
)
def test_bad_input(corpus, tmp_path, capsys, extra, message):
    argv = args(corpus, tmp_path / "run", *extra)
    if extra[0] == "--dataset":  # --data-files would override --dataset
        i = argv.index("--data-files")
        del argv[i : i + 2]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_unknown_method_lists_choices(capsys):
    with pytest.raises(SystemExit):
        main(["pretrain", "--method", "sgd"])
    assert "galore_adamw" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["galore_adamw", "lora"])
def test_rank_larger_than_matrices_is_clamped_with_a_warning(corpus, tmp_path, method):
    argv = args(corpus, tmp_path / "run", "--rank", "1000", "--max-steps", "2", "--method", method)
    with pytest.warns(UserWarning, match="clamped"):
        assert main(argv) == 0


@pytest.mark.filterwarnings("error::FutureWarning")  # transformers' current API: no deprecation
def test_activation_checkpointing_and_bf16_autocast(corpus, tmp_path):
    out = tmp_path / "run"
    rc = main(
        args(
            corpus,
            out,
            "--max-steps",
            "2",
            "--activation-checkpointing",
            "--precision",
            "bf16-mixed",
        )
    )
    assert rc == 0
    assert all(math.isfinite(e["loss"]) for e in events(out, "train"))
    assert json.loads((out / "config.json").read_text())["activation_checkpointing"] is True


def test_sigterm_checkpoints_and_resume_finishes(corpus, tmp_path):
    """SIGTERM mid-run: the step finishes, a checkpoint is written, the exit code says why."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    argv = args(corpus, out, "--max-steps", "400", "--eval-every", "0", "--save-every", "0")
    proc = subprocess.Popen([sys.executable, "-m", "galorekit", *argv], stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while time.time() < deadline and not events_exist(out):
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 128 + signal.SIGTERM, err.decode()[-2000:]
    interrupted = events(out, "interrupted")
    assert len(interrupted) == 1
    step = interrupted[0]["step"]
    assert (out / "checkpoints" / f"step-{step:08d}" / "state.pt").exists()
    assert b"--resume" in err


def events_exist(out) -> bool:
    try:
        return len(events(out, "train")) >= 2
    except (FileNotFoundError, json.JSONDecodeError):
        return False
