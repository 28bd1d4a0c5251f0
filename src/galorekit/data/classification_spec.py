"""What sentence(-pair) classification data is: the task (``TaskSpec``: text columns, label names
or regression, metric family; the GLUE tasks), the raw splits and the configuration, and the
label checks that name the file, row and valid labels. No data package needed."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

ROTTEN_TOMATOES = "rotten_tomatoes"
PROBLEM_TYPES = ("auto", "classification", "regression")
FILE_FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
}
COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zip", ".zst")
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
COMMON_TEXT_COLUMNS = (
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


def is_missing(value: Any) -> bool:
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
        if is_missing(value):
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
    present = [v for v in values if not is_missing(v)]
    if len(present) < len(values):
        row = next(i for i, v in enumerate(values) if is_missing(v)) + 1
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
