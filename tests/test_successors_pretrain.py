"""The successors in `galore pretrain`: the method rows and flags train end to end, resume, and
FSDP2 on 2 gloo processes equals one process (Fira's and APOLLO's norms are summed over the
row shards; one subspace for the run, as in tests/test_fsdp_pretrain.py, whose tolerance
argument applies)."""

from __future__ import annotations

import json

import pytest
import torch

from _pretrain_fixtures import events, pretrain_argv
from galorekit.cli import main

pytestmark = pytest.mark.slow

STEPS = 6


def args(corpus, out, *extra: str) -> list[str]:
    return pretrain_argv(
        corpus,
        out,
        "--total-batch-size", "8",
        "--max-steps", str(STEPS),
        "--eval-every", "3",
        "--save-every", "3",
        "--rank", "8",
        *extra,
    )  # fmt: skip


def test_method_rows_and_flags_train_and_record_their_options(pretrain_corpus, tmp_path) -> None:
    runs = {
        "golore": ("--method", "golore_adamw", "--update-proj-gap", "2"),
        "fira8bit": ("--method", "galore_adamw8bit", "--residual", "fira"),
        "apollo_mini": ("--method", "apollo_mini"),
    }
    for name, extra in runs.items():
        assert main(args(pretrain_corpus, tmp_path / name, *extra)) == 0, name
        losses = [e["loss"] for e in events(tmp_path / name, "train")]
        assert losses[-1] < losses[0], name
    config = json.loads((tmp_path / "golore" / "config.json").read_text())
    assert config["random_after"] == 0.8 and config["method"] == "golore_adamw"
    config = json.loads((tmp_path / "apollo_mini" / "config.json").read_text())
    assert (config["scaling"], config["projection"], config["rank"]) == ("tensor", "random", 1)
    state = torch.load(
        tmp_path / "apollo_mini" / "checkpoints" / f"step-{STEPS:08d}" / "state.pt",
        weights_only=True,
    )["optimizer"]["state"]
    assert any("proj_seed" in s for s in state.values())
    assert not any("proj_right" in s or "proj_left" in s for s in state.values())


def test_refused_combination_is_a_one_line_error(pretrain_corpus, tmp_path, capsys) -> None:
    argv = args(pretrain_corpus, tmp_path / "bad", "--method", "adamw", "--residual", "fira")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "galore pretrain: error:" in err and "options of galorekit's GaLore methods" in err


@pytest.mark.distributed
@pytest.mark.parametrize("method", ["fira_adamw", "apollo_mini"])
def test_fsdp_equals_one_process(method, pretrain_corpus, tmp_path) -> None:
    from test_fsdp_pretrain import assert_models_close, model_of

    single, fsdp = tmp_path / "single", tmp_path / "fsdp"
    common = ("--method", method, "--update-proj-gap", "100")
    assert main(args(pretrain_corpus, single, *common, "--proj-type", "right")) == 0
    fsdp_flags = ("--nproc-per-node", "2", "--distributed", "fsdp")
    assert main(args(pretrain_corpus, fsdp, *common, *fsdp_flags)) == 0
    assert_models_close(model_of(single, tmp_path), model_of(fsdp, tmp_path))
