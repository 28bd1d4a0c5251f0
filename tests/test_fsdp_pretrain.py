"""`galore pretrain --distributed fsdp` on 2 gloo processes (torchrun on loopback): FSDP2 equals one
process on the same global batch (ordinary and layer-wise GaLore with accumulation), optimizer
states are sharded by rows, a 2-rank sharded checkpoint resumes bit-identically under plain
`torchrun -m galorekit`, and mismatched resumes fail with a clear message.

Tolerance: with one subspace for the whole run (T > steps) FSDP2 matches one process to float
rounding (atol 2e-5). With subspace switches both differ as much as one process differs from
itself under another micro-batch split (~1e-3 on single weights): GaLore keeps Adam's moments
across a switch, which amplifies rounding-level differences in the new projector; that is GaLore's
behaviour, not FSDP's, so the comparison here uses a single subspace.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import torch

from _pretrain_fixtures import events, pretrain_argv
from galorekit.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

STEPS = 6


def args(corpus, out, *extra: str) -> list[str]:
    return pretrain_argv(
        corpus,
        out,
        "--total-batch-size", "8",
        "--max-steps", str(STEPS),
        "--eval-every", "3",
        "--save-every", "3",
        "--update-proj-gap", "100",
        "--rank", "8",
        *extra,
    )  # fmt: skip


FSDP = ("--nproc-per-node", "2", "--distributed", "fsdp")


def checkpoint(out, step: int = STEPS):
    return out / "checkpoints" / f"step-{step:08d}"


def model_of(out, tmp_path, step: int = STEPS) -> dict[str, torch.Tensor]:
    """The model of a run's checkpoint, sharded (DCP, consolidated here) or not."""
    ckpt = checkpoint(out, step)
    if (ckpt / "model").is_dir():
        from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

        target = tmp_path / f"{out.name}-{step}.pt"
        dcp_to_torch_save(ckpt / "model", target)
        return torch.load(target, weights_only=True)
    return torch.load(ckpt / "state.pt", weights_only=True)["model"]


def assert_rank_optimizers_equal(a, b, world_size: int = 2) -> None:
    """Every rank's optimizer file of checkpoints ``a`` and ``b`` holds the same tensors."""
    for r in range(world_size):
        name = f"optimizer-rank{r:05d}.pt"
        sa = torch.load(a / name, weights_only=True)["state"]
        sb = torch.load(b / name, weights_only=True)["state"]
        for pid in sa:
            for key, value in sa[pid].items():
                if isinstance(value, torch.Tensor):
                    assert torch.equal(value, sb[pid][key]), (r, pid, key)


def assert_models_close(a, b, atol=2e-5):
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=atol, msg=key)


@pytest.fixture(scope="module")
def runs(pretrain_corpus, tmp_path_factory):
    """One process (micro-batch 4, accumulation 2) against FSDP2 on 2 processes."""
    root = tmp_path_factory.mktemp("fsdp")
    out = {name: root / name for name in ("single", "fsdp")}
    # under FSDP2 every matrix is projected on the right: the single process does the same
    assert main(args(pretrain_corpus, out["single"], "--proj-type", "right")) == 0
    assert main(args(pretrain_corpus, out["fsdp"], *FSDP)) == 0
    return out


def test_fsdp_equals_one_process(runs, tmp_path):
    single, fsdp = runs["single"], runs["fsdp"]
    assert_models_close(model_of(single, tmp_path), model_of(fsdp, tmp_path))
    a, b = events(single, "eval"), events(fsdp, "eval")
    assert [e["step"] for e in b] == [3, 6]
    for x, y in zip(a, b, strict=True):
        assert y["eval_loss"] == pytest.approx(x["eval_loss"], rel=1e-5)
    for x, y in zip(events(single, "train"), events(fsdp, "train"), strict=True):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-5)
        assert y["grad_norm"] == pytest.approx(x["grad_norm"], rel=1e-4)  # clipped at 1.0


def test_optimizer_state_is_sharded_by_rows(runs):
    single = torch.load(checkpoint(runs["single"]) / "state.pt", weights_only=True)["optimizer"]
    parts = [
        torch.load(checkpoint(runs["fsdp"]) / f"optimizer-rank{r:05d}.pt", weights_only=True)
        for r in range(2)
    ]
    galore = [pid for pid, s in single["state"].items() if "proj_right" in s]
    assert galore
    for pid in galore:
        whole = single["state"][pid]
        rows = [part["state"][pid]["exp_avg"].shape[0] for part in parts]
        assert sum(rows) == whole["exp_avg"].shape[0] and min(rows) < whole["exp_avg"].shape[0]
        right = parts[0]["state"][pid]["proj_right"]  # Qᵀ, replicated
        assert torch.equal(parts[1]["state"][pid]["proj_right"], right)
        # the same vectors up to sign (an exact-SVD fallback on one side, a Gram eigh on the
        # other); a vector's sign flips its moments' column with it
        signs = torch.sign((right * whole["proj_right"]).sum(dim=1))
        torch.testing.assert_close(right * signs[:, None], whole["proj_right"], atol=1e-4, rtol=0)
        stacked = torch.cat([part["state"][pid]["exp_avg"] for part in parts]) * signs
        torch.testing.assert_close(stacked, whole["exp_avg"], rtol=1e-4, atol=1e-6)


def test_sharded_checkpoint_resumes_bit_identically_under_torchrun(runs, pretrain_corpus, tmp_path):
    straight = runs["fsdp"]
    halted = tmp_path / "halted"
    shutil.copytree(straight, halted)
    shutil.rmtree(checkpoint(halted))
    argv = args(pretrain_corpus, halted, "--distributed", "fsdp", "--resume")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    proc = subprocess.run(
        [*cmd, "-m", "galorekit", *argv], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert events(halted, "eval")[-1]["eval_loss"] == events(straight, "eval")[-1]["eval_loss"]
    a, b = model_of(straight, tmp_path), model_of(halted, tmp_path)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert_rank_optimizers_equal(checkpoint(straight), checkpoint(halted))


def test_sharded_checkpoint_refuses_another_layout(runs, pretrain_corpus, tmp_path, capsys):
    halted = tmp_path / "halted"
    shutil.copytree(runs["fsdp"], halted)
    shutil.rmtree(checkpoint(halted))
    before = sorted(p.name for p in (halted / "checkpoints").iterdir())
    # one process, no FSDP: the sharded checkpoint cannot be loaded there
    assert main(args(pretrain_corpus, halted, "--resume")) != 0
    assert "--distributed fsdp" in capsys.readouterr().err
    assert sorted(p.name for p in (halted / "checkpoints").iterdir()) == before


def test_layerwise_fsdp_with_accumulation_equals_one_process(pretrain_corpus, tmp_path):
    """FSDP2 fires the layer-wise hooks after its reduce-scatter, on the sharded gradient; with
    micro-batch 2 per rank the hooks see two backwards per step, as one process does."""
    single, fsdp = tmp_path / "single", tmp_path / "fsdp"
    common = ("--layerwise", "--batch-size", "2")
    assert main(args(pretrain_corpus, single, *common, "--proj-type", "right")) == 0
    assert main(args(pretrain_corpus, fsdp, *common, *FSDP)) == 0
    assert_models_close(model_of(single, tmp_path), model_of(fsdp, tmp_path))
    for x, y in zip(events(single, "train"), events(fsdp, "train"), strict=True):
        assert y["grad_norm"] == pytest.approx(x["grad_norm"], rel=1e-4)


def test_fsdp_8bit_galore_trains(pretrain_corpus, tmp_path):
    out = tmp_path / "run8"
    assert main(args(pretrain_corpus, out, "--method", "galore_adamw8bit", *FSDP)) == 0
    losses = [e["loss"] for e in events(out, "train")]
    assert losses[-1] < losses[0]
    part = torch.load(checkpoint(out) / "optimizer-rank00001.pt", weights_only=True)
    assert any(s.get("state1", torch.empty(0)).dtype == torch.uint8 for s in part["state"].values())
