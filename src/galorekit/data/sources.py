"""Document sources: the offline corpora, local files and Hugging Face Hub datasets.

A :class:`DocumentSource` yields plain-text documents. It can be iterated in its canonical
order (for tokenising everything once) or as a shuffled stream per epoch (Hub datasets such as
C4 are read with ``datasets.load_dataset(..., streaming=True)``), and it may carry its own
validation split.
"""

from __future__ import annotations

import codecs
import glob
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from galorekit.data import corpora
from galorekit.data.config import OFFLINE_DATASETS, DataConfig, content_key

# the [train] packages are imported in the functions that use them, through needs_extra: they
# take seconds to import, and the core install and `galore --help` import this module
from galorekit.extras import needs_extra

if TYPE_CHECKING:
    import datasets

#: Local file suffixes and the ``datasets`` builder that reads them.
FILE_BUILDERS: dict[str, str] = {
    ".txt": "text",
    ".jsonl": "json",
    ".json": "json",
    ".parquet": "parquet",
}
#: Split names taken as a dataset's own validation split, in order of preference.
VALIDATION_SPLITS = ("validation", "valid", "val", "dev")


def epoch_seed(seed: int, epoch: int) -> int:
    """A 32-bit seed for ``(seed, epoch)``; unlike ``seed + epoch`` it never aliases runs."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


@dataclass
class DocumentSource:
    """Documents of one dataset: a training split and, maybe, a validation split.

    ``train`` / ``validation`` are ``datasets`` (iterable or map-style) whose ``text_column``
    holds the text; ``key`` identifies the content for caches and resumable state.
    """

    name: str
    key: str
    train: Any
    text_column: str
    validation: Any = None
    description: str = ""

    def documents(self, split: str = "train", skip: int = 0) -> Iterator[str]:
        """Documents of ``split`` in their stored order, after skipping ``skip`` of them."""
        ds = self.train if split == "train" else self.validation
        if ds is None:
            raise ValueError(f"dataset {self.name!r} has no {split!r} split")
        if skip:
            ds = ds.skip(skip)
        return _texts(ds, self.text_column)

    def shuffled_documents(
        self, seed: int, epoch: int, buffer_size: int, skip: int = 0
    ) -> Iterator[str]:
        """Training documents (after ``skip`` held out) in epoch ``epoch``'s shuffled order.

        Uses ``IterableDataset.shuffle``: shard order plus a ``buffer_size`` shuffle buffer,
        both seeded from ``(seed, epoch)``, so the order is a pure function of those.
        """
        ds = _as_iterable(self.train)
        if skip:
            ds = ds.skip(skip)
        ds = ds.shuffle(seed=epoch_seed(seed, epoch), buffer_size=buffer_size)
        return _texts(ds, self.text_column)


def open_source(cfg: DataConfig) -> DocumentSource:
    """The :class:`DocumentSource` that ``cfg`` names (offline corpus, local files or Hub)."""
    if cfg.data_files is not None:
        return _local_files(cfg)
    if cfg.dataset in OFFLINE_DATASETS:
        return _offline(cfg)
    return _hub(cfg)


# ----------------------------------------------------------------------------- builders
def _offline(cfg: DataConfig) -> DocumentSource:
    corpus = corpora.offline_corpus(cfg.dataset, cfg.resolved_cache_dir())
    key = content_key("offline", corpus.key)
    # Materialised runs only need the texts when the token cache is cold: load them lazily.
    train = _LazyCorpus(corpus.load_documents)
    source = DocumentSource(corpus.name, key, train, "text", description=corpus.description)
    if cfg.use_streaming:
        with needs_extra("train"):
            import datasets  # only here: importing it costs ~1 s that cached runs need not pay

        source.train = datasets.Dataset.from_dict(
            {"text": corpus.load_documents()}
        ).to_iterable_dataset()
    return source


def resolve_data_files(patterns: Iterable[str]) -> list[Path]:
    """Expand globs (``**`` allowed) into an ordered, de-duplicated list of supported files."""
    files: list[Path] = []
    for pattern in patterns:
        expanded = os.path.expanduser(pattern)
        matches = (
            sorted(glob.glob(expanded, recursive=True)) if glob.has_magic(expanded) else [expanded]
        )
        matches = [m for m in matches if os.path.exists(m)]
        if not matches:
            raise FileNotFoundError(
                f"no file matches data_files entry {pattern!r} (cwd: {os.getcwd()})"
            )
        for m in matches:
            path = Path(m).resolve()
            if path.is_dir():
                raise IsADirectoryError(
                    f"data_files entry {m!r} is a directory; use a glob such as '{m}/*.jsonl'"
                )
            if path not in files:
                files.append(path)
    unsupported = sorted({p.name for p in files if p.suffix.lower() not in FILE_BUILDERS})
    if unsupported:
        raise ValueError(
            f"unsupported data file type: {unsupported}; supported suffixes: {sorted(FILE_BUILDERS)}"
        )
    builders = {FILE_BUILDERS[p.suffix.lower()] for p in files}
    if len(builders) > 1:
        kinds = sorted({p.suffix.lower() for p in files})
        raise ValueError(
            f"data_files mix file types {kinds}; use one type (text, json or parquet) per run"
        )
    return files


def _local_files(cfg: DataConfig) -> DocumentSource:
    with needs_extra("train"):
        import datasets

    assert cfg.data_files is not None
    files = resolve_data_files(cfg.data_files)
    builder = FILE_BUILDERS[files[0].suffix.lower()]
    # A .txt file is one document (a book, an article); paragraphs of one text stay together.
    kwargs: dict[str, Any] = {"sample_by": "document"} if builder == "text" else {}
    column = "text" if builder == "text" else cfg.text_column
    train = datasets.load_dataset(
        builder, data_files=[str(f) for f in files], split="train", streaming=True, **kwargs
    )
    stats = [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    name = files[0].name if len(files) == 1 else f"{len(files)} {builder} files"
    source = DocumentSource(
        name,
        content_key("files", builder, column, stats),
        train,
        column,
        description=f"local files: {', '.join(str(f) for f in files[:3])}{' ...' if len(files) > 3 else ''}",
    )
    _check_column(source.train, column, name)
    return source


def _hub(cfg: DataConfig) -> DocumentSource:
    with needs_extra("train"):
        import datasets

    name, config = cfg.dataset, cfg.dataset_config
    path = Path(name).expanduser()
    if name.startswith((".", "/", "~")) and not path.exists():
        raise FileNotFoundError(f"dataset directory {name!r} does not exist")
    streaming = cfg.use_streaming
    try:
        splits = datasets.load_dataset(
            str(path) if path.exists() else name, config, streaming=streaming
        )
    except (ConnectionError, FileNotFoundError, ValueError, OSError) as e:
        choices = ", ".join(f"{k!r} ({v})" for k, v in OFFLINE_DATASETS.items())
        raise ValueError(
            f"could not load dataset {name!r}"
            + (f" (config {config!r})" if config else "")
            + f": {e}\n"
            f"Offline datasets: {choices}. Any Hugging Face Hub dataset works when online "
            "(e.g. dataset='allenai/c4', dataset_config='en'); local files go in data_files."
        ) from e
    train_split = "train" if "train" in splits else None
    if train_split is None:
        raise ValueError(f"dataset {name!r} has no 'train' split; its splits are {sorted(splits)}")
    val_split = next((s for s in VALIDATION_SPLITS if s in splits), None)
    train = splits[train_split]
    fingerprint = getattr(train, "_fingerprint", None) if not streaming else None
    key = content_key("hub", name, config, cfg.text_column, fingerprint)
    source = DocumentSource(
        name,
        key,
        train,
        cfg.text_column,
        validation=splits[val_split] if val_split else None,
        description=f"{name}"
        + (f"/{config}" if config else "")
        + (" (streaming)" if streaming else ""),
    )
    _check_column(train, cfg.text_column, name)
    return source


# ------------------------------------------------------------------------------ helpers
class _LazyCorpus:
    """A list of documents loaded on first use (the offline corpora cost ~0.5 s to read)."""

    def __init__(self, load: Any) -> None:
        self._load = load
        self._docs: list[str] | None = None

    def _all(self) -> list[str]:
        if self._docs is None:
            self._docs = list(self._load())
        return self._docs

    def __iter__(self) -> Iterator[dict[str, str]]:
        return ({"text": d} for d in self._all())

    def skip(self, n: int) -> list[dict[str, str]]:
        return [{"text": d} for d in self._all()[n:]]


def _as_iterable(ds: Any) -> datasets.IterableDataset:
    with needs_extra("train"):
        import datasets

    if isinstance(ds, datasets.IterableDataset):
        return ds
    if isinstance(ds, datasets.Dataset):
        return ds.to_iterable_dataset()
    raise TypeError(f"cannot stream a {type(ds).__name__}")


def _texts(rows: Iterable[dict[str, Any]], column: str) -> Iterator[str]:
    for row in rows:
        text = row[column]
        if text is not None:
            yield text if isinstance(text, str) else str(text)


class MissingColumnError(KeyError, ValueError):
    """A dataset without the text column asked for: bad input (``ValueError``, as the commands
    report it) that is still a ``KeyError`` for code that looks the column up."""

    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0]) if self.args else ""


def locate_decode_error(paths: Iterable[Path]) -> str | None:
    """``"'FILE' is not UTF-8 text: byte 0x.. at offset N"`` for the first of ``paths`` that does
    not decode, None when all do (read in 1 MiB blocks with an incremental decoder)."""
    for path in paths:
        decoder = codecs.getincrementaldecoder("utf-8")()
        offset = 0
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                try:
                    decoder.decode(block)
                except UnicodeDecodeError as err:
                    bad = block[err.start : err.start + 1].hex()
                    return (
                        f"{str(path)!r} is not UTF-8 text: byte 0x{bad} at offset "
                        f"{offset + err.start} ({err.reason}); convert it to UTF-8"
                    )
                offset += len(block)
    return None


def _check_column(ds: Any, column: str, name: str) -> None:
    """Fail early, listing the columns that exist, when ``column`` is not one of them."""
    columns = getattr(ds, "column_names", None)
    if columns is None:  # streamed without known features: look at the first row
        first = next(iter(ds), None)
        columns = list(first) if first is not None else None
    if columns is not None and column not in columns:
        raise MissingColumnError(
            f"text column {column!r} not in dataset {name!r}; its columns are {list(columns)} "
            "(set --text-column / text_column)"
        )
