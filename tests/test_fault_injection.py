"""SIGKILL a real `galore pretrain` process at chosen and random points — inside checkpoint writes,
while pruning, between steps — then `--resume`: the run ends exactly as the uninterrupted run
(same final evaluation, bit for bit), every step logged once, one end event, no leftovers.

The kill points are hooks installed by a small runner script (``_RUNNER``) in the child process
only; nothing in galorekit knows about them.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest

from _pretrain_fixtures import events, pretrain_argv
from galorekit.cli import main

pytestmark = pytest.mark.slow

STEPS = 6

_RUNNER = r"""
import os, signal, sys
from pathlib import Path

import torch

from galorekit.cli import main
from galorekit.train import checkpoint as ck

torch.set_num_threads(1)  # as the tests' process (conftest): the same arithmetic, bit for bit
mode, n = sys.argv[1], int(sys.argv[2])
calls = [0]


def hit():
    calls[0] += 1
    if calls[0] == n:
        os.kill(os.getpid(), signal.SIGKILL)


if mode == "state_written":  # state.pt written in the temporary directory, no meta.json yet
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        hit()

    torch.save = save
elif mode == "before_rename":  # the temporary checkpoint complete, not yet renamed into place
    real_fsync = ck.fsync_tree  # the name the checkpoint writer calls

    def fsync_tree(root):
        real_fsync(root)
        hit()

    ck.fsync_tree = fsync_tree
elif mode == "while_pruning":  # an old checkpoint half deleted: its meta.json already gone
    real_rmtree = ck.shutil.rmtree

    def rmtree(path, *args, **kwargs):
        meta = Path(path) / "meta.json"
        if meta.exists():
            meta.unlink()
            hit()
        real_rmtree(path, *args, **kwargs)

    ck.shutil.rmtree = rmtree
sys.exit(main(sys.argv[3:]))
"""


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    path = tmp_path_factory.mktemp("runner") / "runner.py"
    path.write_text(_RUNNER)
    return path


@pytest.fixture(scope="module")
def corpus(pretrain_corpus):
    return pretrain_corpus


def _argv(corpus, out) -> list[str]:
    return pretrain_argv(
        corpus, out, "--max-steps", str(STEPS), "--save-every", "1", "--eval-every", "3"
    )


def _run(runner, mode: str, n: int, argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(runner), mode, str(n), *argv],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory):
    """The final evaluation of the uninterrupted run."""
    out = tmp_path_factory.mktemp("reference") / "run"
    assert main(_argv(corpus, out)) == 0
    return events(out, "eval")[-1]["eval_loss"]


def _resume_and_compare(out, reference: float, capsys) -> str:
    capsys.readouterr()
    assert main(["pretrain", "--resume", "--output-dir", str(out)]) == 0
    assert [e["step"] for e in events(out, "train")] == list(range(1, STEPS + 1))
    assert len(events(out, "end")) == 1
    assert events(out, "eval")[-1]["eval_loss"] == reference  # bit-identical
    ckpts = out / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-00000005", "step-00000006"]
    assert not [p for p in out.iterdir() if p.name.startswith(".") and ".tmp" in p.name]
    return capsys.readouterr().out


@pytest.mark.parametrize("mode", ["state_written", "before_rename", "while_pruning"])
def test_kill_inside_checkpoint_writes(runner, corpus, tmp_path, reference, mode, capsys):
    out = tmp_path / "run"
    killed = _run(runner, mode, 3, _argv(corpus, out))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    leftovers = [p.name for p in (out / "checkpoints").iterdir() if not p.name.startswith("step-")]
    leftovers += [
        p.name for p in (out / "checkpoints").glob("step-*") if not (p / "meta.json").exists()
    ]
    assert leftovers  # the kill left something to clean up
    said = _resume_and_compare(out, reference, capsys)
    assert "took over the lock of a process that died" in said
    assert "removed what an interrupted run left" in said


def test_kill_at_a_random_moment(runner, corpus, tmp_path, reference, capsys):
    rng = random.Random(os.environ.get("PYTEST_XDIST_WORKER", "seed") + str(time.time_ns()))
    after = rng.randint(1, STEPS - 2)  # train events seen before the kill
    delay = rng.uniform(0.0, 0.3)  # then somewhere inside the next step or its checkpoint
    out = tmp_path / "run"
    argv = [sys.executable, str(runner), "none", "0", *_argv(corpus, out)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if len(events(out, "train")) >= after:
                break
        except (FileNotFoundError, ValueError):
            pass
        time.sleep(0.02)
    time.sleep(delay)
    proc.kill()
    proc.communicate(timeout=60)
    if proc.returncode == 0:  # finished before the kill landed: a resume is a no-op
        return
    _resume_and_compare(out, reference, capsys)
