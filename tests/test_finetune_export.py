"""`galore finetune --export-dir / --device / --precision bf16-true`: exports that reload with the
trained logits, devices that do not exist refused in one line before any work."""

from __future__ import annotations

import json

import pytest
import torch

from _finetune_fixtures import parse, save_tiny_encoder, tiny_args, tiny_data_files
from galorekit.cli import main
from galorekit.train import finetune as ft
from galorekit.train.export import EXPORT_FILE
from galorekit.train.logging import read_metrics

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("ft-export")
    (root / "data").mkdir()
    return save_tiny_encoder(root / "bert", "bert"), tiny_data_files(root / "data")


def _argv(setup, out, *extra):
    model, files = setup
    return tiny_args(model, files, out, "--epochs", "0.5", "--eval-every", "4", *extra)


@pytest.mark.slow
@pytest.mark.parametrize("method,extra", [("galore_adamw", ()), ("lora", ("--export-adapters",))])
def test_exports_final_and_best(setup, tmp_path, method, extra):
    out, hf = tmp_path / "run", tmp_path / "hf"
    argv = _argv(setup, out, "--method", method, "--device", "cpu", "--export-dir", str(hf), *extra)
    ft.finetune(ft.resolve_config(parse(*argv)))
    evals = [e for e in read_metrics(out) if e["event"] == "eval"]
    best = json.loads((hf / "best" / EXPORT_FILE).read_text())
    assert best["metrics"]["eval_accuracy"] == max(e["eval_accuracy"] for e in evals)
    assert json.loads((hf / "final" / EXPORT_FILE).read_text())["step"] == evals[-1]["step"]
    tok = transformers.AutoTokenizer.from_pretrained(hf / "final")
    batch = tok(["good film", "awful plot"], return_tensors="pt", padding=True)
    if method == "lora":  # peft adapter (classifier head in modules_to_save) over the base
        from peft import PeftModel

        # only the adapters and the head trained: the base is the model it started from
        adapter = json.loads((hf / "final" / "adapter_config.json").read_text())
        assert adapter["base_model_name_or_path"] == str(setup[0])
        assert not (hf / "final" / "base").exists()
        base = transformers.AutoModelForSequenceClassification.from_pretrained(setup[0])
        loaded = PeftModel.from_pretrained(base, hf / "final")
    else:
        loaded = transformers.AutoModelForSequenceClassification.from_pretrained(hf / "final")
    # the run's own best/ (save_pretrained of the same model at its best step) agrees with the
    # export of that step when the last evaluation was the best
    if evals[-1]["eval_accuracy"] == best["metrics"]["eval_accuracy"] and method != "lora":
        own = transformers.AutoModelForSequenceClassification.from_pretrained(out / "best")
        with torch.no_grad():
            torch.testing.assert_close(loaded.eval()(**batch).logits, own.eval()(**batch).logits)
    assert loaded(**batch).logits.shape == (2, 2)


@pytest.mark.slow
def test_bf16_true_trains_bf16_weights(setup, tmp_path):
    out = tmp_path / "run"
    argv = _argv(setup, out, "--precision", "bf16-true", "--state-dtype", "float32")
    argv += ["--weight-rounding", "stochastic", "--export-dir", str(tmp_path / "hf")]
    result = ft.finetune(ft.resolve_config(parse(*argv)))[0]
    assert result.steps > 0
    config = json.loads((tmp_path / "hf" / "final" / "config.json").read_text())
    assert config["dtype"] == "bfloat16"


@pytest.mark.parametrize(
    "extra,message",
    [
        (("--device", "gpu"), "unknown --device 'gpu'"),
        (("--device", "cuda:7"), "--device cuda:7"),
        (("--weight-rounding", "stochastic"), "needs --precision bf16-true"),
        (("--export-adapters",), "--export-adapters applies to --export-dir"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    setup, tmp_path, capsys, monkeypatch, extra, message
):
    # at most one CUDA device, also where the test runs on a machine with eight
    monkeypatch.setattr(torch.cuda, "device_count", lambda: min(torch.cuda.device_count(), 1))
    out = tmp_path / "run"
    assert main(["finetune", *_argv(setup, out, *extra)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("galore finetune: error: ") and message in err[0]
    assert not out.exists()


def test_an_occupied_export_dir_is_refused(setup, tmp_path, capsys):
    (tmp_path / "hf" / "best").mkdir(parents=True)
    (tmp_path / "hf" / "best" / "notes.txt").write_text("mine")
    out = tmp_path / "run"
    assert main(["finetune", *_argv(setup, out, "--export-dir", str(tmp_path / "hf"))]) == 2
    assert "is not empty" in capsys.readouterr().err
    assert (tmp_path / "hf" / "best" / "notes.txt").read_text() == "mine"
    assert not out.exists()
