"""galore sft end to end on a tiny offline chat model: every method, resume bit-identical, export
that transformers loads with the same logits, bf16-true, packing, and one-line refusals."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from _sft_fixtures import chat_rows, save_tiny_chat_model, write_jsonl
from galorekit.cli import main
from galorekit.train.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("sft")
    return {
        "model": str(save_tiny_chat_model(root / "model")),
        "plain": str(save_tiny_chat_model(root / "plain", chat_template=False)),
        "data": str(write_jsonl(root / "train.jsonl", chat_rows(48))),
    }


def _args(tiny, out, *extra: str) -> list[str]:
    return [
        "sft", "--model", tiny["model"], "--train-file", tiny["data"], "--output-dir", str(out),
        "--batch-size", "4", "--max-steps", "4", "--rank", "4", "--generate-eval", "6",
        "--max-new-tokens", "3", "--no-progress", "--no-tensorboard", "--save-every", "2",
        *extra,
    ]  # fmt: skip


def _events(out, kind):
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["event"] == kind]


@pytest.mark.parametrize(
    "method",
    [
        ["adamw"],
        ["galore_adamw"],
        ["galore_adamw8bit", "--layerwise"],
        ["galore_adafactor", "--layerwise"],
        ["lora"],
    ],
    ids=lambda m: "-".join(m),
)
def test_each_method_trains_and_reports_before_and_after(tiny, tmp_path, capsys, method):
    out = tmp_path / "run"
    assert main(_args(tiny, out, "--method", *method, "--lr", "3e-3")) == 0
    printed = capsys.readouterr().out
    assert "accuracy before" in printed and "val_loss after" in printed
    evals = _events(out, "eval")
    assert [e["step"] for e in evals] == [0, 4]
    assert evals[1]["eval_loss"] < evals[0]["eval_loss"]  # it learned something
    generated = _events(out, "generate")
    assert [(g["when"], g["n"]) for g in generated] == [
        ("before", 5),
        ("after", 5),
    ]  # the validation split
    assert [e["step"] for e in _events(out, "train")][-1] == 4
    assert (out / "summary.md").read_text().count("before:") == 3  # the printed samples
    start = _events(out, "start")[0]
    assert (start["trainable"] < start["params"]) == (method == ["lora"])


def _trained_weights(out, step):
    return load_checkpoint(out / "checkpoints" / f"step-{step:08d}")["model"]


@pytest.mark.parametrize(
    "method", [["galore_adamw"], ["galore_adamw8bit", "--layerwise"]], ids=["galore", "8bit-lw"]
)
def test_resume_is_bit_identical(tiny, tmp_path, method):
    extra = (
        "--method",
        *method,
        "--total-batch-size",
        "8",
        "--lr",
        "3e-3",
        "--update-proj-gap",
        "2",
    )
    full = tmp_path / "full"
    assert main(_args(tiny, full, *extra)) == 0
    half = tmp_path / "half"
    shutil.copytree(full, half)
    shutil.rmtree(half / "checkpoints" / "step-00000004")
    (half / "summary.md").unlink()
    assert main(["sft", "--resume", "--output-dir", str(half), "--no-progress"]) == 0
    a, b = _trained_weights(full, 4), _trained_weights(half, 4)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the resumed log has each step once, and the before-measurement of the first start
    assert [e["step"] for e in _events(half, "train")] == [
        e["step"] for e in _events(full, "train")
    ]
    assert "accuracy before" in (half / "summary.md").read_text()


def test_resume_refuses_a_changed_trajectory_setting(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_args(tiny, out, "--method", "adamw")) == 0
    capsys.readouterr()
    code = main(["sft", "--resume", "--output-dir", str(out), "--lr", "0.5"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--lr" in err and "galore sft: error:" in err


@pytest.mark.parametrize("adapters", [False, True], ids=["merged", "adapter"])
def test_export_loads_with_transformers_and_gives_the_same_logits(tiny, tmp_path, adapters):
    from transformers import AutoModelForCausalLM

    from galorekit.train.sft import sft
    from galorekit.train.sft_config import build_config

    export = tmp_path / "export"
    cfg = build_config(
        {
            "model": tiny["model"], "train_file": tiny["data"], "output_dir": str(tmp_path / "r"),
            "batch_size": 4, "max_steps": 3, "rank": 4, "method": "lora", "lr": 1e-2,
            "generate_eval": 0, "progress": False, "tensorboard": False,
            "export_dir": str(export), "export_adapters": adapters,
        }
    )  # fmt: skip
    result = sft(cfg)
    ids = torch.tensor([[5, 17, 40, 99, 3]])
    with torch.no_grad():
        trained = result.model.eval()(input_ids=ids).logits
    if adapters:
        from peft import PeftModel

        base = AutoModelForCausalLM.from_pretrained(tiny["model"])
        loaded = PeftModel.from_pretrained(base, export / "final")
    else:
        loaded = AutoModelForCausalLM.from_pretrained(export / "final")
        assert not (export / "best").exists()  # no periodic evaluation: final only
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(input_ids=ids).logits, trained)


def test_best_export_with_periodic_evaluation(tiny, tmp_path):
    export = tmp_path / "export"
    args = _args(tiny, tmp_path / "r", "--method", "adamw", "--lr", "3e-3", "--eval-every", "2")
    assert main([*args, "--export-dir", str(export), "--generate-eval", "0"]) == 0
    record = json.loads((export / "best" / "galorekit_export.json").read_text())
    evals = {e["step"]: e["eval_loss"] for e in _events(tmp_path / "r", "eval") if e["step"]}
    assert record["eval_loss"] == min(evals.values()) and record["step"] in evals


def test_bf16_true_and_packing(tiny, tmp_path):
    out = tmp_path / "r"
    extra = (
        "--method",
        "galore_adamw",
        "--precision",
        "bf16-true",
        "--packing",
        "--max-steps",
        "2",
    )
    assert main([*_args(tiny, out, *extra), "--generate-eval", "0", "--max-seq-len", "64"]) == 0
    weights = _trained_weights(out, 2)
    assert {v.dtype for v in weights.values() if v.is_floating_point()} == {torch.bfloat16}
    assert _events(out, "start")[0]["train_examples"] < 48  # packed into fewer sequences


def _refused(capsys, args, *expected: str) -> str:
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("galore sft: error: ") and err.count("\n") == 1, err
    for text in expected:
        assert text in err, err
    return err


def test_bad_input_is_one_line_and_leaves_nothing(tiny, tmp_path, capsys):
    out = tmp_path / "never"
    base = _args(tiny, out)
    at = base.index("--model") + 1
    unknown = [*base[:at], str(tmp_path / "nope"), *base[at + 1 :]]
    _refused(capsys, unknown, "unknown model", "no such directory")
    bad_gguf = tmp_path / "broken.gguf"
    bad_gguf.write_bytes(b"GGUF not really")
    _refused(capsys, [*base[:at], str(bad_gguf), *base[at + 1 :]], "cannot read the GGUF file")
    remote = tmp_path / "remote"
    shutil.copytree(tiny["model"], remote)
    config = json.loads((remote / "config.json").read_text())
    config["model_type"] = "x-custom"  # known to no transformers release: its own code
    config["auto_map"] = {
        "AutoConfig": "configuration_x.XConfig",
        "AutoModelForCausalLM": "modeling_x.XForCausalLM",
    }
    (remote / "config.json").write_text(json.dumps(config))
    _refused(capsys, [*base[:at], str(remote), *base[at + 1 :]], "--trust-remote-code")
    plain = [*base[:at], tiny["plain"], *base[at + 1 :]]
    _refused(capsys, plain, "no chat template")
    columns = write_jsonl(tmp_path / "cols.jsonl", [{"question": "q", "answer": "a"}] * 4)
    data_at = base.index("--train-file") + 1
    _refused(capsys, [*base[:data_at], str(columns), *base[data_at + 1 :]], "question, answer")
    _refused(capsys, [*base, "--max-seq-len", "8", "--overlong", "refuse"], "longer than 8")
    if not torch.cuda.is_available():
        _refused(capsys, [*base, "--device", "cuda"], "no CUDA device")
    _refused(capsys, [*base, "--device", "tpu9"], "unknown --device")
    assert not out.exists()  # nothing was left behind by the refused runs


def test_a_directory_holding_a_run_is_refused(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_args(tiny, out, "--method", "adamw", "--max-steps", "2")) == 0
    before = (out / "metrics.jsonl").read_text()
    capsys.readouterr()
    _refused(capsys, _args(tiny, out, "--method", "adamw"), "already holds a run", "--overwrite")
    assert (out / "metrics.jsonl").read_text() == before


@pytest.mark.slow
def test_two_processes_compute_what_one_does_with_accumulation(tiny, tmp_path):
    """DDP through torchrun (gloo): 2 ranks × batch 2 = 1 process × batch 2 × accumulation 2."""
    extra = ("--method", "galore_adamw", "--lr", "3e-3", "--batch-size", "2", "--max-steps", "2")
    one, two = tmp_path / "one", tmp_path / "two"
    assert main([*_args(tiny, one, *extra), "--total-batch-size", "4", "--generate-eval", "0"]) == 0
    assert main([*_args(tiny, two, *extra), "--nproc-per-node", "2", "--generate-eval", "0"]) == 0
    a, b = _trained_weights(one, 2), _trained_weights(two, 2)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)
    losses = [[e["eval_loss"] for e in _events(out, "eval")] for out in (one, two)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)
    assert "×2 ddp" in (two / "summary.md").read_text()  # the summary says how it ran
    assert "×" not in (one / "summary.md").read_text().split("accuracy")[0]
