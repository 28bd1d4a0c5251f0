"""`galore pretrain --export-dir` (final and best as Hugging Face directories), `--init-from`
(continue from one), `--device` errors: one line each, nothing on disk lost."""

from __future__ import annotations

import json

import pytest
import torch

from _pretrain_fixtures import events, pretrain_argv
from galorekit.cli import main
from galorekit.train.checkpoint import find_latest_checkpoint, load_checkpoint
from galorekit.train.export import EXPORT_FILE
from galorekit.train.init_from import load_init_model

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.slow


def _run(corpus, out, *extra):
    return main(pretrain_argv(corpus, out, "--max-steps", "4", "--eval-every", "2", *extra))


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("galore pretrain: error: "), err
    return err[0]


@pytest.fixture(scope="module")
def exported(pretrain_corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("exported")
    assert _run(pretrain_corpus, root / "run", "--export-dir", str(root / "hf")) == 0
    return root


def test_final_and_best_load_with_transformers(pretrain_corpus, exported):
    final, best = exported / "hf" / "final", exported / "hf" / "best"
    model = transformers.AutoModelForCausalLM.from_pretrained(final)
    state = load_checkpoint(find_latest_checkpoint(exported / "run" / "checkpoints"))["model"]
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key  # the trained weights, exactly
    tok = transformers.AutoTokenizer.from_pretrained(final)
    assert len(tok) <= model.config.vocab_size
    evals = [e["eval_loss"] for e in events(exported / "run", "eval")]
    record = json.loads((best / EXPORT_FILE).read_text())
    assert record["eval_loss"] == min(evals) and record["method"] == "galore_adamw"
    assert json.loads((final / EXPORT_FILE).read_text())["step"] == 4
    assert [e["which"] for e in events(exported / "run", "export")][-1] == "final"


def test_init_from_continues_from_the_export(pretrain_corpus, exported, tmp_path, capsys):
    out = tmp_path / "cont"
    # no --model: the architecture (and the tokenizer) come from the export
    argv = pretrain_argv(pretrain_corpus, out, "--max-steps", "2", "--init-from")
    argv.insert(argv.index("--init-from") + 1, str(exported / "hf" / "final"))
    argv.remove("llama_tiny")
    argv.remove("--model")
    assert main(argv) == 0
    first = events(out, "train")[0]["loss"]
    assert first < events(exported / "run", "train")[0]["loss"] - 0.3  # it starts trained
    config = json.loads((out / "config.json").read_text())
    assert config["model"] == config["init_from"] == str(exported / "hf" / "final")

    capsys.readouterr()
    bad = tmp_path / "bad"
    argv = pretrain_argv(pretrain_corpus, bad, "--max-steps", "2", "--model", "llama_9m")
    assert main([*argv, "--init-from", str(exported / "hf" / "final")]) == 2
    assert "conflicts with the architecture" in _error(capsys)
    assert not bad.exists()


def test_init_from_refuses_a_longer_context_or_a_larger_vocabulary(exported):
    final = str(exported / "hf" / "final")
    with pytest.raises(ValueError, match="longer than the context"):
        load_init_model(final, vocab_size=10, seq_len=10**6, device=torch.device("cpu"))
    with pytest.raises(ValueError, match="token embeddings but the tokenizer has"):
        load_init_model(final, vocab_size=10**6, seq_len=8, device=torch.device("cpu"))


def test_an_occupied_export_dir_is_refused_before_training(pretrain_corpus, tmp_path, capsys):
    (tmp_path / "hf" / "final").mkdir(parents=True)
    (tmp_path / "hf" / "final" / "mine.txt").write_text("keep")
    assert _run(pretrain_corpus, tmp_path / "run", "--export-dir", str(tmp_path / "hf")) == 2
    assert "is not empty" in _error(capsys)
    assert (tmp_path / "hf" / "final" / "mine.txt").read_text() == "keep"
    assert not (tmp_path / "run").exists()


def test_lora_exports_an_adapter_on_request(pretrain_corpus, tmp_path):
    hf = tmp_path / "hf"
    flags = ("--method", "lora", "--rank", "8", "--export-dir", str(hf), "--export-adapters")
    assert _run(pretrain_corpus, tmp_path / "run", *flags) == 0
    assert (hf / "final" / "adapter_config.json").is_file()
    assert (hf / "final" / "base" / "config.json").is_file()


@pytest.mark.parametrize(
    "device,message",
    [
        ("gpu", "unknown --device 'gpu'; valid: auto"),
        ("cuda", "no CUDA device is available"),
        ("cuda:7", "--device cuda:7"),
        ("cpu:1", "the CPU has no index"),
    ],
)
def test_a_device_that_does_not_exist_is_one_line(
    pretrain_corpus, tmp_path, capsys, monkeypatch, device, message
):
    # a machine without CUDA, also where the test runs on one (the refusal must not depend on it)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert _run(pretrain_corpus, tmp_path / "run", "--device", device) == 2
    assert message in _error(capsys)
    assert not (tmp_path / "run").exists()


def test_fsdp_export_gathers_the_shards(pretrain_corpus, tmp_path):
    """Under FSDP2 every rank gathers its shards and rank 0 writes: the export equals the run's
    (sharded) final checkpoint, consolidated."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    hf, run = tmp_path / "hf", tmp_path / "run"
    fsdp = ("--nproc-per-node", "2", "--distributed", "fsdp", "--batch-size", "2")
    assert _run(pretrain_corpus, run, *fsdp, "--export-dir", str(hf)) == 0
    dcp_to_torch_save(find_latest_checkpoint(run / "checkpoints") / "model", tmp_path / "m.pt")
    state = torch.load(tmp_path / "m.pt", weights_only=True)
    model = transformers.AutoModelForCausalLM.from_pretrained(hf / "final")
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
