"""Small real-text corpora and a small trained tokenizer for the data-pipeline tests."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from galorekit.data.corpora import kjv_documents
from galorekit.data.tokenizer import train_bpe_tokenizer


@lru_cache(maxsize=1)
def kjv_chapters() -> tuple[str, ...]:
    return tuple(kjv_documents())


def small_docs(n: int = 60, start: int = 0, max_chars: int = 160) -> list[str]:
    """The heads of ``n`` KJV chapters (~40 tokens each), tagged ``@@<i>@@`` for leak checks."""
    chapters = kjv_chapters()[start : start + n]
    return [f"@@{start + i}@@ {text[:max_chars]}" for i, text in enumerate(chapters)]


def save_small_tokenizer(path: Path, vocab_size: int = 600) -> Path:
    """A byte-level BPE trained on 150 chapters, saved with ``save_pretrained``."""
    tok = train_bpe_tokenizer(kjv_chapters()[:150], vocab_size)
    tok.save_pretrained(str(path))
    return path


def write_jsonl(path: Path, docs: list[str], column: str = "text") -> Path:
    with path.open("w") as f:
        for i, d in enumerate(docs):
            f.write(json.dumps({column: d, "id": i}) + "\n")
    return path


def write_parquet(path: Path, docs: list[str], column: str = "text") -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({column: docs, "id": list(range(len(docs)))}), path)
    return path


def write_txt_files(folder: Path, docs: list[str]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, d in enumerate(docs):
        p = folder / f"doc{i:04d}.txt"
        p.write_text(d)
        paths.append(p)
    return paths
