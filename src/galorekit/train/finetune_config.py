"""Configuration of ``galore finetune``: the run's dataclass and the per-data-source presets.

``FinetuneConfig`` is the one source of defaults (the command's flags take theirs from it). Fields
left ``None`` follow the data source (``Preset``): the offline default is sized for 2 CPU cores,
GLUE follows the paper. ``resolve_presets`` fills them for one method and checks the result.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TypeVar

from galorekit.data.classification import GLUE_TASKS, ROTTEN_TOMATOES, ClassificationDataConfig
from galorekit.names import PROJ_TYPES

METHODS = ("full", "galore_adamw", "galore_adamw8bit", "galore_adafactor", "lora")
MINILM_ALIASES = ("minilm-l6", "all-minilm-l6-v2", "sentence-transformers/all-MiniLM-L6-v2")
T = TypeVar("T")


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


_PAPER_LR = {"full": 2e-5, "galore": 2e-5, "lora": 4e-4}
#: the offline default, sized for 2 shared CPU cores: 100 steps of batch 32 on 3200 reviews, two
#: evaluations of 800 (reviews average 27 tokens, so 64 truncates almost none).
#: Learning rates picked on this split (GaLore's projected update is smaller than Adam's).
OFFLINE_PRESET = Preset(
    max_length=64,
    batch_size=32,
    epochs=1,
    warmup_ratio=0.1,
    lr={"full": 1e-4, "galore": 3e-4, "lora": 1e-3},
    max_train_samples=3200,
    max_eval_samples=800,
    eval_every=50,
)
#: the paper's GLUE setting (RoBERTa-base): batch 16 (CoLA 32), 30 epochs, max length 512
GLUE_PRESET = Preset(max_length=512, batch_size=16, epochs=30, warmup_ratio=0.06, lr=_PAPER_LR)
FILE_PRESET = Preset(max_length=128, batch_size=32, epochs=3, warmup_ratio=0.06, lr=_PAPER_LR)


@dataclass
class FinetuneConfig:
    """One fine-tuning run (``--compare``: one per method of ``compare_methods``).

    ``None`` fields take the data source's ``Preset`` (``lr`` the one of the method's family,
    ``lora_alpha`` 2 x rank, ``output_dir`` runs/finetune/<task>-<method>-<time>); so do the
    sample limits of ``data``.
    """

    data: ClassificationDataConfig = field(default_factory=ClassificationDataConfig)
    model: str = MINILM_ALIASES[0]
    method: str = "galore_adamw"
    rank: int = 8
    scale: float = 2.0
    update_proj_gap: int = 500
    proj_type: str = "std"
    layerwise: bool = False
    lora_alpha: float | None = None
    lr: float | None = None
    weight_decay: float = 0.0
    warmup_ratio: float | None = None
    batch_size: int | None = None
    epochs: float | None = None
    max_length: int | None = None
    #: global gradient-norm clip (0: off)
    max_grad_norm: float = 1.0
    #: initialisation and batch order (the CLI's --seed also seeds ``data``'s split)
    seed: int = ClassificationDataConfig.seed
    output_dir: str | None = None
    overwrite: bool = False
    #: steps between evaluations (0: end of each epoch)
    eval_every: int | None = None
    log_every: int = 10
    compare: bool = False
    tensorboard: bool = True
    progress: bool = True
    #: CPU threads for torch; 0 = auto (see ``finetune.choose_threads``)
    threads: int = 0


def method_family(method: str) -> str:
    """``galore`` for every GaLore optimizer, else the method itself (the keys of ``Preset.lr``)."""
    return "galore" if method.startswith("galore") else method


def compare_methods(method: str) -> tuple[str, ...]:
    """What ``--compare`` runs: ``method`` if it is a GaLore one (else galore_adamw), LoRA, full."""
    return (method if method_family(method) == "galore" else "galore_adamw", "lora", "full")


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
    )
    check_config(resolved)
    return resolved


def _check_method(method: str) -> None:
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
    if not 0 <= cfg.warmup_ratio < 1:
        raise ConfigError(f"--warmup-ratio must be in [0, 1), got {cfg.warmup_ratio}")
    if cfg.weight_decay < 0 or cfg.max_grad_norm < 0 or cfg.eval_every < 0 or cfg.threads < 0:
        raise ConfigError(
            "--weight-decay, --max-grad-norm, --eval-every and --threads must be >= 0"
        )
