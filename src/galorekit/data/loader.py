"""Infinite, deterministic, exactly resumable training loaders.

Both loaders hand out ``LongTensor[batch_size, seq_len]`` batches forever and expose
``state_dict()`` / ``load_state_dict()`` made of plain ints and strings (safe for
``torch.load(weights_only=True)``). A loader restored from a state continues with exactly the
batches the original would have produced next.

With ``world_size > 1`` every rank computes the same *global* batch of
``batch_size * world_size`` sequences and keeps its own slice, so the data a run sees does not
depend on how many processes share it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch

from galorekit.data.packing import DocumentEncoder, StreamPosition, pack_stream


class _TrainLoaderBase(Iterator[torch.Tensor]):
    kind = ""

    def __init__(
        self, batch_size: int, seed: int, fingerprint: str, rank: int, world_size: int
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}"
            )
        self.batch_size = batch_size
        self.seed = seed
        self.fingerprint = fingerprint
        self.rank = rank
        self.world_size = world_size

    def __iter__(self) -> _TrainLoaderBase:
        return self

    def _state_header(self) -> dict[str, Any]:
        """What a state is valid for: the loader kind, the data and the seed."""
        return {"kind": self.kind, "fingerprint": self.fingerprint, "seed": self.seed}

    def _check_state(self, state: dict[str, Any]) -> None:
        """Refuse a state saved for other data, another seed or the other loader kind."""
        expected = self._state_header()
        wrong = {k: state.get(k) for k, v in expected.items() if state.get(k) != v}
        if wrong:
            raise ValueError(
                f"data-loader state does not match this data: saved {wrong}, "
                f"current { {k: expected[k] for k in wrong} }. Resume with the same dataset, "
                "tokenizer, seq_len, val_sequences and seed as the saved run."
            )


class MemoryTrainLoader(_TrainLoaderBase):
    """Batches of pre-packed sequences; every epoch is a fresh permutation seeded by
    ``(seed, epoch)``. The stream of samples is the concatenation of those permutations, so
    an epoch boundary inside a batch is no special case; the state is one sample counter."""

    kind = "memory"

    def __init__(
        self,
        sequences: np.ndarray,
        train_index: np.ndarray,
        batch_size: int,
        seed: int,
        fingerprint: str,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__(batch_size, seed, fingerprint, rank, world_size)
        if len(train_index) == 0:
            raise ValueError("no training sequences")
        self._sequences = sequences
        self._train_index = train_index
        self._position = 0  # samples of the global stream handed out so far
        self._perm_epoch = -1
        self._perm = train_index

    @property
    def epoch(self) -> int:
        """The epoch the next sample comes from."""
        return self._position // len(self._train_index)

    def _sample_ids(self, start: int, count: int) -> np.ndarray:
        n = len(self._train_index)
        out = np.empty(count, dtype=np.int64)
        for i, pos in enumerate(range(start, start + count)):
            epoch, j = divmod(pos, n)
            if epoch != self._perm_epoch:
                rng = np.random.default_rng([self.seed, epoch])
                self._perm = self._train_index[rng.permutation(n)]
                self._perm_epoch = epoch
            out[i] = self._perm[j]
        return out

    def __next__(self) -> torch.Tensor:
        start = self._position + self.rank * self.batch_size
        ids = self._sample_ids(start, self.batch_size)
        self._position += self.batch_size * self.world_size
        return torch.from_numpy(np.asarray(self._sequences[ids], dtype=np.int64))

    def state_dict(self) -> dict[str, Any]:
        return {**self._state_header(), "position": self._position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._check_state(state)
        self._position = int(state["position"])


class StreamingTrainLoader(_TrainLoaderBase):
    """Batches packed on the fly from a document stream (e.g. C4 via ``datasets`` streaming).

    The state is the position in the stream just after the last batch: the epoch, the number
    of documents of that epoch's shuffled order already consumed, and the token offset inside
    the document that was cut. On resume the stream is rebuilt from ``(seed, epoch)`` and that
    many documents are skipped (read but not tokenised) before packing continues, so the next
    batches are exactly those the uninterrupted loader would have produced.
    """

    kind = "stream"

    def __init__(
        self,
        documents_for_epoch: Callable[[int], Iterable[str]],
        encoder: DocumentEncoder,
        seq_len: int,
        batch_size: int,
        seed: int,
        fingerprint: str,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__(batch_size, seed, fingerprint, rank, world_size)
        self._documents_for_epoch = documents_for_epoch
        self._encoder = encoder
        self._seq_len = seq_len
        self._position = StreamPosition()
        self._stream: Iterator[tuple[np.ndarray, StreamPosition]] | None = None

    @property
    def epoch(self) -> int:
        return self._position.epoch

    def __next__(self) -> torch.Tensor:
        if self._stream is None:
            self._stream = pack_stream(
                self._documents_for_epoch, self._encoder, self._seq_len, self._position
            )
        rows = []
        for _ in range(self.batch_size * self.world_size):
            seq, self._position = next(self._stream)
            rows.append(seq)
        mine = rows[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
        return torch.from_numpy(np.stack(mine))

    def state_dict(self) -> dict[str, Any]:
        p = self._position
        return {
            **self._state_header(),
            "epoch": p.epoch,
            "document": p.document,
            "offset": p.offset,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._check_state(state)
        self._position = StreamPosition(
            int(state["epoch"]), int(state["document"]), int(state["offset"])
        )
        self._stream = None  # rebuilt lazily from the restored position
