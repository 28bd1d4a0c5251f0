"""`galore memory` for the flags of a `galore pretrain` run agrees within 5% with what that run
holds (its checkpoint: the weights and optimizer states in their dtypes) and with what `galore
memory --measure` measures of the same configuration (tensor bytes: gradients, saved activations):
fp32, bf16-true (no float32 master copy) and bf16-true 8-bit layer-wise, the 7B recipe's setting.
A measured-vs-estimated test, never timed."""

from __future__ import annotations

import json

import pytest
import torch

from _pretrain_fixtures import pretrain_argv
from galorekit.cli import main
from galorekit.train.checkpoint import find_latest_checkpoint, load_checkpoint

pytestmark = pytest.mark.slow

SHARED = ["--model", "llama_tiny", "--rank", "8", "--seq-len", "32", "--batch-size", "4"]


def _tensor_bytes(obj) -> int:
    """Bytes of the unique tensor storages in a (nested) state dict."""
    seen: dict[int, int] = {}

    def walk(o):
        if isinstance(o, torch.Tensor):
            seen[o.untyped_storage().data_ptr()] = o.untyped_storage().nbytes()
        elif isinstance(o, dict):
            for v in o.values():
                walk(v)
        elif isinstance(o, list | tuple):
            for v in o:
                walk(v)

    walk(obj)
    return sum(seen.values())


@pytest.mark.parametrize(
    "flags",
    [
        ["--precision", "fp32", "--method", "galore_adamw"],
        ["--precision", "bf16-true", "--method", "galore_adamw"],
        ["--precision", "bf16-true", "--method", "galore_adamw8bit", "--layerwise"],
    ],
    ids=["fp32", "bf16-true", "bf16-true-8bit-layerwise"],
)
def test_estimate_agrees_with_the_run_within_5_percent(pretrain_corpus, tmp_path, flags):
    run = tmp_path / "run"
    argv = pretrain_argv(pretrain_corpus, run, "--max-steps", "2", *SHARED, *flags)
    assert main(argv) == 0
    state = load_checkpoint(find_latest_checkpoint(run / "checkpoints"))
    vocab = state["model"]["model.embed_tokens.weight"].shape[0]

    report = tmp_path / "memory.json"
    memory = ["memory", *SHARED, *flags, "--vocab-size", str(vocab), "--json", str(report)]
    assert main([*memory, "--measure", "--measure-steps", "2", "--device", "cpu"]) == 0
    result = json.loads(report.read_text())
    estimate, measured = result["estimate"], result["measured"]

    # what the pretrain run holds: its weights (no fp32 copy under bf16-true) and its states
    held = {
        "weights": _tensor_bytes(state["model"]),
        "optimizer_states": _tensor_bytes(state["optimizer"]),
    }
    for key, value in held.items():
        assert value == pytest.approx(estimate[key], rel=0.05), key
    # what the same configuration measures while it trains
    for key in ("weights", "gradients", "optimizer_states", "activations"):
        assert measured[key] == pytest.approx(estimate[key], rel=0.05), key
    measured_total = sum(measured[k] for k in ("weights", "gradients", "optimizer_states"))
    measured_total += measured["activations"]
    assert measured_total == pytest.approx(estimate["total"], rel=0.05)
    if "bf16-true" in flags:  # half of the fp32 weights: no master copy
        assert state["model"]["model.embed_tokens.weight"].dtype == torch.bfloat16
