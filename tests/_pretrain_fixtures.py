"""What the `galore pretrain` tests share: a tiny-run command line and the metrics reader."""

from __future__ import annotations

from galorekit.train.logging import read_metrics


def pretrain_argv(corpus: dict[str, str], out, *extra: str) -> list[str]:
    """`galore pretrain` on llama_tiny over the small local corpus; ``extra`` flags win."""
    return [
        "pretrain",
        "--model", "llama_tiny",
        "--data-files", corpus["file"],
        "--cache-dir", corpus["cache"],
        "--vocab-size", "400",
        "--seq-len", "32",
        "--batch-size", "4",
        "--val-sequences", "8",
        "--log-every", "1",
        "--output-dir", str(out),
        "--no-progress",
        "--no-tensorboard",
        "--no-plot",
        *extra,
    ]  # fmt: skip


def events(out, kind: str) -> list[dict]:
    return [e for e in read_metrics(out) if e.get("event") == kind]
