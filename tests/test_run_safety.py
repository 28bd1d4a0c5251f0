"""Run safety (issue 21): no crash, divergence, second process or resume spoils a run.

Each test drives `galore pretrain` on llama_tiny over the small shared corpus (a few steps), and
injects the fault in-process (monkeypatching) unless it needs a second process.
"""

from __future__ import annotations

import errno
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from _pretrain_fixtures import events, pretrain_argv
from galorekit.cli import main
from galorekit.train import checkpoint as checkpoint_module
from galorekit.train import pretrain as pretrain_module
from galorekit.train.failures import failure
from galorekit.train.loop import Loop, lm_loss
from galorekit.train.run_lock import LOCK_FILE, RunLock, RunLockedError
from galorekit.train.watch import LossWatch

pytestmark = pytest.mark.slow


@pytest.fixture
def corpus(pretrain_corpus):
    return pretrain_corpus


def _steps(out) -> list[str]:
    return sorted(p.name for p in (out / "checkpoints").iterdir())


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err  # one line, no traceback
    return err


# ---------------------------------------------------------------------------- 1. the run lock
def test_a_second_process_is_refused_naming_the_holder(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    with RunLock(out):  # another open file description: conflicts like another process would
        assert main(pretrain_argv(corpus, out, "--max-steps", "2")) == 2
        err = _error(capsys)
        assert f"is in use by another run (pid {os.getpid()} " in err
        (out / "metrics.jsonl").write_text("")  # a run there: --resume is refused by the lock
        assert main(pretrain_argv(corpus, out, "--max-steps", "2", "--resume")) == 2
        assert "in use by another run" in _error(capsys)
        (out / "metrics.jsonl").unlink()
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]  # nothing was written
    assert (out / LOCK_FILE).read_text() == ""  # released


def test_a_dead_holders_lock_is_taken_over(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK_FILE).write_text("pid 999999999 on elsewhere\n")  # left by a killed process
    assert main(pretrain_argv(corpus, out, "--max-steps", "2")) == 0
    assert "took over the lock of a process that died (pid 999999999" in capsys.readouterr().out
    with RunLock(out) as lock:  # released at the end of the run
        assert lock.stale == ""


def test_concurrent_starts_one_runs_the_other_is_refused(corpus, tmp_path):
    """Two real processes started together on one --output-dir: exactly one trains."""
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "galorekit", *pretrain_argv(corpus, out, "--max-steps", "3")]
    procs = [subprocess.Popen(argv, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    refused = next(err for code, err in results if code == 2)
    assert "galore pretrain: error:" in refused
    assert "in use by another run (pid" in refused or "already holds a run" in refused
    assert [e["step"] for e in events(out, "train")] == [1, 2, 3]  # one run's events only
    assert len(events(out, "end")) == 1


def test_lock_is_released_on_an_exception(tmp_path):
    with pytest.raises(ZeroDivisionError), RunLock(tmp_path):
        raise ZeroDivisionError
    with RunLock(tmp_path), pytest.raises(RunLockedError):
        RunLock(tmp_path).acquire()


# ---------------------------------------------------------------------------- 2. divergence
def test_a_non_finite_weight_is_never_checkpointed(corpus, tmp_path, capsys, monkeypatch):
    """A step whose update leaves a NaN weight (a layer-wise update, an overflow): its
    checkpoint is refused, the previous one stays the latest, exit 1 with one line."""
    original = Loop.train_step

    def poisoned(self):
        out = original(self)
        if out.step == 3:
            with torch.no_grad():
                next(self.model.parameters()).view(-1)[0] = float("nan")
        return out

    monkeypatch.setattr(Loop, "train_step", poisoned)
    out = tmp_path / "run"
    assert main(pretrain_argv(corpus, out, "--max-steps", "5", "--save-every", "1")) == 1
    err = _error(capsys)
    assert "training diverged at step 3" in err and "no checkpoint was written" in err
    assert "--resume --output-dir" in err and "--allow-config-change" in err
    assert _steps(out) == ["step-00000001", "step-00000002"]
    assert events(out, "diverged")[0]["step"] == 3


@pytest.mark.parametrize(
    "method",
    [("--method", "adamw"), ("--method", "galore_adamw", "--layerwise"), ("--method", "lora")],
)
def test_every_method_stops_on_a_nan_loss_with_its_last_good_checkpoint(
    corpus, tmp_path, capsys, monkeypatch, method
):
    """A NaN loss at step 3, for full-rank, layer-wise (its update runs inside backward) and
    adapter methods alike: exit 1, no checkpoint of step 3, step 2's is finite."""
    calls = []

    def nan_at_step_3(model, batch):
        calls.append(1)
        loss = lm_loss(model, batch)
        return loss * float("nan") if len(calls) == 3 else loss

    monkeypatch.setattr(pretrain_module, "lm_loss", nan_at_step_3)
    out = tmp_path / "run"
    argv = pretrain_argv(corpus, out, "--max-steps", "4", "--save-every", "1", *method)
    assert main(argv) == 1
    assert "training diverged at step 3" in _error(capsys)
    assert _steps(out) == ["step-00000001", "step-00000002"]
    state = torch.load(out / "checkpoints" / "step-00000002" / "state.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_resume_at_a_lower_lr_trains_at_that_lr(corpus, tmp_path, capsys, monkeypatch):
    """The documented way on after a divergence: `--resume --lr X --allow-config-change` from the
    last good checkpoint; the rate used is X on the same schedule (the checkpoint's used to win)."""
    calls = []

    def nan_at_step_3(model, batch):
        calls.append(1)
        loss = lm_loss(model, batch)
        return loss * float("nan") if len(calls) == 3 else loss

    out, ref = tmp_path / "run", tmp_path / "reference"
    common = ("--max-steps", "5", "--save-every", "1", "--warmup-ratio", "0.4")
    with monkeypatch.context() as patch:
        patch.setattr(pretrain_module, "lm_loss", nan_at_step_3)
        assert main(pretrain_argv(corpus, out, *common, "--lr", "0.02")) == 1
    capsys.readouterr()
    resume = ["pretrain", "--resume", "--output-dir", str(out), "--lr", "0.005"]
    assert main([*resume, "--allow-config-change"]) == 0
    assert main(pretrain_argv(corpus, ref, *common, "--lr", "0.005")) == 0
    resumed = {e["step"]: e["lr"] for e in events(out, "train") if e["step"] >= 3}
    expected = {e["step"]: e["lr"] for e in events(ref, "train") if e["step"] >= 3}
    assert resumed == pytest.approx(expected) and len(resumed) == 3
    changes = json.loads((out / "config.json").read_text())["config_changes"]
    assert changes == [{"step": 2, "changes": {"lr": [0.02, 0.005]}}]


def test_an_exploding_loss_is_warned_in_the_log_and_the_summary(corpus, tmp_path, monkeypatch):
    calls = []

    def explode_at_step_3(model, batch):
        calls.append(1)
        loss = lm_loss(model, batch)
        return loss * 1000 if len(calls) == 3 else loss

    monkeypatch.setattr(pretrain_module, "lm_loss", explode_at_step_3)
    out = tmp_path / "run"
    assert main(pretrain_argv(corpus, out, "--max-steps", "4", "--max-grad-norm", "1")) == 0
    warnings = events(out, "warning")
    assert [w["step"] for w in warnings] == [3] and "exploded" in warnings[0]["message"]
    assert "warning: step 3: the training loss exploded" in (out / "summary.md").read_text()


def test_loss_watch_signs():
    watch = LossWatch(vocab_size=400, settle_step=20)  # ln 400 = 5.99
    assert watch.check(1, 6.0) is None
    assert watch.check(2, 59.0) is None  # under 10× the first loss
    assert "exploded" in watch.check(3, 61.0)
    assert watch.check(4, 1e9) is None  # once
    assert watch.check(19, 6.0) is None  # still warming up
    assert "ln V" in watch.check(20, 5.9)
    assert watch.check(21, float("nan")) is None  # the loop stops on it
    healthy = LossWatch(vocab_size=400, settle_step=20)
    assert [healthy.check(s, 6.0 - s / 10) for s in range(1, 40)] == [None] * 39


# ------------------------------------------------------------- 4. resuming a finished run
def test_resuming_a_finished_run_changes_nothing(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(pretrain_argv(corpus, out, "--max-steps", "3")) == 0
    files = ("metrics.jsonl", "summary.md", "config.json")
    before = {name: (out / name).read_bytes() for name in files}
    capsys.readouterr()
    assert main(["pretrain", "--resume", "--output-dir", str(out)]) == 0
    assert "is a finished run (3 of --max-steps 3 steps" in capsys.readouterr().err
    assert {name: (out / name).read_bytes() for name in files} == before
    # a larger --max-steps trains further
    assert main(["pretrain", "--resume", "--output-dir", str(out), "--max-steps", "4"]) == 0
    assert [e["step"] for e in events(out, "train")] == [1, 2, 3, 4]
    assert [e["step"] for e in events(out, "end")] == [4]  # one end event: the run's


def test_a_kill_between_the_final_checkpoint_and_the_summary(corpus, tmp_path, capsys):
    """The state of a kill after the final checkpoint: no summary, no end event. Resuming
    writes the summary of the finished run (no NaN) and one end event."""
    out = tmp_path / "run"
    assert main(pretrain_argv(corpus, out, "--max-steps", "3")) == 0
    summary = (out / "summary.md").read_text()
    (out / "summary.md").unlink()
    metrics = out / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    metrics.write_text("".join(f"{line}\n" for line in lines if '"end"' not in line))
    assert main(["pretrain", "--resume", "--output-dir", str(out)]) == 0
    assert len(events(out, "end")) == 1
    again = (out / "summary.md").read_text()
    assert "nan" not in again
    row = next(line for line in again.splitlines() if line.startswith("llama_tiny"))
    old = next(line for line in summary.splitlines() if line.startswith("llama_tiny"))
    assert row.split()[:8] == old.split()[:8]  # steps … eval_ppl as the run ended


# ------------------------------------------------------- 5. a crash before the first checkpoint
def test_a_run_without_checkpoint_gets_one_account(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(pretrain_argv(corpus, out, "--max-steps", "2")) == 0
    for path in (out / "checkpoints").iterdir():  # as if killed before its first save
        checkpoint_module.shutil.rmtree(path)
    capsys.readouterr()
    assert main(pretrain_argv(corpus, out, "--max-steps", "2")) == 2
    new = _error(capsys)
    assert main(["pretrain", "--resume", "--output-dir", str(out)]) == 2
    resumed = _error(capsys)
    for err in (new, resumed):
        assert "a run that wrote no checkpoint" in err and "--overwrite" in err
    assert main(pretrain_argv(corpus, out, "--max-steps", "2", "--overwrite")) == 0


def test_save_every_minutes_checkpoints_by_time(corpus, tmp_path, monkeypatch):
    clock = iter(range(0, 10_000, 100))  # each reading 100 s later: every step is "late"
    monkeypatch.setattr(pretrain_module.time, "monotonic", lambda: float(next(clock)))
    out = tmp_path / "run"
    argv = ("--max-steps", "4", "--save-every", "0", "--keep-checkpoints", "9")
    assert main(pretrain_argv(corpus, out, *argv, "--save-every-minutes", "1")) == 0
    assert _steps(out) == [f"step-0000000{i}" for i in range(1, 5)]
    other = tmp_path / "off"
    assert main(pretrain_argv(corpus, other, *argv, "--save-every-minutes", "0")) == 0
    assert _steps(other) == ["step-00000004"]


# ------------------------------------------------------------------- 6. crash leftovers
def test_crash_leftovers_are_cleaned_at_start_up(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(pretrain_argv(corpus, out, "--max-steps", "2", "--save-every", "1")) == 0
    ckpts = out / "checkpoints"
    (ckpts / ".step-00000003.tmp-123-abcdef01").mkdir()  # killed inside a checkpoint write
    (ckpts / ".step-00000001.old-abcdef01").mkdir()  # killed after a swap, before the delete
    (ckpts / "step-00000000").mkdir()  # killed while pruning: meta.json already gone
    (out / ".config.json.123-abcdef01.tmp.json").write_text("{")
    capsys.readouterr()
    assert main(["pretrain", "--resume", "--output-dir", str(out), "--max-steps", "3"]) == 0
    said = capsys.readouterr().out
    assert "removed what an interrupted run left" in said and "step-00000000" in said
    assert _steps(out) == ["step-00000002", "step-00000003"]
    assert not list(out.glob(".*.tmp*"))


# --------------------------------------------------------------- 7. corrupt files
def test_a_corrupt_latest_checkpoint_names_the_intact_one(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    argv = pretrain_argv(corpus, out, "--max-steps", "3", "--save-every", "1")
    assert main(argv) == 0
    state = out / "checkpoints" / "step-00000003" / "state.pt"
    data = bytearray(state.read_bytes())
    data[len(data) // 2] ^= 0xFF
    state.write_bytes(bytes(data))
    capsys.readouterr()
    resume = ["pretrain", "--resume", "--output-dir", str(out), "--max-steps", "4"]
    assert main(resume) == 2
    err = _error(capsys)
    intact = out / "checkpoints" / "step-00000002"
    assert "step-00000003/state.pt is corrupt" in err
    assert f"{intact} (step 2) is intact" in err
    assert f"--resume {intact} --output-dir {out}" in err
    assert (
        main(["pretrain", "--resume", str(intact), "--output-dir", str(out), "--max-steps", "4"])
        == 0
    )
    assert (out / "checkpoints" / "abandoned-step-00000003").is_dir()  # kept, never resumed
    assert [e["step"] for e in events(out, "train")] == [1, 2, 3, 4]


def test_a_missing_state_file_is_not_a_silent_fallback(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(pretrain_argv(corpus, out, "--max-steps", "2", "--save-every", "1")) == 0
    (out / "checkpoints" / "step-00000002" / "state.pt").unlink()
    capsys.readouterr()
    assert main(["pretrain", "--resume", "--output-dir", str(out), "--max-steps", "3"]) == 2
    err = _error(capsys)
    assert "state.pt is missing" in err and "step-00000001 (step 1) is intact" in err


def test_a_torn_metrics_line_does_not_block_a_resume(corpus, tmp_path):
    out = tmp_path / "run"
    assert main(pretrain_argv(corpus, out, "--max-steps", "2", "--save-every", "1")) == 0
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"time": 1, "event": "tra')  # killed mid-write
    assert main(["pretrain", "--resume", "--output-dir", str(out), "--max-steps", "3"]) == 0
    assert [e["step"] for e in events(out, "train")] == [1, 2, 3]


def test_a_corrupt_metrics_line_names_the_file(tmp_path):
    from galorekit.train.logging import read_metrics

    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n{broken\n{"step": 2}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl: line 2 is not a JSON event"):
        read_metrics(tmp_path)


def test_a_corrupt_pickle_is_reported_without_torchs_advice(tmp_path):
    path = checkpoint_module.save_checkpoint(tmp_path / "step-00000001", {"step": 1})
    (path / "state.pt").write_bytes(b"garbage" * 100)  # not a zip: torch reads it as a pickle
    with pytest.raises(checkpoint_module.CheckpointError) as err:
        checkpoint_module.load_checkpoint(path, verify=False)
    message = str(err.value)
    assert "is corrupt or not a galorekit checkpoint" in message
    assert "weights_only" not in message and "will likely succeed" not in message


# ------------------------------------------------------------ 8. a full or read-only disk
def test_disk_full_during_a_checkpoint(corpus, tmp_path, capsys, monkeypatch):
    """torch.save's writer on a full disk: one line, exit 1, the previous checkpoint intact and no
    temporary left; the run resumes from it."""
    real_save = torch.save
    saves = []

    def full_disk(obj, f, *args, **kwargs):
        saves.append(1)
        if len(saves) == 2:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")
        return real_save(obj, f, *args, **kwargs)

    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(torch, "save", full_disk)
        assert main(pretrain_argv(corpus, out, "--max-steps", "3", "--save-every", "1")) == 1
    err = _error(capsys)
    assert "no space left on device" in err and "--resume" in err
    assert os.listdir(out / "checkpoints") == ["step-00000001"]  # no temporary left
    assert main(["pretrain", "--resume", "--output-dir", str(out)]) == 0
    assert [e["step"] for e in events(out, "train")] == [1, 2, 3]


@pytest.mark.parametrize(
    ("err", "code", "words"),
    [
        (OSError(errno.ENOSPC, "No space left on device", "/x/state.pt"), 1, "no space left"),
        (OSError(errno.EROFS, "Read-only file system", "/x"), 1, "read-only file system"),
        (FloatingPointError("training diverged at step 2"), 1, "diverged"),
        (ValueError("--rank must be ≥ 1"), 2, "--rank"),
        (RunLockedError("in use"), 2, "in use"),
        (KeyError("a bug"), None, ""),
    ],
)
def test_failure_codes(err, code, words):
    got, message = failure(err)
    assert got == code and words in message and "\n" not in message


def test_a_read_only_file_system_is_one_line(corpus, tmp_path, capsys, monkeypatch):
    def read_only(directory, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(directory / "state.pt"))

    monkeypatch.setattr(checkpoint_module, "write_state_files", read_only)
    out = tmp_path / "run"
    assert main(pretrain_argv(corpus, out, "--max-steps", "2", "--save-every", "1")) == 1
    err = _error(capsys)
    assert err.startswith("galore pretrain: error: cannot write the run's files: read-only")
    assert not list((out / "checkpoints").iterdir())  # no temporary left


# ------------------------------------------------------------ 11. bad input leaves nothing
def test_bad_input_leaves_no_run_folder(corpus, tmp_path, capsys):
    out = tmp_path / "runs" / "run"  # its parent is created too, and removed
    argv = pretrain_argv(corpus, out, "--max-steps", "2")
    missing = argv.index("--data-files") + 1
    argv[missing] = str(tmp_path / "nowhere.txt")
    assert main(argv) == 2
    assert _error(capsys).startswith("galore pretrain: error: ")
    assert not out.parent.exists()


def test_curves_are_titled_and_the_perplexity_axis_is_labelled(corpus, tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    out = tmp_path / "run"
    argv = [a for a in pretrain_argv(corpus, out, "--max-steps", "4") if a != "--no-plot"]
    assert main([*argv, "--eval-every", "1"]) == 0
    fig = figures[-1]
    assert "llama_tiny" in fig._suptitle.get_text() and "galore_adamw" in fig._suptitle.get_text()
    ax = fig.axes[1]
    low, high = ax.get_ylim()
    labels = [
        t.get_text()
        for t in ax.yaxis.get_majorticklabels() + ax.yaxis.get_minorticklabels()
        if t.get_text() and low <= t.get_position()[1] <= high
    ]
    assert len(labels) > 2, labels
    assert all(math.isfinite(e["eval_ppl"]) for e in events(out, "eval"))
