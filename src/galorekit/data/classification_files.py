"""Local classification data files (``--train-file``/``--validation-file``: CSV, TSV, JSONL, maybe
compressed): reading, column checks, the task they describe, and a seeded hold-out split."""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from galorekit.data.classification_spec import (
    COMMON_TEXT_COLUMNS,
    COMPRESSION_SUFFIXES,
    FILE_FORMATS,
    GLUE_TASKS,
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

# --------------------------------------------------------------------------- files


def file_format(path: str | Path) -> str:
    """``csv``, ``tsv``, ``jsonl`` or ``json`` from the file name (compression suffix ignored)."""
    p = Path(path)
    suffixes = [s.lower() for s in p.suffixes]
    if suffixes and suffixes[-1] in COMPRESSION_SUFFIXES:
        suffixes = suffixes[:-1]
    fmt = FILE_FORMATS.get(suffixes[-1]) if suffixes else None
    if fmt is None:
        raise DataError(
            f"cannot tell the format of {p}: use one of {', '.join(FILE_FORMATS)} "
            f"(optionally compressed: {', '.join(COMPRESSION_SUFFIXES)})"
        )
    return fmt


def read_table(path: str | Path) -> Any:
    """A local data file as a pandas DataFrame (text kept verbatim: no NA guessing)."""
    with needs_extra("train"):
        import pandas as pd

    p = Path(path)
    if not p.is_file():
        raise DataError(f"data file {p} does not exist")
    fmt = file_format(p)
    try:
        if fmt == "csv":
            df = pd.read_csv(p, dtype=str, keep_default_na=False)
        elif fmt == "tsv":
            # TSV has no quoting (IANA, and GLUE's files contain unbalanced quotes)
            df = pd.read_csv(p, sep="\t", dtype=str, keep_default_na=False, quoting=csv.QUOTE_NONE)
        elif fmt == "jsonl":
            df = pd.read_json(p, lines=True, dtype=False)
        else:
            try:
                df = pd.read_json(p, dtype=False)
            except ValueError:
                df = pd.read_json(p, lines=True, dtype=False)
    except Exception as err:  # pandas raises many types; all mean "unreadable file"
        raise DataError(f"cannot read {p} as {fmt.upper()}: {err}") from err
    if len(df) == 0:
        raise DataError(f"{p} has no data rows")
    df.columns = [str(c) for c in df.columns]
    return df


def _check_columns(available: Sequence[str], wanted: Sequence[str], where: str, what: str) -> None:
    missing = [c for c in wanted if c not in available]
    if missing:
        raise DataError(
            f"{what} {', '.join(map(repr, missing))} not in {where}; its columns are: "
            f"{', '.join(available)}"
        )


def _infer_text_columns(df: Any, label_column: str, where: str) -> tuple[str, ...]:
    for candidate in COMMON_TEXT_COLUMNS:
        if all(c in df.columns for c in candidate):
            return candidate
    others = [c for c in df.columns if c != label_column]
    if len(others) == 1:
        return (others[0],)
    raise DataError(
        f"cannot tell which columns of {where} hold the text; pass --text-columns (one column, or "
        f"two for sentence pairs); its columns are: {', '.join(df.columns)}"
    )


def _texts(values: Sequence[Any]) -> list[str]:
    return ["" if is_missing(v) else str(v) for v in values]


def split_from_columns(
    column: Callable[[str], Sequence[Any]], available: Sequence[str], task: TaskSpec, where: str
) -> TextSplit:
    """A split from any table (a DataFrame, a ``datasets.Dataset``) given a column getter."""
    _check_columns(available, task.text_columns, where, "text column(s)")
    _check_columns(available, (task.label_column,), where, "label column")
    labels = encode_labels(column(task.label_column), task, where)
    texts = _texts(column(task.text_columns[0]))
    pairs = _texts(column(task.text_columns[1])) if task.is_pair else None
    return TextSplit(texts, labels, pairs)


def _split_from_frame(df: Any, task: TaskSpec, where: str) -> TextSplit:
    return split_from_columns(lambda c: df[c].tolist(), list(df.columns), task, where)


def _file_task(cfg: ClassificationDataConfig, train_df: Any, where: str) -> TaskSpec:
    """The TaskSpec for local files: a GLUE task's (columns overridable) or inferred."""
    if cfg.text_columns is not None and not 1 <= len(cfg.text_columns) <= 2:
        raise DataError(
            f"--text-columns takes one column (single sentences) or two (sentence pairs), got "
            f"{len(cfg.text_columns)}: {', '.join(cfg.text_columns)}"
        )
    if cfg.task is not None:
        base = GLUE_TASKS[cfg.task]
        if cfg.problem_type != "auto" and (cfg.problem_type == "regression") != base.is_regression:
            raise DataError(
                f"--problem-type {cfg.problem_type} contradicts task {cfg.task!r}, which is a "
                f"{'regression' if base.is_regression else 'classification'} task"
            )
        return TaskSpec(
            base.name,
            tuple(cfg.text_columns or base.text_columns),
            cfg.label_column or base.label_column,
            base.label_names,
            base.metric_task,
        )
    label_column = cfg.label_column or "label"
    _check_columns(list(train_df.columns), (label_column,), where, "label column")
    text_columns = tuple(cfg.text_columns or _infer_text_columns(train_df, label_column, where))
    _check_columns(list(train_df.columns), text_columns, where, "text column(s)")
    names = infer_label_names(train_df[label_column].tolist(), cfg.problem_type, where)
    if names is None:
        metric = "regression"
    else:
        metric = "binary" if len(names) == 2 else "multiclass"
    return TaskSpec("custom", text_columns, label_column, names, metric, accepts_ids=False)


def sample_split(split: TextSplit, n: int, seed: int) -> tuple[TextSplit, TextSplit]:
    """``n`` examples drawn under ``seed`` and the rest, each in their original order."""
    perm = np.random.default_rng(seed).permutation(len(split))
    return split.select(np.sort(perm[:n]).tolist()), split.select(np.sort(perm[n:]).tolist())


def hold_out(split: TextSplit, fraction: float, seed: int) -> tuple[TextSplit, TextSplit]:
    """``(train, validation)``: ``fraction`` of ``split`` (at least one example) held out."""
    if not 0 < fraction < 1:
        raise DataError(f"validation fraction must be in (0, 1), got {fraction}")
    n_val = max(1, round(len(split) * fraction))
    if len(split) - n_val < 1:
        raise DataError(f"only {len(split)} example(s): too few to hold out a validation split")
    validation, train = sample_split(split, n_val, seed)
    return train, validation


def load_files(cfg: ClassificationDataConfig) -> ClassificationData:
    assert cfg.train_file is not None
    train_df = read_table(cfg.train_file)
    where = str(cfg.train_file)
    task = _file_task(cfg, train_df, where)
    train = _split_from_frame(train_df, task, where)
    notes: list[str] = []
    if cfg.validation_file:
        val_df = read_table(cfg.validation_file)
        evals = {"validation": _split_from_frame(val_df, task, str(cfg.validation_file))}
    else:
        rows = len(train)
        train, validation = hold_out(train, cfg.validation_fraction, cfg.seed)
        evals = {"validation": validation}
        notes.append(
            f"no --validation-file: held out {len(validation)} of {rows} training rows "
            f"({cfg.validation_fraction:.0%}, seed {cfg.seed}) for validation"
        )
    source = f"{cfg.train_file}" + (f" + {cfg.validation_file}" if cfg.validation_file else "")
    return ClassificationData(task, train, evals, source, notes)
