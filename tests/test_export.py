"""export_hf: a trained model written as a Hugging Face directory gives the same logits after
``from_pretrained`` (full, GaLore, LoRA merged and as a peft adapter, Low-Rank, bf16), atomically."""

from __future__ import annotations

import json

import pytest
import torch

from galorekit.methods import MethodConfig, setup
from galorekit.models import build_model
from galorekit.train import export
from galorekit.train.export import ExportError, export_hf
from galorekit.train.precision import apply_precision

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

VOCAB = 64


def _trained(method: str, steps: int = 3, precision: str = "fp32", **kw):
    """llama_tiny trained ``steps`` steps with ``method`` on random tokens."""
    torch.manual_seed(0)
    model = build_model("llama_tiny", vocab_size=VOCAB, max_position_embeddings=64, seed=0)
    apply_precision(model, precision, torch.device("cpu"))
    cfg = MethodConfig(method=method, rank=8, update_proj_gap=2, lr=1e-2, **kw)
    built = setup(model, cfg, total_steps=steps)
    for _ in range(steps):
        batch = torch.randint(0, VOCAB, (2, 16))
        built.model(input_ids=batch, labels=batch).loss.backward()
        built.optimizer.step()
        built.optimizer.zero_grad()
    return built.model.eval()


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


IDS = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("method", ["adamw", "galore_adamw", "lora", "low_rank", "relora"])
def test_merged_export_gives_the_trained_logits(tmp_path, method):
    model = _trained(method)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = export_hf(model, tmp_path / "hf", metadata={"step": 3})
    loaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(loaded).__name__ == "LlamaForCausalLM"
    torch.testing.assert_close(_logits(loaded, IDS), _logits(model, IDS), atol=1e-5, rtol=1e-5)
    assert {"config.json", "model.safetensors", "generation_config.json"} <= {
        p.name for p in out.iterdir()
    }
    record = json.loads((out / export.EXPORT_FILE).read_text())
    assert record == {"merged": True, "step": 3}
    # the trained model is untouched (nothing merged in place)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_lora_as_adapter_loads_through_peft(tmp_path):
    model = _trained("lora")
    out = export_hf(model, tmp_path / "adapter", merge_adapters=False)
    assert (out / "adapter_config.json").is_file()
    assert (out / "adapter_model.safetensors").is_file()
    # galorekit's pre-training LoRA trains the embeddings too: the base is saved beside it
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str((out / export.BASE_DIR).resolve())
    base = transformers.AutoModelForCausalLM.from_pretrained(out / export.BASE_DIR).eval()
    # the base alone is not the trained model: the adapter matters
    assert not torch.allclose(_logits(base, IDS), _logits(model, IDS), atol=1e-4)
    loaded = peft.PeftModel.from_pretrained(base, out).eval()
    torch.testing.assert_close(_logits(loaded, IDS), _logits(model, IDS), atol=1e-5, rtol=1e-5)


def test_bf16_true_export_keeps_bf16_weights(tmp_path):
    model = _trained("galore_adamw", steps=2, precision="bf16-true")
    assert next(model.parameters()).dtype == torch.bfloat16
    out = export_hf(model, tmp_path / "hf")
    loaded = transformers.AutoModelForCausalLM.from_pretrained(out, dtype="auto").eval()
    assert next(loaded.parameters()).dtype == torch.bfloat16
    torch.testing.assert_close(_logits(loaded, IDS), _logits(model, IDS), atol=0, rtol=0)


def test_dtype_casts_the_saved_weights(tmp_path):
    model = _trained("adamw", steps=1)
    out = export_hf(model, tmp_path / "hf", dtype="bfloat16")
    loaded = transformers.AutoModelForCausalLM.from_pretrained(out, dtype="auto")
    assert next(loaded.parameters()).dtype == torch.bfloat16
    assert next(model.parameters()).dtype == torch.float32
    with pytest.raises(ExportError, match="unknown export dtype"):
        export_hf(model, tmp_path / "bad", dtype="int8")
    assert not (tmp_path / "bad").exists()


def test_tokenizer_is_saved(tmp_path):
    from tokenizers import Tokenizer, models

    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"a": 0, "b": 1, "<unk>": 2}, "<unk>")),
        unk_token="<unk>",
    )
    out = export_hf(_trained("adamw", steps=1), tmp_path / "hf", tokenizer=tok)
    again = transformers.AutoTokenizer.from_pretrained(out)
    assert again("a b")["input_ids"] == tok("a b")["input_ids"]


def test_refuses_a_non_empty_directory_and_keeps_it(tmp_path):
    model = _trained("adamw", steps=1)
    target = tmp_path / "hf"
    target.mkdir()
    (target / "precious.txt").write_text("keep me")
    with pytest.raises(ExportError, match="not empty"):
        export_hf(model, target)
    assert (target / "precious.txt").read_text() == "keep me"
    (tmp_path / "file").write_text("x")
    with pytest.raises(ExportError, match="not a directory"):
        export_hf(model, tmp_path / "file")
    with pytest.raises(ExportError, match="no peft adapters"):
        export_hf(model, tmp_path / "new", merge_adapters=False)
    assert not (tmp_path / "new").exists()


def test_a_failed_overwrite_leaves_the_previous_export(tmp_path, monkeypatch):
    model = _trained("adamw", steps=1)
    out = export_hf(model, tmp_path / "hf", metadata={"step": 1})
    monkeypatch.setattr(
        export, "_save", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full"))
    )
    with pytest.raises(OSError, match="disk full"):
        export_hf(model, out, overwrite=True, metadata={"step": 2})
    assert json.loads((out / export.EXPORT_FILE).read_text())["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["hf"]  # no temporary left behind
    monkeypatch.undo()
    export_hf(model, out, overwrite=True, metadata={"step": 2})
    assert json.loads((out / export.EXPORT_FILE).read_text())["step"] == 2


@pytest.mark.parametrize("merge", [True, False])
def test_init_from_loads_an_export_with_the_trained_logits(tmp_path, merge):
    from galorekit.train.init_from import load_init_model

    model = _trained("lora")
    out = export_hf(model, tmp_path / "hf", merge_adapters=merge)
    loaded = load_init_model(str(out), vocab_size=VOCAB, seq_len=16, device=torch.device("cpu"))
    assert type(loaded).__name__ == "LlamaForCausalLM"  # an adapter is merged on load
    torch.testing.assert_close(
        _logits(loaded.eval(), IDS), _logits(model, IDS), atol=1e-5, rtol=1e-5
    )
