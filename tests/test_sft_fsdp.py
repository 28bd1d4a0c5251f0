"""`galore sft --distributed fsdp` on 2 gloo processes (torchrun on loopback) with a tiny offline
LLaMA: FSDP2 equals one process on the same global batch (train and validation losses, weights,
every generated answer and its accuracy, before and after), the export gathered from the shards
loads with transformers and gives the trained weights' logits, a sharded checkpoint resumes
bit-identically, layer-wise GaLore trains under FSDP2, and bad combinations are refused in one
line.

The ranks are launched with ``python -m torch.distributed.run`` (what ``--nproc-per-node 2``
relaunches; the layer-wise test goes through that flag). As in
``test_fsdp_pretrain``: one subspace for the whole run (T > steps, projected on the right as FSDP2
does) keeps the comparison at float rounding — with a rank (4) below the gradients' numerical
rank here: at rank 8 or 16 of these 32-wide matrices the projectors also span near-null
directions, where a sharded subspace iteration and an SVD pick different bases and Adam's
normalization turns their rounding-level components into full-size updates (measured: 3e-3 apart
after 3 steps at rank 16, 1.5e-7 at rank 4; AdamW alone: bit-identical).
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys

import pytest
import torch

from _sft_fixtures import review, save_tiny_chat_model, write_jsonl
from galorekit.cli import main
from test_fsdp_pretrain import (
    STEPS,
    assert_models_close,
    assert_rank_optimizers_equal,
    checkpoint,
    model_of,
)

pytestmark = [pytest.mark.slow, pytest.mark.distributed]


def rows(n: int) -> list[dict]:
    """Prompt/completion reviews: the tiny model learns to answer them within a few steps."""
    rng = random.Random(0)
    out = []
    for _ in range(n):
        text, label = review(rng)
        out.append({"prompt": f"Review: {text}. Sentiment:", "completion": f" {label}"})
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("sft-fsdp")
    return {
        "root": root,
        "model": str(save_tiny_chat_model(root / "model")),
        "data": str(write_jsonl(root / "train.jsonl", rows(64))),
    }


def sft_args(tiny, out, *extra: str) -> list[str]:
    return [
        "sft", "--model", tiny["model"], "--train-file", tiny["data"], "--output-dir", str(out),
        "--method", "galore_adamw", "--rank", "4", "--update-proj-gap", "100", "--lr", "1e-2",
        "--batch-size", "2", "--total-batch-size", "4", "--max-steps", str(STEPS),
        "--eval-every", "3", "--save-every", "3", "--generate-eval", "7", "--samples", "7",
        "--validation-fraction", "0.11", "--max-new-tokens", "3", "--max-grad-norm", "0",
        "--no-progress", "--no-tensorboard", *extra,
    ]  # fmt: skip


def torchrun(argv: list[str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    proc = subprocess.run(
        [*cmd, "-m", "galorekit", *argv], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def events(out, kind: str) -> list[dict]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["event"] == kind]


@pytest.fixture(scope="module")
def runs(tiny):
    """One process (micro-batch 2, accumulation 2) against FSDP2 on 2 processes (micro-batch 2
    each), both exporting."""
    root = tiny["root"]
    out = {name: root / name for name in ("single", "fsdp")}
    single = sft_args(tiny, out["single"], "--proj-type", "right")
    assert main([*single, "--export-dir", str(root / "export-single")]) == 0
    fsdp = sft_args(tiny, out["fsdp"], "--distributed", "fsdp")
    torchrun([*fsdp, "--export-dir", str(root / "export-fsdp")])
    return out


def test_fsdp_equals_one_process(runs, tmp_path):
    single, fsdp = runs["single"], runs["fsdp"]
    assert_models_close(model_of(single, tmp_path), model_of(fsdp, tmp_path))
    for x, y in zip(events(single, "train"), events(fsdp, "train"), strict=True):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-5)
    evals = [[e["eval_loss"] for e in events(out, "eval")] for out in (single, fsdp)]
    assert len(evals[1]) == 3  # before, step 3, after
    assert evals[1] == pytest.approx(evals[0], rel=1e-5)
    # every rank generated its block of the 7 prompts (4 + 3): the same answers as one process
    one, two = events(single, "generate"), events(fsdp, "generate")
    assert [e["when"] for e in two] == ["before", "after"]
    for x, y in zip(one, two, strict=True):
        assert y["n"] == x["n"] == 7
        assert y["samples"] == x["samples"] and y["accuracy"] == x["accuracy"]
    assert two[-1]["accuracy"] > 0.5  # it learned: the comparison is not of empty answers


def test_export_gathers_the_shards(runs, tiny, tmp_path):
    from transformers import AutoModelForCausalLM

    export = tiny["root"] / "export-fsdp"
    loaded = AutoModelForCausalLM.from_pretrained(export / "final").eval()
    trained = AutoModelForCausalLM.from_pretrained(tiny["model"])
    trained.load_state_dict(model_of(runs["fsdp"], tmp_path))
    ids = torch.tensor([[5, 17, 40, 99, 3, 250]])
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, trained.eval()(input_ids=ids).logits)
    record = json.loads((export / "best" / "galorekit_export.json").read_text())
    evals = {e["step"]: e["eval_loss"] for e in events(runs["fsdp"], "eval") if e["step"]}
    assert record["eval_loss"] == min(evals.values()) and record["step"] in evals


def test_sharded_checkpoint_resumes_bit_identically(runs, tmp_path):
    straight = runs["fsdp"]
    assert (checkpoint(straight) / "optimizer-rank00001.pt").is_file()
    halted = tmp_path / "halted"
    shutil.copytree(straight, halted)
    shutil.rmtree(checkpoint(halted))
    (halted / "summary.md").unlink()
    export = tmp_path / "export"  # not the straight run's
    torchrun(["sft", "--resume", "--output-dir", str(halted), "--export-dir", str(export)])
    a, b = model_of(straight, tmp_path), model_of(halted, tmp_path)
    assert all(torch.equal(a[k], b[k]) for k in a)
    for kind, key in (("eval", "eval_loss"), ("train", "loss"), ("generate", "accuracy")):
        logged = [[(e["step"], e[key]) for e in events(out, kind)] for out in (halted, straight)]
        assert logged[0] == logged[1], kind
    assert_rank_optimizers_equal(checkpoint(straight), checkpoint(halted))
    assert "accuracy before" in (halted / "summary.md").read_text()
    assert "×2 fsdp" in (halted / "summary.md").read_text()


def test_layerwise_fsdp_equals_one_process(runs, tiny, tmp_path):
    """The layer-wise hooks fire after FSDP2's reduce-scatter, on the sharded gradients; with no
    clipping and one micro-batch per rank they apply the update the single run applied."""
    out = tmp_path / "lw"
    extra = ("--layerwise", "--distributed", "fsdp", "--generate-eval", "0")
    assert main(sft_args(tiny, out, *extra, "--nproc-per-node", "2")) == 0  # galore's launcher
    assert_models_close(model_of(runs["single"], tmp_path), model_of(out, tmp_path))


def _refused(capsys, argv, *needles) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("galore sft: error:") and err.count("\n") == 1, err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.mark.parametrize(
    "extra, needle",
    [
        (("--method", "lora"), "not lora"),
        (("--method", "galore_adafactor"), "not galore_adafactor"),
        (("--proj-type", "left"), "--proj-type must be std or right"),
    ],
    ids=["lora", "adafactor", "left"],
)
def test_fsdp_refuses_what_it_cannot_shard(tiny, tmp_path, capsys, extra, needle):
    out = tmp_path / "r"
    argv = sft_args(tiny, out, "--distributed", "fsdp", "--nproc-per-node", "2", *extra)
    _refused(capsys, argv, needle)
    assert not out.exists()


def test_resume_refuses_another_layout(runs, tmp_path, capsys):
    halted = tmp_path / "halted"
    shutil.copytree(runs["fsdp"], halted)
    shutil.rmtree(checkpoint(halted))
    before = sorted(p.name for p in (halted / "checkpoints").iterdir())
    # one process: the sharded checkpoint of 2 ranks cannot be loaded there
    resume = ["sft", "--resume", "--output-dir", str(halted), "--no-progress"]
    _refused(capsys, resume, "--distributed fsdp --nproc-per-node 2")
    assert sorted(p.name for p in (halted / "checkpoints").iterdir()) == before
    # a whole (non-sharded) checkpoint is not resumed under FSDP
    single = tmp_path / "single"
    shutil.copytree(runs["single"], single)
    argv = ["sft", "--resume", "--output-dir", str(single), "--distributed", "fsdp"]
    _refused(capsys, argv, "--distributed")


def test_filler_generate_calls_are_dropped(tiny):
    """The padding a rank adds (``calls`` > its batches) runs generate on the filler prompt and
    returns only the answers to its own prompts."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from galorekit.data.sft import Prompt
    from galorekit.train.sft_eval import generate_answers

    model = AutoModelForCausalLM.from_pretrained(tiny["model"])
    tokenizer = AutoTokenizer.from_pretrained(tiny["model"])
    prompts = [
        Prompt(messages=None, text=f"Review: {w}. Sentiment:", answer="positive")
        for w in ("good", "bad")
    ]
    seen = []
    generate = model.generate
    model.generate = lambda **kw: seen.append(kw["input_ids"].shape[0]) or generate(**kw)
    plain = generate_answers(model, tokenizer, prompts, "cpu", max_new_tokens=2, batch_size=1)
    assert seen == [1, 1]
    filler = [Prompt(messages=None, text="Review: dull. Sentiment:", answer="negative")] * 3
    padded = generate_answers(
        model, tokenizer, prompts, "cpu", max_new_tokens=2, batch_size=1, calls=5, filler=filler
    )
    assert padded == plain and len(plain) == 2
    assert seen == [1, 1, 1, 1, 3, 3, 3]  # the two prompts, then three filler calls
