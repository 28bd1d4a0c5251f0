"""``galore pretrain``'s data flags, from the command line to the loaded data (offline: local
files, a local tokenizer directory, and a stand-in for ``datasets.load_dataset`` where the Hub
would be asked). Each test fails if its flag is ignored."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

import galorekit.data.corpora as corpora
import galorekit.data.tokenizer as tokenizer_mod
from _data_fixtures import save_small_tokenizer, small_docs, write_jsonl
from galorekit.data import (
    DataConfig,
    MemoryTrainLoader,
    StreamingTrainLoader,
    build_tokenizer,
    load_pretraining_data,
)
from galorekit.data.tokenizer import tokenizer_fingerprint

SEQ = 32


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_small_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture
def no_bpe_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """The default tokenizer would be trained on the offline corpus: fail fast instead."""

    def refuse(*args, **kwargs):
        raise AssertionError("the default tokenizer was trained: --tokenizer was ignored")

    monkeypatch.setattr(tokenizer_mod, "train_bpe_tokenizer", refuse)


def _config(*flags: str) -> DataConfig:
    """The DataConfig ``galore pretrain FLAGS`` builds."""
    from galorekit.train import pretrain_cli

    parser = argparse.ArgumentParser()
    pretrain_cli.add_arguments(parser)
    return pretrain_cli.config_from_args(parser.parse_args(list(flags))).data


def _load(tok_dir: Path, tmp_path: Path, *flags: str):
    common = ("--tokenizer", str(tok_dir), "--seq-len", str(SEQ), "--val-sequences", "2")
    cfg = _config(*common, "--cache-dir", str(tmp_path / "cache"), *flags)
    return cfg, load_pretraining_data(cfg, build_tokenizer(cfg))


def _text(data, batches: int = 10) -> str:
    loader = data.train_loader(4)
    ids = [row for _ in range(batches) for row in next(loader).tolist()]
    return data.tokenizer.decode([t for row in ids for t in row])


class FakeHub:
    """Stands in for ``datasets.load_dataset``: records what reaches it and serves local splits
    with the text in ``column``."""

    def __init__(self, column: str = "text") -> None:
        self.calls: list[tuple[tuple, dict]] = []
        self.column = column

    def __call__(self, *args, **kwargs):
        import datasets

        self.calls.append((args, kwargs))
        splits = {
            "train": datasets.Dataset.from_dict({self.column: small_docs(40)}),
            "validation": datasets.Dataset.from_dict({self.column: small_docs(6, start=100)}),
        }
        if kwargs.get("streaming"):
            return {k: v.to_iterable_dataset() for k, v in splits.items()}
        return splits


def test_dataset_and_dataset_config_reach_load_dataset(tok_dir, tmp_path, monkeypatch):
    hub = FakeHub()
    monkeypatch.setattr("datasets.load_dataset", hub)
    cfg, data = _load(tok_dir, tmp_path, "--dataset", "org/corpus", "--dataset-config", "en")
    assert (cfg.dataset, cfg.dataset_config) == ("org/corpus", "en")
    assert hub.calls == [(("org/corpus", "en"), {"streaming": True})]  # hub datasets stream
    assert data.description.startswith("org/corpus/en (streaming)")
    assert "@@100@@" in data.tokenizer.decode(data.val[0])  # its validation split
    hub.calls.clear()
    _load(tok_dir, tmp_path, "--dataset", "org/corpus")
    assert hub.calls == [(("org/corpus", None), {"streaming": True})]


def test_streaming_flag(tok_dir, tmp_path, monkeypatch):
    files = str(write_jsonl(tmp_path / "a.jsonl", small_docs(40)))
    _, auto = _load(tok_dir, tmp_path, "--data-files", files)  # local files: tokenised once
    assert not auto.streaming and isinstance(auto.train_loader(2), MemoryTrainLoader)
    _, streamed = _load(tok_dir, tmp_path, "--data-files", files, "--streaming", "yes")
    assert streamed.streaming and isinstance(streamed.train_loader(2), StreamingTrainLoader)
    assert streamed.num_train_tokens is None
    assert "@@39@@" in _text(streamed, 20)

    hub = FakeHub()  # a Hub dataset streams unless told not to
    monkeypatch.setattr("datasets.load_dataset", hub)
    _, data = _load(tok_dir, tmp_path, "--dataset", "org/corpus", "--streaming", "no")
    assert hub.calls == [(("org/corpus", None), {"streaming": False})]
    assert not data.streaming and isinstance(data.train_loader(2), MemoryTrainLoader)
    assert data.num_train_sequences and data.num_train_tokens == data.num_train_sequences * SEQ


def test_text_column_reads_that_column(tok_dir, tmp_path, monkeypatch):
    files = str(write_jsonl(tmp_path / "a.jsonl", small_docs(40), column="body"))
    with pytest.raises(KeyError, match=r"'text' not in .*\['body', 'id'\]"):
        _load(tok_dir, tmp_path, "--data-files", files)
    cfg, data = _load(tok_dir, tmp_path, "--data-files", files, "--text-column", "body")
    assert cfg.text_column == "body"
    assert "@@" in _text(data)
    # and for a (Hub) dataset
    monkeypatch.setattr("datasets.load_dataset", FakeHub(column="content"))
    _, hub = _load(tok_dir, tmp_path, "--dataset", "org/corpus", "--text-column", "content")
    assert "@@100@@" in hub.tokenizer.decode(hub.val[0])


def test_tokenizer_flag_loads_a_local_tokenizer_directory(tok_dir, tmp_path, no_bpe_training):
    from transformers import AutoTokenizer

    files = str(write_jsonl(tmp_path / "a.jsonl", small_docs(40)))
    cfg, data = _load(tok_dir, tmp_path, "--data-files", files)
    expected = AutoTokenizer.from_pretrained(str(tok_dir))
    assert cfg.tokenizer == str(tok_dir)
    assert data.vocab_size == len(expected) == 600
    assert tokenizer_fingerprint(data.tokenizer) == tokenizer_fingerprint(expected)
    assert int(data.val.max()) < 600
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_tokenizer(_config("--tokenizer", str(tmp_path / "missing")))


def test_dataset_flag_selects_the_corpus(tok_dir, tmp_path, monkeypatch):
    asked = []

    def small_corpus(name, cache_dir):
        asked.append(name)
        return corpora.OfflineCorpus(name, f"test {name}", ("t", name), lambda: small_docs(40))

    monkeypatch.setattr(corpora, "offline_corpus", small_corpus)
    for name in ("kjv", "shakespeare", "default"):
        _, data = _load(tok_dir, tmp_path, "--dataset", name)
        assert asked[-1] == name and data.description.startswith(f"test {name}")
    # a local dataset directory, read like a Hub repository (with its validation split)
    root = tmp_path / "ds"
    (root / "data").mkdir(parents=True)
    write_jsonl(root / "data" / "train.jsonl", small_docs(40))
    write_jsonl(root / "data" / "validation.jsonl", small_docs(6, start=100))
    _, local = _load(tok_dir, tmp_path, "--dataset", str(root), "--streaming", "no")
    assert "@@100@@" in local.tokenizer.decode(local.val[0])
    assert asked == ["kjv", "shakespeare", "default"]  # not asked for the directory


def test_bad_data_files_are_named_in_one_line_errors(tok_dir, tmp_path):
    """A file that is not UTF-8 names itself and the byte offset; an empty file says it holds no
    text; a missing column is bad input (a ValueError) listing the columns found."""
    good = "a line of text\n" * 50
    broken = tmp_path / "broken.txt"
    broken.write_bytes(good.encode() + b"\xff\xfe" + good.encode())
    with pytest.raises(
        ValueError, match=r"broken\.txt' is not UTF-8 text: byte 0xff at offset 750"
    ):
        _load(tok_dir, tmp_path, "--data-files", str(broken))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(ValueError, match=r"'empty\.txt' holds no text"):
        _load(tok_dir, tmp_path, "--data-files", str(empty))
    files = str(write_jsonl(tmp_path / "b.jsonl", small_docs(40), column="body"))
    with pytest.raises(ValueError, match=r"'text' not in .*\['body', 'id'\].*--text-column"):
        _load(tok_dir, tmp_path, "--data-files", files)
