"""`galore pretrain` on 2 gloo processes (torchrun on loopback): equal to one process on the same
global batch (ordinary and layer-wise GaLore, and low-rank communication), a 2-rank checkpoint
resumes under plain `torchrun -m galorekit`, rank 0 alone writes the run, bad input fails before
any process starts."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys

import pytest
import torch

from _pretrain_fixtures import events, pretrain_argv
from galorekit.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

STEPS = 8


@pytest.fixture(scope="module")
def corpus(pretrain_corpus):
    return pretrain_corpus


def args(corpus, out, *extra: str) -> list[str]:
    return pretrain_argv(
        corpus,
        out,
        "--total-batch-size", "8",
        "--max-steps", str(STEPS),
        "--eval-every", "4",
        "--save-every", "4",
        "--update-proj-gap", "3",
        "--rank", "8",
        # these tests compare trajectories across world sizes, whose gradients differ by
        # rounding: the paper's exact SVD keeps the projectors' differences at that level
        "--svd", "exact",
        *extra,
    )  # fmt: skip


def final_model(out) -> dict[str, torch.Tensor]:
    state = out / "checkpoints" / f"step-{STEPS:08d}" / "state.pt"
    return torch.load(state, weights_only=True)["model"]


def assert_models_close(a, b, atol=2e-5):
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=atol, msg=key)


@pytest.fixture(scope="module")
def runs(corpus, tmp_path_factory):
    """One process (micro-batch 4, accumulation 2) against 2 processes (micro-batch 4 each),
    ordinary GaLore without clipping (so that low-rank communication is comparable too)."""
    root = tmp_path_factory.mktemp("runs")
    out = {name: root / name for name in ("single", "ddp", "lowrank")}
    assert main(args(corpus, out["single"], "--max-grad-norm", "0")) == 0
    assert main(args(corpus, out["ddp"], "--max-grad-norm", "0", "--nproc-per-node", "2")) == 0
    extra = ("--max-grad-norm", "0", "--nproc-per-node", "2", "--lowrank-comm")
    assert main(args(corpus, out["lowrank"], *extra)) == 0
    return out


def test_two_ranks_equal_one_process(runs):
    single, ddp = runs["single"], runs["ddp"]
    assert_models_close(final_model(single), final_model(ddp))
    a, b = events(single, "eval"), events(ddp, "eval")
    assert [e["step"] for e in b] == [4, 8]
    for x, y in zip(a, b, strict=True):
        assert y["eval_loss"] == pytest.approx(x["eval_loss"], rel=1e-5)
    train_a, train_b = events(single, "train"), events(ddp, "train")
    # rank 0 alone logs: each step once
    assert [e["step"] for e in train_b] == list(range(1, STEPS + 1))
    for x, y in zip(train_a, train_b, strict=True):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-5)
    config = json.loads((ddp / "config.json").read_text())
    assert config["world_size"] == 2 and config["total_batch_size"] == 8
    assert (ddp / "summary.md").exists()


def test_lowrank_communication_matches_full_allreduce_with_fewer_bytes(runs):
    full, low = events(runs["ddp"], "train"), events(runs["lowrank"], "train")
    n_params = events(runs["ddp"], "start")[0]["params"]
    assert all(e["comm_bytes"] == 4 * n_params for e in full)
    for e in low:
        refresh = (e["step"] - 1) % 3 == 0  # updates 0, 3, 6 recompute the projector
        assert (e["comm_bytes"] == 4 * n_params) == refresh, e
        assert e["comm_bytes"] <= 4 * n_params
    # without clipping GaLore reads only the projected gradient: the same training
    for x, y in zip(full, low, strict=True):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-4)
    assert_models_close(final_model(runs["single"]), final_model(runs["lowrank"]))


def test_checkpoint_of_two_ranks_resumes_under_torchrun(runs, corpus, tmp_path):
    """Step-4 checkpoint of the 2-rank run, resumed by `torchrun -m galorekit pretrain`."""
    straight = runs["ddp"]
    halted = tmp_path / "halted"
    shutil.copytree(straight, halted)
    shutil.rmtree(halted / "checkpoints" / f"step-{STEPS:08d}")
    argv = args(corpus, halted, "--max-grad-norm", "0", "--resume")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    proc = subprocess.run(
        [*cmd, "-m", "galorekit", *argv], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("galore pretrain —") == 1  # rank 0 alone prints the summary
    a, b = events(straight, "eval"), events(halted, "eval")
    assert [e["step"] for e in b] == [4, 8]
    assert b[-1]["eval_loss"] == a[-1]["eval_loss"]
    sa, sb = final_model(straight), final_model(halted)
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_two_rank_run_resumes_from_its_saved_config(runs, tmp_path):
    """`galore pretrain --resume --output-dir DIR`, nothing retyped: the saved config.json says
    two processes, so the command relaunches itself through torchrun and continues exactly."""
    straight = runs["ddp"]
    halted = tmp_path / "halted"
    shutil.copytree(straight, halted)
    shutil.rmtree(halted / "checkpoints" / f"step-{STEPS:08d}")
    assert main(["pretrain", "--resume", "--output-dir", str(halted)]) == 0
    a, b = events(straight, "eval"), events(halted, "eval")
    assert [e["step"] for e in b] == [4, 8] and b[-1]["eval_loss"] == a[-1]["eval_loss"]


def test_layerwise_two_ranks_equal_one_process(corpus, tmp_path):
    """Layer-wise GaLore: no DDP wrapper, the optimizer's hooks all-reduce (previous-step
    clipping included)."""
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    assert main(args(corpus, single, "--layerwise")) == 0
    assert main(args(corpus, ddp, "--layerwise", "--nproc-per-node", "2")) == 0
    assert_models_close(final_model(single), final_model(ddp))
    a, b = events(single, "train"), events(ddp, "train")
    for x, y in zip(a, b, strict=True):
        assert y["grad_norm"] == pytest.approx(x["grad_norm"], rel=1e-4)
        assert math.isfinite(y["loss"]) and y["comm_bytes"] > 0


def test_sigterm_stops_every_rank_at_one_step_with_a_checkpoint(corpus, tmp_path):
    """SIGTERM to `galore pretrain --nproc-per-node 2`: forwarded through torchrun, all ranks stop
    after the same step, rank 0 checkpoints, the exit code says why."""
    import signal
    import time

    out = tmp_path / "run"
    argv = args(corpus, out, "--max-steps", "2000", "--eval-every", "0", "--save-every", "0")
    argv += ["--nproc-per-node", "2"]
    proc = subprocess.Popen([sys.executable, "-m", "galorekit", *argv], stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while time.time() < deadline and not _trained(out, 2):
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 128 + signal.SIGTERM, err.decode()[-3000:]
    interrupted = events(out, "interrupted")
    assert len(interrupted) == 1, err.decode()[-3000:]
    step = interrupted[0]["step"]
    assert 2 <= step < 2000
    assert (out / "checkpoints" / f"step-{step:08d}" / "state.pt").exists()
    assert b"--resume" in err


def _trained(out, steps: int) -> bool:
    try:
        return len(events(out, "train")) >= steps
    except (FileNotFoundError, json.JSONDecodeError):
        return False


def test_relora_two_ranks_equal_one_process(corpus, tmp_path):
    """ReLoRA under DDP: merges happen on every rank, re-initialised adapters come from rank 0."""
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    extra = ("--method", "relora", "--relora-reset-every", "3", "--max-grad-norm", "0")
    assert main(args(corpus, single, *extra)) == 0
    assert main(args(corpus, ddp, *extra, "--nproc-per-node", "2")) == 0
    assert len(events(ddp, "relora_reset")) == len(events(single, "relora_reset")) == 2
    assert_models_close(final_model(single), final_model(ddp))
