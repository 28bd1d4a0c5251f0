"""`galore finetune`: tiny random BERT/RoBERTa on generated data, for every method, offline.

The effect of each tuning flag is tested in ``test_finetune_flags.py``.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

from _finetune_fixtures import parse, save_tiny_encoder, tiny_args, tiny_data_files, write_rows
from galorekit.analysis import state_bytes as held_state_bytes
from galorekit.data.classification import (
    ClassificationDataConfig,
    load_classification_data,
    tokenize_split,
)
from galorekit.memory.optimizer_states import optimizer_state_tensors, total_bytes
from galorekit.models import default_target_modules
from galorekit.train import finetune as ft
from galorekit.train import finetune_config as fc
from galorekit.train import finetune_loop as fl
from galorekit.train import finetune_methods as fm
from galorekit.train import finetune_model as fmod
from galorekit.train.logging import format_bytes, read_metrics


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny matrices: with several threads, synchronisation (not arithmetic) dominates.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {kind: save_tiny_encoder(root / kind, kind) for kind in ("bert", "roberta")}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    return tiny_data_files(tmp_path_factory.mktemp("data"))


# --------------------------------------------------------------------------- pure helpers


def test_warmup_linear_warms_up_then_decays_linearly():
    total, warmup = 10, 4
    factors = [fl.warmup_linear(s, warmup=warmup, total=total) for s in range(total)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert factors[4:] == pytest.approx([1.0, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6])
    assert all(f > 0 for f in factors)  # no wasted zero-lr step
    assert fl.warmup_linear(0, warmup=0, total=5) == 1.0


def test_epoch_order_is_seeded_per_epoch_without_aliasing():
    lengths = [3 + i % 7 for i in range(64)]

    def order(seed, epoch):
        return fl.epoch_order(lengths, 8, seed, epoch)

    assert sorted(order(0, 0)) == list(range(64))
    assert order(0, 0) == order(0, 0)  # a pure function of (seed, epoch)
    assert order(0, 0) != order(0, 1)  # reshuffled every epoch
    # seed + epoch would give (seed 0, epoch 1) and (seed 1, epoch 0) the same order
    assert order(0, 1) != order(1, 0)


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_target_modules_are_the_papers_layers(models, kind):
    model = AutoModelForSequenceClassification.from_pretrained(models[kind], num_labels=2)
    targets = fm.target_modules(model)
    leaves = {".".join(t.split(".")[4:]) for t in targets}
    assert leaves == {
        "attention.self.query",
        "attention.self.key",
        "attention.self.value",
        "attention.output.dense",
        "intermediate.dense",
        "output.dense",
    }
    assert len(targets) == 6 * 2  # six matrices in each of the two layers
    assert not any("classifier" in t or "pooler" in t for t in targets)
    # galorekit.models' choice, less BERT's pooler (RoBERTa's classifier has none)
    assert targets == [t for t in default_target_modules(model) if ".pooler." not in t]


def test_compare_methods_use_the_chosen_galore_variant():
    assert fc.compare_methods("galore_adamw") == ("galore_adamw", "lora", "adamw")
    assert fc.compare_methods("galore_adamw8bit") == ("galore_adamw8bit", "lora", "adamw")
    assert fc.compare_methods("lora") == ("galore_adamw", "lora", "adamw")


def test_flags_take_their_defaults_from_the_config():
    # one source of defaults: no flags given is the dataclass's defaults
    assert ft.resolve_config(parse()) == fc.FinetuneConfig()
    given = ft.resolve_config(parse("--rank", "4", "--lr", "1e-3", "--no-tensorboard"))
    assert given == fc.FinetuneConfig(rank=4, lr=1e-3, tensorboard=False)


def test_presets_fill_what_was_not_given():
    offline = fc.resolve_presets(ft.resolve_config(parse()))
    assert offline.data.task is None and offline.model == "minilm-l6"
    assert (offline.max_length, offline.batch_size, offline.epochs) == (64, 32, 1)
    assert offline.data.max_train_samples == fc.OFFLINE_PRESET.max_train_samples
    assert offline.method == "galore_adamw" and offline.update_proj_gap == 500
    assert offline.lr == fc.OFFLINE_PRESET.lr["galore"] and offline.eval_every == 50
    cola = fc.resolve_presets(ft.resolve_config(parse("--task", "cola", "--method", "lora",
                                                      "--rank", "4")))  # fmt: skip
    assert (cola.batch_size, cola.epochs, cola.max_length) == (32, 30, 512)  # the paper's
    assert cola.lora_alpha == 8 and cola.lr == fc.GLUE_PRESET.lr["lora"]
    rte = fc.resolve_presets(ft.resolve_config(parse("--task", "rte", "--lr", "3e-5",
                                                     "--epochs", "0.5")))  # fmt: skip
    assert (rte.batch_size, rte.lr, rte.epochs) == (16, 3e-5, 0.5)
    # an unset --lr follows each method (what --compare runs), a given one is kept for all
    unset = ft.resolve_config(parse("--task", "rte"))
    for method in fc.compare_methods(unset.method):
        family = fc.method_family(method)
        resolved = fc.resolve_presets(replace(unset, method=method))
        assert resolved.lr == fc.GLUE_PRESET.lr[family]
        assert fc.resolve_presets(replace(rte, method=method)).lr == 3e-5
    cols = ft.resolve_config(parse("--train-file", "x.csv", "--text-columns", "a,b"))
    assert cols.data.text_columns == ("a", "b")
    assert ft.resolve_config(parse("--text-columns", "a", "b")).data.text_columns == ("a", "b")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--rank", "0"], "--rank must be >= 1"),
        (["--lr", "-1"], "--lr must be a positive number"),
        (["--warmup-ratio", "1.5"], "--warmup-ratio must be in [0, 1)"),
        (["--epochs", "0"], "--epochs must be a positive number"),
        (["--max-length", "1"], "--max-length must be >= 2"),
    ],
)
def test_resolve_config_rejects_bad_values(argv, message):
    with pytest.raises(fc.ConfigError, match=message.replace("[", r"\[").replace(")", r"\)")):
        ft.resolve_config(parse(*argv))


def test_argparse_lists_valid_tasks_and_methods(capsys):
    for flag, bad in (("--task", "imdb"), ("--method", "sgd")):
        with pytest.raises(SystemExit):
            parse(flag, bad)
        err = capsys.readouterr().err
        assert "invalid choice" in err and ("rotten_tomatoes" in err or "galore_adamw" in err)


# --------------------------------------------------------------------------- model loading


def test_unknown_model_lists_valid_choices(tmp_path):
    with pytest.raises(fc.ConfigError, match=r"unknown model .*minilm-l6.*local directory"):
        fmod.resolve_model(str(tmp_path / "no-such-model"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(fc.ConfigError, match=r"has no config\.json"):
        fmod.resolve_model(str(tmp_path / "empty"))


def test_bundled_minilm_resolves():
    location = fmod.resolve_model("minilm-l6")
    assert (Path(location) / "model.safetensors").is_file()


def test_classifier_with_other_label_count_is_refused(tmp_path, files):
    three_way = save_tiny_encoder(tmp_path / "nli", "bert", num_labels=3)
    data = load_classification_data(
        ClassificationDataConfig(train_file=str(files["train"]), validation_file=str(files["val"]))
    )
    tokenizer = fmod.load_tokenizer(str(three_way))
    with pytest.raises(fc.ConfigError, match=r"head with 3 label\(s\).*needs 2"):
        fmod.load_model(str(three_way), data.task, tokenizer)


# --------------------------------------------------------------------------- training


def _changed(before: dict[str, torch.Tensor], model: torch.nn.Module) -> set[str]:
    after = model.state_dict()
    return {k for k, v in before.items() if not torch.equal(v, after[k])}


@pytest.mark.parametrize("kind", ["bert", "roberta"])
@pytest.mark.parametrize("method", ["adamw", "galore_adamw", "lora"])
def test_each_method_trains_and_saves_the_best_model(models, files, tmp_path, kind, method):
    out = tmp_path / "run"
    cfg = ft.resolve_config(parse(*tiny_args(models[kind], files, out, "--method", method,
                                             "--lr", "3e-3", "--epochs", "1", "--eval-every", "8")))  # fmt: skip
    result = ft.finetune(cfg)[0]

    assert result.steps == 16  # 256 examples / batch 16
    events = read_metrics(out)
    evals = [e for e in events if e["event"] == "eval"]
    assert [e["step"] for e in evals] == [8, 16]
    assert all({"eval_accuracy", "eval_f1", "eval_matthews_correlation"} <= e.keys() for e in evals)
    assert {"train", "start", "end"} <= {e["event"] for e in events}
    total = result.total_params
    if method == "lora":
        assert result.trainable_params < total / 2
    else:  # GaLore trains every parameter, like full fine-tuning
        assert result.trainable_params == total
    assert result.optimizer_state_bytes > 0
    if method == "adamw":  # two fp32 moments per parameter (+ step counters)
        assert result.optimizer_state_bytes >= 8 * total

    # the saved best model is standalone (LoRA merged) and scores what the log says it scored
    best = out / fl.BEST_DIR
    state = json.loads((best / fmod.BEST_STATE_FILE).read_text())
    assert state["metrics"]["eval_accuracy"] == max(e["eval_accuracy"] for e in evals)
    reloaded = AutoModelForSequenceClassification.from_pretrained(best)
    assert reloaded.config.id2label == {0: "0", 1: "1"}
    tok = AutoTokenizer.from_pretrained(best)
    data = load_classification_data(cfg.data)
    examples = tokenize_split(data.evals["validation"], tok, 16, regression=False)
    metrics = fl.evaluate(
        reloaded, {"validation": examples}, data.task, DataCollatorWithPadding(tok), 32
    )
    assert metrics["eval_accuracy"] == pytest.approx(state["metrics"]["eval_accuracy"])


def resolved(*argv: str) -> fc.FinetuneConfig:
    return fc.resolve_presets(ft.resolve_config(parse(*argv)))


def test_lora_trains_adapters_and_head_only(models, files, tmp_path):
    cfg = resolved(*tiny_args(models["bert"], files, tmp_path, "--method", "lora"))
    model = AutoModelForSequenceClassification.from_pretrained(models["bert"], num_labels=2)
    peft_model, optimizer, _ = fm.build_method(model, cfg)
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable, "nothing to train"
    assert all("lora_" in n or "classifier" in n or "pooler" in n for n in trainable)
    assert any("classifier" in n for n in trainable) and any("lora_A" in n for n in trainable)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(trainable)


def test_galore_projects_the_target_matrices(models, files, tmp_path):
    cfg = resolved(*tiny_args(models["bert"], files, tmp_path, "--method", "galore_adamw"))
    model = AutoModelForSequenceClassification.from_pretrained(models["bert"], num_labels=2)
    _, optimizer, info = fm.build_method(model, cfg)
    galore = [g for g in optimizer.param_groups if "rank" in g]
    assert len(galore) == 1 and len(galore[0]["params"]) == info["target_modules"] == 12
    assert galore[0]["rank"] == 4 and galore[0]["update_proj_gap"] == 500
    names = set(galore[0]["param_names"])
    assert not any("classifier" in n or "pooler" in n or "embeddings" in n for n in names)


#: per method, settings that learn the task under every seed tried (1-5, 42) — the backbone is
#: random, so LoRA needs a wider adapter and more epochs, GaLore a refreshed subspace
LEARNING = {
    "adamw": ("--lr", "3e-3", "--epochs", "6"),
    "galore_adamw": ("--lr", "1e-2", "--epochs", "6", "--update-proj-gap", "16"),
    "lora": ("--lr", "3e-3", "--epochs", "12", "--rank", "16", "--warmup-ratio", "0.1"),
}


@pytest.mark.slow
@pytest.mark.parametrize("method", list(LEARNING))
def test_each_method_learns_the_generated_task(models, files, tmp_path, method):
    args = tiny_args(models["bert"], files, tmp_path, "--method", method, *LEARNING[method])
    result = ft.finetune(ft.resolve_config(parse(*args)))[0]
    assert result.best["eval_accuracy"] >= 0.9  # chance is 0.5


@pytest.mark.slow
def test_layerwise_galore_runs(models, files, tmp_path):
    args = tiny_args(models["bert"], files, tmp_path, "--method", "galore_adamw", "--layerwise",
                     "--lr", "3e-3", "--epochs", "1")  # fmt: skip
    result = ft.finetune(ft.resolve_config(parse(*args)))[0]
    assert result.steps == 16 and result.optimizer_state_bytes > 0


def test_pair_task_files_train_with_both_columns(models, files, tmp_path):
    args = [
        "--model", str(models["bert"]),
        "--task", "mrpc",
        "--train-file", str(files["pair_train"]),
        "--validation-file", str(files["pair_val"]),
        "--output-dir", str(tmp_path),
        "--method", "adamw", "--epochs", "1", "--batch-size", "16", "--max-length", "16",
        "--no-tensorboard", "--no-progress",
    ]  # fmt: skip
    result = ft.finetune(ft.resolve_config(parse(*args)))[0]
    assert result.metric == "eval_f1"  # MRPC is scored by F1 (and accuracy)
    evals = [e for e in read_metrics(tmp_path) if e["event"] == "eval"]
    assert {"eval_f1", "eval_accuracy"} <= evals[-1].keys()


@pytest.mark.parametrize(
    ("method", "message"),
    [
        # one message for every method (and command): stopped before the update
        ("adamw", "training diverged at step 3: the training loss became nan"),
        ("galore_adamw", "training diverged at step 3: the training loss became nan"),
    ],
)
def test_a_diverging_run_fails_cleanly(
    models, files, tmp_path, capsys, monkeypatch, method, message
):
    load_model = fl.load_model

    def nan_from_step_3(*args):  # the loss (and so the gradients) turn NaN at the third step
        model = load_model(*args)
        calls = []

        def poison(module, inputs, output):
            calls.append(1)
            return output * float("nan") if len(calls) >= 3 else output

        model.classifier.register_forward_hook(poison)
        return model

    monkeypatch.setattr(fl, "load_model", nan_from_step_3)
    out = tmp_path / "run"
    argv = tiny_args(models["bert"], files, out, "--method", method, "--eval-every", "4",
                     "--log-every", "8")  # fmt: skip
    assert ft.run(parse(*argv)) == 1
    err = capsys.readouterr().err
    assert "training failed" in err and message in err
    assert not (out / fl.BEST_DIR).exists()  # nothing diverged was evaluated or kept
    assert [e["event"] for e in read_metrics(out)] == ["start"]


# --------------------------------------------------------------------------- CLI entry point


@pytest.mark.slow
def test_run_end_to_end_refuses_to_overwrite(models, files, tmp_path, capsys):
    out = tmp_path / "cli"
    argv = tiny_args(models["roberta"], files, out, "--method", "galore_adamw", "--epochs", "1")
    argv.remove("--no-tensorboard")
    assert ft.run(parse(*argv)) == 0
    printed = capsys.readouterr().out
    assert "galore_adamw" in printed and "accuracy" in printed and "optimizer state" in printed
    for name in ("config.json", "metrics.jsonl", "results.json", "best/config.json"):
        assert (out / name).is_file(), name
    assert any((out / "tensorboard").iterdir())
    config = json.loads((out / "config.json").read_text())
    assert config["method"] == "galore_adamw" and config["update_proj_gap"] == 500

    assert ft.run(parse(*argv)) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert ft.run(parse(*argv, "--overwrite")) == 0
    assert sum(e["event"] == "start" for e in read_metrics(out)) == 1  # the old log was replaced


@pytest.mark.slow
def test_a_run_directory_in_use_is_refused_naming_the_holder(models, files, tmp_path, capsys):
    import os

    from galorekit.train.run_lock import LOCK_FILE, RunLock

    out = tmp_path / "locked"
    argv = tiny_args(models["bert"], files, out, "--method", "adamw", "--epochs", "1")
    with RunLock(out):  # as another process would hold it
        assert ft.run(parse(*argv)) == 2
        err = capsys.readouterr().err
        assert f"is in use by another run (pid {os.getpid()} " in err and len(err.splitlines()) == 1
    assert [p.name for p in out.iterdir()] == [LOCK_FILE]  # nothing was written
    assert ft.run(parse(*argv)) == 0  # released: the run goes ahead


@pytest.mark.slow
def test_compare_prints_one_table_for_three_methods(models, files, tmp_path, capsys, monkeypatch):
    optimizers, tokenized = {}, []
    tokenize = fl.tokenize_split

    def build_method(model, cfg):
        built = fm.build_method(model, cfg)
        optimizers[cfg.method] = built[1]
        return built

    def tokenize_split(split, *args, **kwargs):
        tokenized.append(len(split))
        return tokenize(split, *args, **kwargs)

    monkeypatch.setattr(fl, "build_method", build_method)
    monkeypatch.setattr(fl, "tokenize_split", tokenize_split)
    argv = tiny_args(models["bert"], files, tmp_path, "--compare", "--epochs", "1")
    assert ft.run(parse(*argv)) == 0
    assert tokenized == [256, 96]  # tokenized once (train, validation), not once per method
    table = capsys.readouterr().out.split("galore finetune --compare")[-1]
    for method in ("galore_adamw", "lora", "adamw"):
        assert method in table
        assert (tmp_path / method / "best" / "config.json").is_file()
    rows = json.loads((tmp_path / ft.COMPARISON_FILE).read_text())
    assert [r["method"] for r in rows] == ["galore_adamw", "lora", "adamw"]
    state = {r["method"]: r["trainable params"] for r in rows}
    assert state["lora"] < state["galore_adamw"] == state["adamw"]
    compare_events = [e for e in read_metrics(tmp_path) if e["event"] == "compare"]
    assert len(compare_events) == 3 and all("eval_accuracy" in e for e in compare_events)
    # the reported optimizer state is what each optimizer holds: the state layout of its class
    # after every parameter's first step, bitsandbytes' shared maps counted once
    for event, row in zip(compare_events, rows, strict=True):
        optimizer = optimizers[event["method"]]
        held = held_state_bytes(optimizer)
        assert event["optimizer_state_bytes"] == held > 0
        assert held == total_bytes(optimizer_state_tensors(optimizer))
        assert row["optimizer state"] == format_bytes(held)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["--text-columns", "review"],
            "text column(s) 'review' not in .*columns are: sentence, label",
        ),
        (["--label-column", "stars"], "label column 'stars' not in"),
        (["--task", "stsb"], "'sentence1', 'sentence2' not in"),
    ],
)
def test_run_reports_bad_columns(models, files, tmp_path, capsys, extra, message):
    assert ft.run(parse(*tiny_args(models["bert"], files, tmp_path, *extra))) == 2
    assert re.search(message.replace("(", r"\(").replace(")", r"\)"), capsys.readouterr().err)


def test_run_reports_labels_that_do_not_fit_the_task(models, tmp_path, capsys):
    rows = [{"sentence": "good film", "label": 0.5}, {"sentence": "bad film", "label": 1.0}]
    train = write_rows(tmp_path / "scores.csv", rows)
    argv = ["--model", str(models["bert"]), "--task", "sst2", "--train-file", str(train),
            "--output-dir", str(tmp_path / "o"), "--no-progress", "--no-tensorboard"]  # fmt: skip
    assert ft.run(parse(*argv)) == 2
    err = capsys.readouterr().err
    assert "is a float" in err and "classification task" in err and "negative, positive" in err


def test_run_reports_unknown_model(tmp_path, files, capsys):
    argv = tiny_args(tmp_path / "missing", files, tmp_path / "o")
    assert ft.run(parse(*argv)) == 2
    assert "unknown model" in capsys.readouterr().err


def test_bad_input_never_deletes_a_previous_run(tmp_path, files, capsys):
    out = tmp_path / "old"
    out.mkdir()
    (out / "config.json").write_text("{}")
    (out / "metrics.jsonl").write_text('{"event": "eval"}\n')
    (out / "notes.txt").write_text("mine")
    argv = tiny_args(tmp_path / "missing-model", files, out, "--overwrite")
    assert ft.run(parse(*argv)) == 2
    assert "unknown model" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "metrics.jsonl", "notes.txt"]
    ft.prepare_output_dir(out, overwrite=True)  # clears only galorekit's own files
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_choose_threads(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert ft.choose_threads(3, 2, 9.0, 2) == (3, "--threads")
    assert ft.choose_threads(0, 2, 0.5, 2) == (2, "auto")
    threads, why = ft.choose_threads(0, 2, 4.2, 2)
    assert threads == 1 and "busy (load 4.2 on 2 cores)" in why
    assert ft.choose_threads(0, 2, None, 2) == (2, "auto")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert ft.choose_threads(0, 2, 9.0, 2) == (2, "OMP_NUM_THREADS")
    with pytest.raises(fc.ConfigError, match="--threads must be >= 0"):
        ft.resolve_config(parse("--threads", "-1"))
