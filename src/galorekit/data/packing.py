"""Tokenise documents and pack them, EOS-separated, into fixed-length sequences.

Every document becomes ``ids(document) + [eos]``; the concatenation of those is cut into
consecutive ``seq_len``-token sequences (labels = inputs: the model shifts them itself). A
sequence may therefore span a document boundary, with the EOS token marking it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import TYPE_CHECKING

import numpy as np

from galorekit.data.cache import token_dtype

# the [train] packages are imported in the functions that use them, through needs_extra: they
# take seconds to import, and the core install and `galore --help` import this module
from galorekit.extras import needs_extra

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

_CHUNK_DOCS = 256  # documents per batched tokenizer call: amortises the Rust call overhead


class DocumentEncoder:
    """Turns texts into ``ids + [eos]`` arrays, without truncation or added special tokens."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer needs an eos_token to separate packed documents")
        self.eos_id: int = int(tokenizer.eos_token_id)
        self.vocab_size: int = len(tokenizer)
        self.dtype: np.dtype = token_dtype(self.vocab_size)
        self._tokenizer = tokenizer
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self._backend = None
        if backend is not None:
            with needs_extra("train"):
                from tokenizers import Tokenizer

            # A private copy: a saved tokenizer may carry truncation/padding settings, which
            # must not cut documents, and the caller's tokenizer must not be mutated.
            self._backend = Tokenizer.from_str(backend.to_str())
            self._backend.no_truncation()
            self._backend.no_padding()

    def encode(self, texts: Sequence[str]) -> list[np.ndarray]:
        """One array per text: its token ids followed by EOS."""
        if self._backend is not None:
            ids = [e.ids for e in self._backend.encode_batch(list(texts), add_special_tokens=False)]
        else:
            ids = self._tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]
        out = []
        for row in ids:
            arr = np.empty(len(row) + 1, dtype=self.dtype)
            arr[:-1] = row
            arr[-1] = self.eos_id
            out.append(arr)
        return out


def encode_corpus(documents: Iterable[str], encoder: DocumentEncoder) -> np.ndarray:
    """All documents, tokenised and EOS-terminated, as one flat array."""
    parts: list[np.ndarray] = []
    it = iter(documents)
    while chunk := list(islice(it, _CHUNK_DOCS)):
        parts.extend(encoder.encode(chunk))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=encoder.dtype)


def as_sequences(tokens: np.ndarray, seq_len: int) -> np.ndarray:
    """View a flat token array as ``[n, seq_len]`` (the incomplete tail is dropped)."""
    n = len(tokens) // seq_len
    return tokens[: n * seq_len].reshape(n, seq_len)


@dataclass(frozen=True)
class StreamPosition:
    """Where the next token of a document stream comes from.

    ``document`` indexes the epoch's document order; ``offset`` indexes that document's
    ``ids + [eos]``. Packed sequences are only handed out whole, so no partial sequence ever
    has to be remembered: the three integers are the complete resumable state.
    """

    epoch: int = 0
    document: int = 0
    offset: int = 0


def pack_stream(
    documents_for_epoch: Callable[[int], Iterable[str]],
    encoder: DocumentEncoder,
    seq_len: int,
    start: StreamPosition = StreamPosition(),
) -> Iterator[tuple[np.ndarray, StreamPosition]]:
    """Endless packed sequences from an epoch-indexed document stream, with their end position.

    Each yielded pair is ``(sequence, position just after it)``; passing that position back as
    ``start`` continues with exactly the next sequence. Resuming skips ``start.document``
    documents of the epoch's stream (their text is read, not tokenised). The tail of one epoch
    carries over into the first sequence of the next.
    """
    epoch, doc, off = start.epoch, start.document, start.offset
    buf = np.empty(seq_len, dtype=np.int64)
    fill = 0
    while True:
        first_doc = doc
        docs = iter(islice(documents_for_epoch(epoch), doc, None))
        while chunk := list(islice(docs, _CHUNK_DOCS)):
            for ids in encoder.encode(chunk):
                while off < len(ids):
                    take = min(seq_len - fill, len(ids) - off)
                    buf[fill : fill + take] = ids[off : off + take]
                    fill += take
                    off += take
                    if fill == seq_len:
                        fill = 0
                        pos = (
                            StreamPosition(epoch, doc, off)
                            if off < len(ids)
                            else StreamPosition(epoch, doc + 1, 0)
                        )
                        yield buf.copy(), pos
                doc += 1
                off = 0
        if doc == 0 and first_doc == 0:
            raise ValueError(f"epoch {epoch} of the training stream has no documents")
        epoch, doc, off = epoch + 1, 0, 0


def pack_head(
    documents: Iterable[str], encoder: DocumentEncoder, seq_len: int, num_sequences: int
) -> tuple[np.ndarray, int]:
    """The first ``num_sequences`` packed sequences of ``documents`` and how many documents
    were read (in full or in part) to make them. Fewer sequences come back if the stream ends."""
    need = num_sequences * seq_len
    parts: list[np.ndarray] = []
    have = used = 0
    docs = iter(documents)
    while have < need and (chunk := list(islice(docs, _CHUNK_DOCS))):
        for ids in encoder.encode(chunk):
            if have >= need:
                break
            parts.append(ids)
            have += len(ids)
            used += 1
    tokens = np.concatenate(parts) if parts else np.zeros(0, dtype=encoder.dtype)
    return as_sequences(tokens[:need], seq_len), used
