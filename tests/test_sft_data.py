"""galore sft's data: shapes, answer-only labels, packing, overlong examples, clear refusals."""

from __future__ import annotations

import json

import pytest
import torch

from _sft_fixtures import chat_rows, make_tokenizer, tiny_llama_config, write_jsonl
from galorekit.data.sft import (
    IGNORE,
    SFTDataConfig,
    SFTDataError,
    detect_shape,
    load_sft_data,
    pack,
    render,
    tokenize,
)
from galorekit.train.sft_eval import answer_choices, normalize, parse_answer


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


def _labelled_text(tok, example) -> str:
    return tok.decode([t for t, label in zip(example.input_ids, example.labels) if label != IGNORE])


@pytest.mark.parametrize(
    ("row", "shape", "answer"),
    [
        (chat_rows(1)[0], "messages", None),
        ({"prompt": "the plot was ", "completion": "good"}, "prompt_completion", "good<|im_end|>"),
        (
            {
                "prompt": [{"role": "user", "content": "hi"}],
                "completion": [{"role": "assistant", "content": "nice film"}],
            },
            "prompt_completion",
            "nice film<|im_end|>\n",
        ),
        (
            {"instruction": "Rate it", "input": "a dull story", "output": "negative"},
            "alpaca",
            "negative<|im_end|>\n",
        ),
    ],
)
def test_loss_falls_on_the_answer_only(tok, row, shape, answer):
    assert detect_shape(list(row), "data") == shape
    example = tokenize(render(row, shape, tok, "data"), tok, completion_only=True)
    if answer is None:
        answer = row["messages"][-1]["content"] + "<|im_end|>\n"
    assert _labelled_text(tok, example) == answer
    everything = tokenize(render(row, shape, tok, "data"), tok, completion_only=False)
    assert everything.labels == everything.input_ids


def test_every_assistant_turn_of_a_chat_is_learned(tok):
    row = {
        "messages": [
            {"role": "user", "content": "good?"},
            {"role": "assistant", "content": "positive"},
            {"role": "user", "content": "bad?"},
            {"role": "assistant", "content": "negative"},
        ]
    }
    example = tokenize(render(row, "messages", tok, "d"), tok, completion_only=True)
    assert _labelled_text(tok, example) == "positive<|im_end|>\nnegative<|im_end|>\n"


def test_alpaca_without_chat_template_uses_alpaca_prompt():
    plain = make_tokenizer(chat_template=False)
    row = {"instruction": "Rate it", "input": "", "output": "positive"}
    rendered = render(row, "alpaca", plain, "d")
    assert rendered.text.startswith("### Instruction:\nRate it\n\n### Response:\n")
    assert rendered.text.endswith("positive<|im_end|>")


def test_chat_data_for_a_tokenizer_without_template_is_refused():
    plain = make_tokenizer(chat_template=False)
    with pytest.raises(SFTDataError, match="no chat template"):
        render(chat_rows(1)[0], "messages", plain, "f.jsonl")


def test_missing_columns_name_what_was_found_and_what_is_valid(tmp_path, tok):
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": "q", "answer": "a"}] * 3)
    cfg = SFTDataConfig(train_file=str(path))
    with pytest.raises(SFTDataError) as err:
        load_sft_data(cfg, tok, 128)
    message = str(err.value)
    assert "question, answer" in message
    for shape in ("messages", "prompt + completion", "instruction + output"):
        assert shape in message


def test_overlong_examples_truncated_or_refused(tmp_path, tok):
    rows = chat_rows(20)
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    refuse = SFTDataConfig(train_file=str(path), max_seq_len=12, overlong="refuse")
    with pytest.raises(SFTDataError, match=r"longer than 12 tokens.*--overlong truncate"):
        load_sft_data(refuse, tok, 128)
    # the model's context caps --max-seq-len: the same refusal at a context of 12
    with pytest.raises(SFTDataError, match="longer than 12 tokens"):
        load_sft_data(SFTDataConfig(train_file=str(path), overlong="refuse"), tok, 12)
    # truncated (whole-text loss keeps them all); with the loss on answers cut away: dropped
    cut = SFTDataConfig(train_file=str(path), max_seq_len=12, completion_only_loss=False)
    data = load_sft_data(cut, tok, 128)
    assert all(len(e.input_ids) == 12 for e in data.train + data.validation)
    assert len(data.train) + len(data.validation) == 20
    assert any(
        "20 truncated to 12 tokens" in n.replace("of 18 ", "").replace("of 2 ", "")
        or "truncated to 12 tokens" in n
        for n in data.notes
    )
    with pytest.raises(SFTDataError, match="no training or validation example is left"):
        load_sft_data(SFTDataConfig(train_file=str(path), max_seq_len=12), tok, 128)


def test_files_splits_and_prompts(tmp_path, tok):
    train = write_jsonl(tmp_path / "train.jsonl", chat_rows(30))
    test = tmp_path / "test.csv"
    test.write_text("prompt,completion\nthe film was good,positive\na dull plot,negative\n")
    cfg = SFTDataConfig(train_file=str(train), test_file=str(test), validation_fraction=0.2)
    data = load_sft_data(cfg, tok, 128, prompts=5)
    assert (len(data.train), len(data.validation)) == (24, 6)
    assert data.prompts_split == "test" and len(data.prompts) == 2
    assert [p.answer for p in data.prompts] == ["positive", "negative"]


def test_packing_keeps_examples_apart(tok):
    from transformers import LlamaForCausalLM

    from galorekit.train.sft_eval import collate

    examples = [
        tokenize(render(r, "messages", tok, "d"), tok, completion_only=True) for r in chat_rows(6)
    ]
    packed = pack(examples, 64)
    assert len(packed) < len(examples)
    assert sorted(t for p in packed for t in p.input_ids) == sorted(
        t for e in examples for t in e.input_ids
    )
    torch.manual_seed(0)
    config = tiny_llama_config(tok)
    model = LlamaForCausalLM(config).eval()
    row = packed[0]
    with torch.no_grad():
        inputs = {k: v for k, v in collate([row], 0).items() if k != "labels"}
        together = model(**inputs, use_cache=False).logits[0]
        start = 0
        for length in _segments(row.position_ids):
            alone = model(input_ids=torch.tensor([row.input_ids[start : start + length]])).logits[0]
            torch.testing.assert_close(together[start : start + length], alone, atol=1e-5, rtol=0)
            start += length


def _segments(positions):
    lengths, n = [], 0
    for p in positions:
        if p == 0 and n:
            lengths.append(n)
            n = 0
        n += 1
    return [*lengths, n]


def test_answers_are_parsed_against_a_closed_set():
    choices = ["negative", "positive"]
    assert parse_answer("This review is positive, as", choices) == "positive"
    assert parse_answer("Negative.", choices) == "negative"
    assert parse_answer("not positive but negative", choices) == "positive"  # the first named
    assert parse_answer("I cannot tell", choices) == ""
    assert parse_answer(" Paris. ", None) == normalize("paris")
    assert answer_choices([]) is None


def test_config_json_roundtrip_of_the_data_flags():
    from galorekit.train.sft_config import build_config, config_values

    cfg = build_config({"max_seq_len": 64, "packing": True, "method": "lora", "lr": 1e-3})
    again = build_config(json.loads(json.dumps(config_values(cfg))))
    assert again == cfg


def test_the_default_model_of_the_command_is_a_bundled_alias():
    from galorekit.models.pretrained import MODEL_ALIASES
    from galorekit.train.sft_config import DEFAULT_MODEL, SFTConfig

    assert SFTConfig().model == DEFAULT_MODEL and DEFAULT_MODEL in MODEL_ALIASES


def test_a_dataset_name_goes_through_datasets_load_dataset(tmp_path, tok):
    """The hub path (``--dataset NAME``), offline: a local folder that load_dataset reads, with
    its own train and validation splits."""
    folder = tmp_path / "my_dataset"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", chat_rows(12))
    write_jsonl(folder / "validation.jsonl", chat_rows(4, seed=1))
    data = load_sft_data(SFTDataConfig(dataset=str(folder)), tok, 128, prompts=3)
    assert (len(data.train), len(data.validation)) == (12, 4)
    assert data.prompts_split == "validation" and len(data.prompts) == 3
    with pytest.raises(SFTDataError, match="cannot load the dataset"):
        load_sft_data(SFTDataConfig(dataset=str(tmp_path / "missing")), tok, 128)
