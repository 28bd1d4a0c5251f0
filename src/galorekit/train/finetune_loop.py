"""The loop of ``galore finetune``: tokenized inputs → train one method → evaluate → best checkpoint.

The inputs are tokenized once per command (``tokenize_data``) and shared by every method of
``--compare``. The learning rate follows ``warmup_linear`` through ``LambdaLR``; each epoch's batch
order is seeded by ``epoch_seed(seed, epoch)``, as in pre-training. The steps run on the training
loop core (``galorekit.train.loop``): clipping, and a non-finite loss or gradient norm stops the run
before its update, with the message every command gives. transformers (the ``[train]`` extra, seconds
to import) is imported by the functions that use it.
"""

from __future__ import annotations

import functools
import itertools
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from galorekit.analysis import state_bytes
from galorekit.data.classification import ClassificationData, TaskSpec, tokenize_split
from galorekit.data.sources import epoch_seed
from galorekit.extras import needs_extra
from galorekit.models import count_parameters
from galorekit.train.export import ExportDirs
from galorekit.train.finetune_config import FinetuneConfig
from galorekit.train.finetune_methods import build_method
from galorekit.train.finetune_model import (
    load_model,
    load_tokenizer,
    model_max_length,
    save_best,
    trusted,
)
from galorekit.train.glue_metrics import compute_metrics, is_better, primary_metric
from galorekit.train.logging import MetricsLogger
from galorekit.train.loop import Loop, due, resolve_device
from galorekit.train.precision import apply_precision
from galorekit.train.schedule import warmup_linear  # re-exported: tests import it from here

with needs_extra("train"):  # the progress bar
    from tqdm.auto import tqdm

BEST_DIR = "best"


@dataclass
class TokenizedData:
    """Model inputs of every split (unpadded, with ``labels``) and the tokenizer that made them."""

    tokenizer: Any
    max_length: int
    train: list[dict[str, Any]]
    evals: dict[str, list[dict[str, Any]]]


def tokenize_data(data: ClassificationData, location: str, max_length: int) -> TokenizedData:
    """Tokenize ``data`` with the tokenizer of the model at ``location``, truncating to
    ``max_length`` or to what the model accepts, if less."""
    with needs_extra("train"):
        from transformers import AutoConfig

    tokenizer = load_tokenizer(location)
    config = AutoConfig.from_pretrained(location, trust_remote_code=trusted(location))
    limit = model_max_length(config, tokenizer)
    if max_length > limit:
        print(f"note: max length {max_length} exceeds what the model accepts; using {limit}")
        max_length = limit
    regression = data.task.is_regression
    return TokenizedData(
        tokenizer,
        max_length,
        tokenize_split(data.train, tokenizer, max_length, regression=regression),
        {
            name: tokenize_split(split, tokenizer, max_length, regression=regression)
            for name, split in data.evals.items()
        },
    )


def epoch_order(lengths: Sequence[int], batch_size: int, seed: int, epoch: int) -> list[int]:
    """Example indices of one epoch: shuffled under ``epoch_seed(seed, epoch)``, grouped into
    batches of similar length (less padding; transformers' ``LengthGroupedSampler``)."""
    with needs_extra("train"):
        from transformers.trainer_pt_utils import LengthGroupedSampler

    generator = torch.Generator().manual_seed(epoch_seed(seed, epoch))
    return list(LengthGroupedSampler(batch_size, lengths=list(lengths), generator=generator))


def to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """A collated batch's tensors on ``device``."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _eval_batches(
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

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    results: dict[str, float] = {}
    with torch.inference_mode():
        for i, (name, examples) in enumerate(eval_sets.items()):
            preds: list[torch.Tensor] = []
            labels: list[torch.Tensor] = []
            loss_sum = 0.0
            for batch in _eval_batches(examples, batch_size, collate):
                out = model(**to_device(batch, device))
                loss_sum += float(out.loss) * len(batch["labels"])
                logits = out.logits.float().cpu()
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
    #: bytes of the tensors the optimizer holds (``galorekit.analysis.state_bytes``)
    optimizer_state_bytes: int
    train_seconds: float
    #: model loading, training, evaluation and checkpoints (tokenization is shared: not included)
    total_seconds: float
    #: CPU time of the process (all threads): on a shared machine, wall time overstates the cost
    cpu_seconds: float
    threads: int
    lr: float
    output_dir: str


def _epoch_batches(
    examples: list[dict[str, Any]], batch_size: int, seed: int, collate: Any
) -> Iterator[dict[str, Any]]:
    """Training batches, epoch after epoch, each epoch in its own seeded order."""
    lengths = [len(e["input_ids"]) for e in examples]
    for epoch in itertools.count():
        yield from torch.utils.data.DataLoader(
            examples,
            batch_size=batch_size,
            sampler=epoch_order(lengths, batch_size, seed, epoch),
            collate_fn=collate,
        )


class _BestKeeper:
    """Evaluates, logs the metrics, and keeps the checkpoint of the best evaluation so far."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        cfg: FinetuneConfig,
        data: ClassificationData,
        inputs: TokenizedData,
        collate: Any,
        out_dir: Path,
        logger: MetricsLogger,
        bar: Any,
    ) -> None:
        self.model, self.tokenizer, self.cfg, self.data = model, tokenizer, cfg, data
        self.inputs, self.collate, self.out_dir = inputs, collate, out_dir
        self.logger, self.bar = logger, bar
        self.metric_key = "eval_" + primary_metric(data.task.metric_task)
        self.best: dict[str, float] = {}
        self.best_step = 0
        self.final: dict[str, float] = {}
        self.exports = (
            ExportDirs(cfg.export_dir, merge_adapters=not cfg.export_adapters)
            if cfg.export_dir
            else None
        )

    def export(self, which: str, step: int, metrics: Mapping[str, float]) -> None:
        """``--export-dir``: ``DIR/which`` (best, final) as a Hugging Face directory."""
        if self.exports is not None:
            meta = {"method": self.cfg.method, "task": self.data.task.name, "metrics": metrics}
            path = self.exports.write(
                which, self.model, tokenizer=self.tokenizer, step=step, **meta
            )
            self.logger.log({"event": "export", "step": step, "which": which, "path": str(path)})

    def evaluate(self, step: int, epoch: float) -> None:
        cfg, task, key = self.cfg, self.data.task, self.metric_key
        metrics = evaluate(self.model, self.inputs.evals, task, self.collate, cfg.batch_size * 2)
        self.final = metrics
        self.logger.log(
            {"event": "eval", "method": cfg.method, "step": step, "epoch": epoch, **metrics}
        )
        if is_better(key.removeprefix("eval_"), metrics[key], self.best.get(key)):
            self.best, self.best_step = metrics, step
            save_best(
                self.model,
                self.tokenizer,
                self.out_dir / BEST_DIR,
                {
                    "step": step,
                    "epoch": epoch,
                    "method": cfg.method,
                    "task": task.name,
                    "metrics": metrics,
                    "label_names": task.label_names,
                },
            )
            self.export("best", step, metrics)
        self.bar.set_postfix_str(f"{key}={metrics[key]:.4f}")


def train_and_evaluate(
    cfg: FinetuneConfig,
    data: ClassificationData,
    inputs: TokenizedData,
    location: str,
    out_dir: Path,
    logger: MetricsLogger,
) -> RunResult:
    """Load the model, build the method, train, evaluate, keep the best checkpoint.

    ``cfg`` is resolved (``resolve_presets``); ``location`` is ``resolve_model(cfg.model)``.
    """
    with needs_extra("train"):
        from transformers import DataCollatorWithPadding, set_seed

    started, cpu_started = time.perf_counter(), time.process_time()
    set_seed(cfg.seed)  # same head initialisation and batch order for every method
    device = resolve_device(cfg.device)
    model = load_model(location, data.task, inputs.tokenizer).to(device)
    total_params = count_parameters(model)
    autocast = apply_precision(model, cfg.precision, device)  # before the optimizer holds it
    model, optimizer, method_info = build_method(model, cfg)
    trainable = count_parameters(model, trainable_only=True)
    model.train()

    train_examples, tokenizer = inputs.train, inputs.tokenizer
    collate = DataCollatorWithPadding(tokenizer)
    steps_per_epoch = math.ceil(len(train_examples) / cfg.batch_size)
    total_steps = max(1, math.ceil(steps_per_epoch * cfg.epochs))
    warmup = math.ceil(cfg.warmup_ratio * total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, functools.partial(warmup_linear, warmup=warmup, total=total_steps)
    )
    logger.log(
        {
            "event": "start",
            "method": cfg.method,
            "train_examples": len(train_examples),
            "eval_examples": {k: len(v) for k, v in inputs.evals.items()},
            "steps": total_steps,
            "warmup_steps": warmup,
            "trainable_params": trainable,
            "total_params": total_params,
            "max_length": inputs.max_length,
            **method_info,
        }
    )

    train_seconds = 0.0
    window_loss, window_n, window_time = 0.0, 0, 0.0
    bar = _progress(total_steps, cfg)
    keeper = _BestKeeper(model, tokenizer, cfg, data, inputs, collate, out_dir, logger, bar)
    batches = _epoch_batches(train_examples, cfg.batch_size, cfg.seed, collate)
    loop = Loop(
        model,
        optimizer,
        scheduler,
        lambda: to_device(next(batches), device),
        lambda module, batch: module(**batch).loss,
        max_grad_norm=cfg.max_grad_norm or None,
        layerwise=cfg.layerwise,
        autocast=autocast,
        hint=f"lower --lr (now {cfg.lr:g}) or check the labels",
    )
    for out in loop.steps(total_steps):
        step = out.step
        train_seconds += out.seconds
        window_time += out.seconds
        window_loss += out.loss
        window_n += 1
        bar.update(1)
        if due(step, cfg.log_every, total_steps):
            mean = window_loss / window_n
            logger.log(
                {
                    "event": "train",
                    "method": cfg.method,
                    "step": step,
                    "epoch": step / steps_per_epoch,
                    "loss": mean,
                    "lr": out.lr,
                    # training steps only (evaluation and checkpointing excluded)
                    "steps_per_s": window_n / max(window_time, 1e-9),
                }
            )
            bar.set_postfix_str(f"loss={mean:.4f}")
            window_loss, window_n, window_time = 0.0, 0, 0.0
        epoch_end = cfg.eval_each_epoch and step % steps_per_epoch == 0
        if due(step, cfg.eval_every, total_steps) or epoch_end:
            keeper.evaluate(step, step / steps_per_epoch)
    bar.close()
    keeper.export("final", loop.step, keeper.final)
    result = RunResult(
        method=cfg.method,
        metric=keeper.metric_key,
        best=keeper.best or keeper.final,
        final=keeper.final,
        best_step=keeper.best_step,
        steps=loop.step,
        trainable_params=trainable,
        total_params=total_params,
        optimizer_state_bytes=state_bytes(optimizer),
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
    return tqdm(
        total=total, desc=cfg.method, unit="step", disable=not cfg.progress, dynamic_ncols=True
    )
