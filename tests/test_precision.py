"""--precision bf16-true: bf16 weights (no fp32 master copy, no autocast), moments per
--state-dtype, resume identical; apply_precision, the one place of the precision logic."""

from __future__ import annotations

import shutil

import pytest
import torch

from _pretrain_fixtures import events, pretrain_argv
from galorekit.cli import main
from galorekit.models import build_model
from galorekit.train.checkpoint import find_latest_checkpoint, load_checkpoint
from galorekit.train.precision import apply_precision, autocast_for, weight_dtype


def test_apply_precision_casts_weights_and_keeps_rotary_frequencies():
    model = build_model("llama_tiny", vocab_size=32, seed=0)
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    autocast = apply_precision(model, "bf16-true", torch.device("cpu"))
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert (model.get_output_embeddings().weight is model.get_input_embeddings().weight) == tied
    assert all(b.dtype == torch.float32 for n, b in model.named_buffers() if "inv_freq" in n)
    assert model.config.dtype == torch.bfloat16
    with autocast():  # no autocast: bf16 weights compute in bf16 as they are
        assert not torch.is_autocast_enabled("cpu")
    apply_precision(model, "fp32", torch.device("cpu"))
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    with autocast_for("bf16-mixed", torch.device("cpu"))():
        assert torch.is_autocast_enabled("cpu")
    assert weight_dtype("bf16-mixed") == torch.float32
    with pytest.raises(ValueError, match="--precision must be one of fp32, bf16-mixed, bf16-true"):
        weight_dtype("fp16")


def _state(out):
    return load_checkpoint(find_latest_checkpoint(out / "checkpoints"))


@pytest.mark.slow
@pytest.mark.parametrize("state_dtype", [None, "float32"])
def test_pretrain_bf16_true_holds_bf16_weights(pretrain_corpus, tmp_path, state_dtype):
    out = tmp_path / "run"
    extra = ["--state-dtype", state_dtype] if state_dtype else []
    argv = pretrain_argv(pretrain_corpus, out, "--max-steps", "3", "--precision", "bf16-true")
    assert main([*argv, "--rank", "8", "--update-proj-gap", "2", *extra]) == 0
    state = _state(out)
    assert {v.dtype for v in state["model"].values() if v.is_floating_point()} <= {
        torch.bfloat16,
        torch.float32,  # rotary inv_freq buffers only
    }
    assert state["model"]["model.embed_tokens.weight"].dtype == torch.bfloat16
    moments = {
        v.dtype
        for s in state["optimizer"]["state"].values()
        for k, v in s.items()
        if k in ("exp_avg", "exp_avg_sq")
    }
    assert moments == {getattr(torch, state_dtype or "bfloat16")}
    assert events(out, "eval")[-1]["eval_loss"] < events(out, "train")[0]["loss"]


@pytest.mark.slow
def test_bf16_true_stochastic_resume_is_identical(pretrain_corpus, tmp_path):
    common = ["--max-steps", "4", "--save-every", "2", "--precision", "bf16-true", "--rank", "8"]
    common += ["--update-proj-gap", "3", "--weight-rounding", "stochastic"]  # RNG restored too
    straight, halted = tmp_path / "straight", tmp_path / "halted"
    assert main([*pretrain_argv(pretrain_corpus, straight), *common]) == 0
    assert main([*pretrain_argv(pretrain_corpus, halted), *common]) == 0
    shutil.rmtree(halted / "checkpoints" / "step-00000004")  # killed after the step-2 checkpoint
    assert main([*pretrain_argv(pretrain_corpus, halted), *common, "--resume"]) == 0
    a, b = _state(straight), _state(halted)
    assert a["step"] == b["step"] == 4
    for key, value in a["model"].items():
        assert value.dtype == b["model"][key].dtype and torch.equal(value, b["model"][key]), key
