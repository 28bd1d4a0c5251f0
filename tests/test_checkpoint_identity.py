"""What every training command checks when it resumes, before anything is loaded into the run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from galorekit.train.checkpoint import CheckpointError, check_identity
from galorekit.train.loop import restore_rank_rng, rng_state


def test_a_checkpoint_of_another_run_is_refused_naming_each_difference() -> None:
    ours = {"model": "llama_9m", "method": "galore_adamw", "batch_size": 8}
    check_identity(Path("ck"), {"identity": dict(ours)}, ours, list(ours))  # the same run
    theirs = {"identity": {**ours, "method": "adamw", "batch_size": 4}}
    with pytest.raises(CheckpointError, match="belongs to another run") as refused:
        check_identity(Path("ck"), theirs, ours, list(ours))
    message = str(refused.value)
    assert "method: checkpoint 'adamw' vs now 'galore_adamw'" in message
    assert "batch_size: checkpoint 4 vs now 8" in message and "model" not in message
    # a key outside the checked ones does not count
    check_identity(Path("ck"), theirs, ours, ["model"])


def test_each_rank_gets_its_own_rng_state_back_only_in_the_same_world() -> None:
    torch.manual_seed(1)
    rank0 = rng_state()
    torch.manual_seed(2)
    rank1 = rng_state()
    ckpt = {"rng": rank0, "rng_ranks": [rank0, rank1]}
    restore_rank_rng(ckpt, rank=1, world_size=2)
    drawn = torch.rand(3)
    torch.manual_seed(2)
    assert torch.equal(drawn, torch.rand(3))  # rank 1's stream
    restore_rank_rng(ckpt, rank=1, world_size=3)  # another world size: rank 0's state
    drawn = torch.rand(3)
    torch.manual_seed(1)
    assert torch.equal(drawn, torch.rand(3))
