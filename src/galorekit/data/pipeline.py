"""``load_pretraining_data``: documents → tokens → packed train loader + held-out validation.

Two paths, chosen by :attr:`DataConfig.use_streaming`:

* **materialised** (offline corpora, local files, Hub datasets with ``streaming=False``): the
  whole training split is tokenised once and cached as a memory-mapped ``uint16``/``uint32``
  file keyed by the corpus and the tokenizer, so later runs load it in milliseconds. The
  packed sequences are shuffled per epoch. Validation: the dataset's own validation split if
  it has one, else ``val_sequences`` packed sequences drawn at fixed random positions (the same
  for every training seed) and removed from training — token-disjoint; a held-out sequence
  may share a long document (a play) with neighbouring training sequences.
* **streaming** (Hub datasets by default, e.g. ``allenai/c4``): documents are shuffled with a
  seeded buffer and packed on the fly. Validation: the dataset's validation split if it has
  one (C4 does), else the first documents of the unshuffled training split, which are then
  skipped by training — document-disjoint.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from galorekit.data.cache import load_tokens, save_tokens
from galorekit.data.config import OFFLINE_DATASETS, DataConfig, content_key
from galorekit.data.loader import MemoryTrainLoader, StreamingTrainLoader
from galorekit.data.packing import DocumentEncoder, as_sequences, encode_corpus, pack_head
from galorekit.data.sources import (
    DocumentSource,
    locate_decode_error,
    open_source,
    resolve_data_files,
)
from galorekit.data.tokenizer import build_tokenizer, tokenizer_fingerprint

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

# The held-out positions of materialised data do not depend on the training seed, so runs
# with different seeds are evaluated on the same sequences.
_SPLIT_SEED = 0x6A104E

TrainLoader = MemoryTrainLoader | StreamingTrainLoader


@dataclass
class PretrainingData:
    """Packed pre-training data: an infinite training loader and a fixed validation split.

    Attributes:
        tokenizer: the tokenizer the ids come from.
        seq_len: tokens per sequence.
        num_train_sequences: packed training sequences (``None`` when streaming).
        val: the validation split, ``int64 [num_val_sequences, seq_len]``.
        fingerprint: identity of (data, tokenizer, seq_len, split); stored in loader states.
        description: one human-readable line for logs.
        streaming: whether training documents are streamed.
    """

    tokenizer: PreTrainedTokenizerBase = field(repr=False)
    seq_len: int
    num_train_sequences: int | None
    val: np.ndarray = field(repr=False)
    fingerprint: str
    description: str
    streaming: bool
    _make_loader: Callable[[int, int, int], TrainLoader] = field(repr=False)

    @property
    def vocab_size(self) -> int:
        """``len(tokenizer)``; the model's embedding must have at least this many rows."""
        return len(self.tokenizer)

    @property
    def eos_token_id(self) -> int:
        """The separator between packed documents."""
        return int(self.tokenizer.eos_token_id)

    @property
    def num_train_tokens(self) -> int | None:
        """Tokens in the training split (``None`` when streaming)."""
        if self.num_train_sequences is None:
            return None
        return self.num_train_sequences * self.seq_len

    @property
    def num_val_sequences(self) -> int:
        return len(self.val)

    def train_loader(self, batch_size: int, *, rank: int = 0, world_size: int = 1) -> TrainLoader:
        """An infinite iterator of ``LongTensor[batch_size, seq_len]`` with exact resume state.

        With ``world_size > 1`` this rank gets its slice of a global batch of
        ``batch_size * world_size`` sequences.
        """
        return self._make_loader(batch_size, rank, world_size)

    def val_batches(self, batch_size: int) -> list[torch.Tensor]:
        """The validation split in order, as ``LongTensor[<=batch_size, seq_len]`` batches
        (the last one may be smaller)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        val = torch.from_numpy(np.asarray(self.val, dtype=np.int64))
        return list(val.split(batch_size))


def list_datasets() -> dict[str, str]:
    """The offline dataset names and what they contain (any Hub name also works online)."""
    return dict(OFFLINE_DATASETS)


def load_pretraining_data(
    cfg: DataConfig, tokenizer: PreTrainedTokenizerBase | None = None
) -> PretrainingData:
    """Open, tokenise (or load from cache), split and pack the dataset ``cfg`` names."""
    start = time.perf_counter()
    try:
        tok = tokenizer if tokenizer is not None else build_tokenizer(cfg)
        encoder = DocumentEncoder(tok)
        source = open_source(cfg)
        build = _streaming if cfg.use_streaming else _materialised
        data = build(cfg, tok, encoder, source)
    except UnicodeDecodeError as err:  # say which file and where, not only the codec's words
        where = locate_decode_error(resolve_data_files(cfg.data_files or []))
        raise ValueError(where or f"the data is not UTF-8 text: {err}") from err
    logger.info("data ready in %.2fs: %s", time.perf_counter() - start, data.description)
    return data


def _has_text(tokens: np.ndarray, tok: PreTrainedTokenizerBase) -> bool:
    """Whether ``tokens`` hold anything but the special tokens (end of document, …) that the
    encoder adds around each document."""
    special = np.asarray(sorted(set(tok.all_special_ids)), dtype=np.int64)
    ids = np.asarray(tokens, dtype=np.int64)
    ids = ids[~np.isin(ids, special)]
    if len(ids) > 4096:  # plenty: no need to look at them
        return True
    return bool(tok.decode(ids.tolist()).strip())  # blank lines tokenise to whitespace


# ------------------------------------------------------------------------- materialised
def _materialised(
    cfg: DataConfig, tok: PreTrainedTokenizerBase, encoder: DocumentEncoder, source: DocumentSource
) -> PretrainingData:
    tok_key = tokenizer_fingerprint(tok)
    tokens = _cached_tokens(cfg, encoder, source, tok_key)
    seqs = as_sequences(tokens, cfg.seq_len)
    n = len(seqs)
    if source.validation is not None and cfg.val_sequences > 0:
        val, _ = pack_head(source.documents("validation"), encoder, cfg.seq_len, cfg.val_sequences)
        _warn_short_val(len(val), cfg.val_sequences, "validation split")
        train_index = np.arange(n, dtype=np.int64)
    else:
        if not _has_text(tokens, tok):
            raise ValueError(
                f"{source.name!r} holds no text (an empty file, or only blank lines): nothing to "
                "train on"
            )
        if cfg.val_sequences >= n:
            raise ValueError(
                f"{source.name!r} packs into only {n} sequences of {cfg.seq_len} tokens "
                f"({len(tokens)} tokens); val_sequences={cfg.val_sequences} would leave nothing "
                "to train on. Lower val_sequences or seq_len, or add data."
            )
        rng = np.random.default_rng(_SPLIT_SEED)
        held = np.sort(rng.choice(n, size=cfg.val_sequences, replace=False))
        val = np.asarray(seqs[held], dtype=np.int64)
        train_index = np.setdiff1d(np.arange(n, dtype=np.int64), held)
    if len(train_index) == 0:
        raise ValueError(
            f"{source.name!r} has fewer than seq_len={cfg.seq_len} tokens of training data"
        )
    fingerprint = content_key("memory", source.key, tok_key, cfg.seq_len, cfg.val_sequences)

    def make_loader(batch_size: int, rank: int, world_size: int) -> MemoryTrainLoader:
        return MemoryTrainLoader(
            seqs, train_index, batch_size, cfg.seed, fingerprint, rank, world_size
        )

    num_train = len(train_index)
    return PretrainingData(
        tokenizer=tok,
        seq_len=cfg.seq_len,
        num_train_sequences=num_train,
        val=val,
        fingerprint=fingerprint,
        description=(
            f"{source.description or source.name}: {num_train * cfg.seq_len / 1e6:.2f}M train tokens "
            f"({num_train} x {cfg.seq_len}), {len(val)} validation sequences, vocab {len(tok)}"
        ),
        streaming=False,
        _make_loader=make_loader,
    )


def _cached_tokens(
    cfg: DataConfig, encoder: DocumentEncoder, source: DocumentSource, tok_key: str
) -> np.ndarray:
    """The training split as one flat token array, tokenised once and memory-mapped after."""
    path = cfg.resolved_cache_dir() / "tokens" / f"{source.key}-{tok_key}.bin"
    cached = load_tokens(path)
    if cached is not None:
        return cached[0]
    logger.warning("tokenising %s once (cached at %s) ...", source.name, path)
    t0 = time.perf_counter()
    tokens = encode_corpus(source.documents("train"), encoder)
    save_tokens(
        path,
        tokens,
        {"source": source.name, "tokenizer": tok_key, "vocab_size": encoder.vocab_size},
    )
    logger.info("tokenised %d tokens in %.1fs", len(tokens), time.perf_counter() - t0)
    reloaded = load_tokens(path)
    return reloaded[0] if reloaded is not None else tokens


# ---------------------------------------------------------------------------- streaming
def _streaming(
    cfg: DataConfig, tok: PreTrainedTokenizerBase, encoder: DocumentEncoder, source: DocumentSource
) -> PretrainingData:
    holdout = 0
    if cfg.val_sequences == 0:
        val = np.zeros((0, cfg.seq_len), dtype=np.int64)
    elif source.validation is not None:
        val, _ = pack_head(source.documents("validation"), encoder, cfg.seq_len, cfg.val_sequences)
        _warn_short_val(len(val), cfg.val_sequences, "validation split")
    else:
        val, holdout = pack_head(source.documents("train"), encoder, cfg.seq_len, cfg.val_sequences)
        _warn_short_val(len(val), cfg.val_sequences, "held-out head of the training split")
    if next(source.documents("train", skip=holdout), None) is None:
        raise ValueError(
            f"{source.name!r}: no training documents left after holding out the first {holdout} "
            "for validation; lower val_sequences or provide a validation split"
        )
    val = np.asarray(val, dtype=np.int64)
    fingerprint = content_key(
        "stream",
        source.key,
        tokenizer_fingerprint(tok),
        cfg.seq_len,
        cfg.val_sequences,
        holdout,
        cfg.shuffle_buffer,
    )

    def documents_for_epoch(epoch: int) -> Iterator[str]:
        return source.shuffled_documents(cfg.seed, epoch, cfg.shuffle_buffer, skip=holdout)

    def make_loader(batch_size: int, rank: int, world_size: int) -> StreamingTrainLoader:
        return StreamingTrainLoader(
            documents_for_epoch,
            encoder,
            cfg.seq_len,
            batch_size,
            cfg.seed,
            fingerprint,
            rank,
            world_size,
        )

    return PretrainingData(
        tokenizer=tok,
        seq_len=cfg.seq_len,
        num_train_sequences=None,
        val=val,
        fingerprint=fingerprint,
        description=(
            f"{source.description or source.name}: streamed, {len(val)} validation sequences"
            + (f" (first {holdout} training documents held out)" if holdout else "")
            + f", vocab {len(tok)}"
        ),
        streaming=True,
        _make_loader=make_loader,
    )


def _warn_short_val(got: int, wanted: int, where: str) -> None:
    if got < wanted:
        warnings.warn(
            f"the {where} yields only {got} of val_sequences={wanted} sequences", stacklevel=3
        )
