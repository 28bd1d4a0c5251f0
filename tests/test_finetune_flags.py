"""`galore finetune`: every tuning flag has the effect it promises (tiny models, 1-16 steps)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification

from _finetune_fixtures import parse, save_tiny_encoder, tiny_args, tiny_data_files, write_rows
from galorekit.analysis import state_bytes as held_state_bytes
from galorekit.data.classification import load_classification_data
from galorekit.memory.optimizer_states import optimizer_state_tensors, total_bytes
from galorekit.train import finetune as ft
from galorekit.train import finetune_loop as fl
from galorekit.train import finetune_methods as fm
from galorekit.train.finetune_loop import warmup_linear
from galorekit.train.logging import read_metrics

QUERY = "bert.encoder.layer.0.attention.self.query.weight"  # a GaLore / LoRA target
EMBEDDINGS = "bert.embeddings.word_embeddings.weight"  # not a target
LR = 1e-2


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> Path:
    return save_tiny_encoder(tmp_path_factory.mktemp("models") / "bert", "bert")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    return tiny_data_files(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def start(bert) -> dict[str, torch.Tensor]:
    """The weights every run starts from (the head's are re-drawn under --seed)."""
    return AutoModelForSequenceClassification.from_pretrained(bert, num_labels=2).state_dict()


def data_of(*argv: str):
    return load_classification_data(ft.resolve_config(parse(*argv)).data)


def trained(model: Path, files, out: Path, steps: int, *extra: str) -> dict[str, torch.Tensor]:
    """The weights after ``steps`` steps of batch 16 at lr 1e-2 (the end is evaluated and kept
    as the best checkpoint)."""
    argv = tiny_args(model, files, out, "--max-train-samples", str(16 * steps), "--epochs", "1",
                     "--lr", str(LR), *extra)  # fmt: skip
    result = ft.finetune(ft.resolve_config(parse(*argv)))[0]
    assert result.steps == steps
    return load_file(str(out / fl.BEST_DIR / "model.safetensors"))


# --------------------------------------------------------------------------- data flags


def test_problem_type(tmp_path):
    rows = [{"text": f"review {i}", "stars": i % 5} for i in range(40)]
    path = str(write_rows(tmp_path / "stars.csv", rows))
    base = ("--train-file", path, "--label-column", "stars")
    auto = data_of(*base)
    assert (
        auto.task.label_names == ("0", "1", "2", "3", "4") and auto.task.metric_task == "multiclass"
    )
    regression = data_of(*base, "--problem-type", "regression")
    assert regression.task.is_regression and regression.task.metric_task == "regression"
    assert sorted(set(regression.train.labels)) == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_validation_fraction(files):
    default = data_of("--train-file", str(files["train"]))
    assert (len(default.train), len(default.evals["validation"])) == (230, 26)  # 10% of 256
    quarter = data_of("--train-file", str(files["train"]), "--validation-fraction", "0.25")
    assert (len(quarter.train), len(quarter.evals["validation"])) == (192, 64)


def test_max_eval_samples(files):
    argv = ("--train-file", str(files["train"]), "--validation-file", str(files["val"]))
    full = data_of(*argv).evals["validation"]
    subset = data_of(*argv, "--max-eval-samples", "10").evals["validation"]
    assert len(full) == 96 and len(subset) == 10
    assert set(subset.texts) <= set(full.texts)


def test_seed_changes_the_split_and_the_initialisation(bert, files, tmp_path):
    def held_out(seed: str) -> list[str]:
        return (
            data_of("--train-file", str(files["train"]), "--seed", seed).evals["validation"].texts
        )

    assert held_out("1") == held_out("1") and held_out("1") != held_out("2")

    runs = {name: trained(bert, files, tmp_path / name, 1, "--method", "adamw", "--seed", seed)
            for name, seed in (("a", "1"), ("b", "1"), ("c", "2"))}  # fmt: skip
    assert all(torch.equal(runs["a"][k], runs["b"][k]) for k in runs["a"])  # reproducible
    assert not torch.equal(runs["a"]["classifier.weight"], runs["c"]["classifier.weight"])


# --------------------------------------------------------------------------- GaLore flags


def test_scale_multiplies_the_first_update(bert, files, tmp_path, start):
    one = trained(bert, files, tmp_path / "one", 1, "--scale", "1")
    three = trained(bert, files, tmp_path / "three", 1, "--scale", "3")
    step_one, step_three = one[QUERY] - start[QUERY], three[QUERY] - start[QUERY]
    assert step_one.abs().max() > 1e-5
    torch.testing.assert_close(step_three, 3 * step_one, rtol=1e-4, atol=1e-7)
    assert torch.equal(one[EMBEDDINGS], three[EMBEDDINGS])  # plain AdamW: no scale


def test_update_proj_gap_sets_the_refresh_period(bert, files, tmp_path):
    # two steps: a period of 1 refreshes the subspace before the second, 2 and 500 do not
    runs = {gap: trained(bert, files, tmp_path / gap, 2, "--update-proj-gap", gap)
            for gap in ("1", "2", "500")}  # fmt: skip
    assert torch.equal(runs["2"][QUERY], runs["500"][QUERY])
    assert (runs["1"][QUERY] - runs["500"][QUERY]).abs().max() > 1e-3 * LR


def test_proj_type_picks_the_projected_side(bert, files, tmp_path, start):
    left = trained(bert, files, tmp_path / "left", 1, "--proj-type", "left")[QUERY] - start[QUERY]
    right = (
        trained(bert, files, tmp_path / "right", 1, "--proj-type", "right")[QUERY] - start[QUERY]
    )
    assert not torch.allclose(left, right, rtol=0, atol=1e-3 * float(left.abs().max()))
    # either way the first update lies in a rank-4 subspace (P·N or N·Qᵀ)
    assert torch.linalg.matrix_rank(left) <= 4 and torch.linalg.matrix_rank(right) <= 4


# --------------------------------------------------------------------------- optimisation flags


def test_weight_decay_is_decoupled(bert, files, tmp_path):
    plain = trained(bert, files, tmp_path / "plain", 1)
    decayed = trained(bert, files, tmp_path / "decayed", 1, "--weight-decay", "0.5")
    for name in (QUERY, EMBEDDINGS, "classifier.weight"):  # GaLore, plain and head weights
        assert not torch.equal(plain[name], decayed[name])
        # AdamW's decoupled decay after the update: w <- (w + update) * (1 - lr * wd)
        torch.testing.assert_close(decayed[name], plain[name] * (1 - LR * 0.5))


def test_lora_alpha_scales_the_merged_update(bert, files, tmp_path, start):
    four = trained(bert, files, tmp_path / "four", 1, "--method", "lora", "--lora-alpha", "4")
    eight = trained(bert, files, tmp_path / "eight", 1, "--method", "lora", "--lora-alpha", "8")
    delta_four, delta_eight = four[QUERY] - start[QUERY], eight[QUERY] - start[QUERY]
    # merged update (alpha / r)·B·A: twice alpha doubles it, and Adam's first step on B's twice
    # larger gradient is between the same (|g| >> eps) and twice (|g| << eps) as large
    ratio = float(delta_eight.norm() / delta_four.norm())
    assert 2 * 0.99 < ratio < 4 * 1.01
    assert torch.equal(four["classifier.weight"], eight["classifier.weight"])  # trained fully


def test_max_grad_norm_clips(bert, files, tmp_path, start):
    free = trained(bert, files, tmp_path / "free", 1, "--method", "adamw", "--max-grad-norm", "0")
    clipped = trained(bert, files, tmp_path / "clipped", 1, "--method", "adamw",
                      "--max-grad-norm", "1e-12")  # fmt: skip
    moved = (free[QUERY] - start[QUERY]).abs().max()
    assert moved > 1e-5
    # a gradient clipped to norm 1e-12 is far below Adam's eps (1e-6): the weights barely move
    assert (clipped[QUERY] - start[QUERY]).abs().max() < 1e-3 * moved


def test_precision_bf16_mixed_autocasts_the_training_step(bert, files, tmp_path, start):
    fp32 = trained(bert, files, tmp_path / "fp32", 2, "--method", "galore_adamw")
    bf16 = trained(bert, files, tmp_path / "bf16", 2, "--method", "galore_adamw",
                   "--precision", "bf16-mixed")  # fmt: skip
    assert all(v.dtype != torch.bfloat16 for v in bf16.values())  # fp32 weights, as ever
    assert not torch.equal(fp32[QUERY], bf16[QUERY])  # the forward ran in bfloat16
    assert (bf16[QUERY] - start[QUERY]).abs().max() > 0 and torch.isfinite(bf16[QUERY]).all()
    losses = [e["loss"] for e in read_metrics(tmp_path / "bf16") if e["event"] == "train"]
    assert losses and all(math.isfinite(x) for x in losses)


def test_log_every_sets_the_train_events(bert, files, tmp_path):
    def train_events(log_every: str) -> list[dict]:
        out = tmp_path / log_every
        trained(bert, files, out, 16, "--method", "adamw", "--warmup-ratio", "0.25",
                "--log-every", log_every)  # fmt: skip
        return [e for e in read_metrics(out) if e["event"] == "train"]

    every = train_events("1")
    assert [e["step"] for e in every] == list(range(1, 17))
    eighth = train_events("8")
    assert [e["step"] for e in eighth] == [8, 16]
    assert [e["step"] for e in train_events("5")] == [5, 10, 15, 16]  # and the last step
    # an event's loss is the mean over its window; the lr follows warm-up + linear decay
    losses = [e["loss"] for e in every]
    assert eighth[0]["loss"] == pytest.approx(sum(losses[:8]) / 8, rel=1e-12)
    assert eighth[1]["loss"] == pytest.approx(sum(losses[8:]) / 8, rel=1e-12)
    expected = [LR * warmup_linear(s, warmup=4, total=16) for s in range(16)]
    assert [e["lr"] for e in every] == pytest.approx(expected, rel=1e-12)


# --------------------------------------------------------------------------- reported numbers


def test_reported_optimizer_state_counts_shared_8bit_maps_once(files, tmp_path, monkeypatch):
    # hidden 64 and rank 64: the attention matrices' moments (64x64) are stored in 8 bits,
    # every one of them pointing at the same two quantization maps
    model = save_tiny_encoder(tmp_path / "bert64", "bert", hidden_size=64)
    built = []

    def build_method(model, cfg):
        built.append(fm.build_method(model, cfg))
        return built[-1]

    monkeypatch.setattr(fl, "build_method", build_method)
    argv = tiny_args(model, files, tmp_path / "run", "--method", "galore_adamw8bit",
                     "--rank", "64", "--max-train-samples", "16", "--epochs", "1")  # fmt: skip
    result = ft.finetune(ft.resolve_config(parse(*argv)))[0]
    optimizer = built[0][1]
    with_maps = [s for s in optimizer.state.values() if "qmap1" in s]
    assert len(with_maps) >= 2
    held = held_state_bytes(optimizer)
    assert result.optimizer_state_bytes == held == total_bytes(optimizer_state_tensors(optimizer))
    # counting every parameter's reference to the maps would add 2 x 256 float32 per parameter
    per_reference = sum(
        v.numel() * v.element_size()
        for s in optimizer.state.values()
        for v in s.values()
        if isinstance(v, torch.Tensor)
    )
    assert per_reference - held == (len(with_maps) - 1) * 2 * 256 * 4
