"""``galore sft``'s configuration: ``SFTConfig``, the one place of its defaults and help texts, from
which the flags, ``--config`` files and the run's ``config.json`` are generated
(``galorekit.config``). Torch-free: ``galore --help`` imports it.

The method's flags are ``galore pretrain``'s (``MethodConfig``'s defaults and help), except the
learning rate: ``--lr`` unset means a fine-tuning rate per method family (:data:`SFT_LR`), not the
pre-training one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
from galorekit.data.sft import SFTDataConfig
from galorekit.methods.config import MethodConfig
from galorekit.names import DISTRIBUTED_STRATEGIES, method_info
from galorekit.train.batching import DataParallelBatch
from galorekit.train.logging import REPORT_TO_HELP, report_to_error
from galorekit.train.pretrain_config import distributed_errors, method_flags

#: the offline default model (an alias of ``galorekit.models.pretrained.MODEL_ALIASES``; not
#: imported from there: galorekit.models imports torch, and ``galore --help`` imports this module)
DEFAULT_MODEL = "smollm2-135m-instruct"
#: peak learning rates of fine-tuning when --lr is not given, per method family: the usual rates
#: for full fine-tuning and LoRA of small LMs, GaLore's between them (its update is scaled by
#: --scale 0.25); not swept here — the default task was never tuned on its test split
SFT_LR = {"full": 2e-5, "galore": 1e-4, "adapter": 5e-4}
#: fields of the checkpoint's identity: a resumed run must agree on them
RESUME_KEYS = ("model", "method", "batch_size", "total_batch_size", "data_fingerprint")
GROUPS = {
    "model": "model and method",
    "galore": "GaLore options (galore_* methods)",
    "baselines": "baselines (lora, relora, low_rank)",
    "data": "data",
    "loop": "loop",
    "parallel": "data parallelism (torch.distributed)",
    "eval": "evaluation",
    "output": "output",
}


@dataclass
class SFTConfig(DataParallelBatch):
    """One supervised fine-tuning run. ``galore sft --help`` documents each field."""

    model: str = option(
        DEFAULT_MODEL,
        f"causal LM: {DEFAULT_MODEL} (SmolLM2-135M-Instruct, bundled as GGUF, offline), a local "
        "directory, a .gguf file, or a Hugging Face hub id",
        group="model",
        trajectory=True,
    )
    trust_remote_code: bool = option(
        False,
        "run the code a Hub or local model/tokenizer ships (auto_map in its config); without "
        "it such a model is refused, never run and never asked about",
        group="model",
    )
    data: SFTDataConfig = field(default_factory=SFTDataConfig)
    method: MethodConfig = field(default_factory=lambda: MethodConfig(method="galore_adamw"))
    epochs: float = option(1.0, "passes over the training data", group="loop", trajectory=True)
    max_steps: int | None = option(
        None, "optimizer steps (overrides --epochs)", group="loop", trajectory=True
    )
    batch_size: int = option(8, "sequences per micro-batch", group="loop", trajectory=True)
    total_batch_size: int | None = option(
        None,
        "sequences per optimizer step over all processes (gradient accumulation = total / "
        "(batch × processes); default: batch × processes)",
        group="loop",
        trajectory=True,
    )
    warmup_ratio: float = option(
        0.1, "linear warm-up share of the steps", group="loop", trajectory=True
    )
    min_lr_ratio: float = option(
        0.1, "the cosine schedule decays to this × the peak", group="loop", trajectory=True
    )
    precision: str = option(
        "fp32", PRECISION_HELP, group="loop", choices=PRECISIONS, trajectory=True
    )
    activation_checkpointing: bool = option(
        False, "recompute activations in backward (less memory, more time)", group="loop"
    )
    device: str = option(DEVICE_DEFAULT, DEVICE_HELP, group="loop")
    seed: int = option(
        0,
        "seeds the data split and order, the adapters and every RNG",
        group="loop",
        trajectory=True,
    )
    nproc_per_node: int = option(
        1,
        "processes on this machine, launched through torchrun (--distributed ddp or fsdp; gloo "
        "on CPU, NCCL on CUDA, one GPU each); --batch-size is then per process and "
        "--total-batch-size global",
        group="parallel",
    )
    world_size: int | None = option(None, cli=False)  # None: torchrun's WORLD_SIZE or nproc
    distributed: str = option(
        "ddp",
        "data-parallel strategy: ddp (DistributedDataParallel; --layerwise reduces in its hooks "
        "instead) or fsdp (FSDP2 fully_shard: the model's weights, gradients and optimizer "
        "states sharded by rows; GaLore projects on the right and refreshes from all-reduced "
        "sketches; checkpoints sharded, exports gathered; methods adamw, adamw8bit, "
        "galore_adamw, galore_adamw8bit, with --layerwise too)",
        group="parallel",
        choices=DISTRIBUTED_STRATEGIES,
        trajectory=True,
    )
    eval_every: int = option(
        0,
        "optimizer steps between validation losses (0: before and after training only)",
        group="eval",
    )
    generate_eval: int = option(
        200,
        "held-out examples (the test split, else validation) whose greedily generated answers "
        "are scored before and after training (0: off)",
        group="eval",
    )
    max_new_tokens: int = option(16, "longest generated answer when scoring", group="eval")
    samples: int = option(3, "generations printed before/after training", group="eval")
    log_every: int = option(5, "optimizer steps between train-loss events", group="output")
    save_every: int = option(
        50, "optimizer steps between checkpoints (0: only at the end)", group="output"
    )
    keep_checkpoints: int = option(2, "checkpoints kept (older ones are pruned)", group="output")
    output_dir: str | None = option(
        None, "run directory (default: runs/sft-MODEL-METHOD-TIME)", group="output"
    )
    export_dir: str | None = option(
        None,
        "also write the model as Hugging Face directories (config.json, safetensors, tokenizer, "
        "generation config): DIR/final at the end and, with --eval-every, DIR/best at each "
        "evaluation that improves the validation loss",
        group="output",
        metavar="DIR",
    )
    export_adapters: bool = option(
        False,
        "--export-dir: save LoRA adapters as a peft adapter instead of merging them into the "
        "weights",
        group="output",
    )
    resume: str | None = option(None, cli=False)  # "latest" or a checkpoint path
    overwrite: bool = option(False, "replace a run in --output-dir", group="output")
    progress: bool = option(True, "no progress bar", group="output")
    tensorboard: bool = option(True, "no TensorBoard event files", group="output")
    report_to: str = option("tensorboard", REPORT_TO_HELP, group="output")

    def __post_init__(self) -> None:
        self._finish("sft", _errors)

    @property
    def peak_lr(self) -> float:
        if self.method.lr is not None:
            return self.method.lr
        return SFT_LR[method_info(self.method.method).family]


def _errors(cfg: SFTConfig) -> list[str]:
    errors = []
    for name in ("batch_size", "log_every", "keep_checkpoints", "max_new_tokens"):
        if getattr(cfg, name) < 1:
            errors.append(f"--{name.replace('_', '-')} must be ≥ 1, got {getattr(cfg, name)}")
    for name in ("eval_every", "save_every", "generate_eval", "samples"):
        if getattr(cfg, name) < 0:
            errors.append(f"--{name.replace('_', '-')} must be ≥ 0, got {getattr(cfg, name)}")
    if cfg.max_steps is not None and cfg.max_steps < 1:
        errors.append(f"--max-steps must be ≥ 1, got {cfg.max_steps}")
    if not cfg.epochs > 0:
        errors.append(f"--epochs must be > 0, got {cfg.epochs}")
    if not 0.0 <= cfg.warmup_ratio < 1.0:
        errors.append(f"--warmup-ratio must be in [0, 1), got {cfg.warmup_ratio}")
    if not 0.0 <= cfg.min_lr_ratio <= 1.0:
        errors.append(f"--min-lr-ratio must be in [0, 1], got {cfg.min_lr_ratio}")
    errors += cfg.batch_errors()
    if cfg.nproc_per_node < 1:
        errors.append(f"--nproc-per-node must be ≥ 1, got {cfg.nproc_per_node}")
    if cfg.data.max_seq_len < 2:
        errors.append(f"--max-seq-len must be ≥ 2, got {cfg.data.max_seq_len}")
    for name in ("max_train_samples", "max_eval_samples"):
        value = getattr(cfg.data, name)
        if value is not None and value < 1:
            errors.append(f"--{name.replace('_', '-')} must be ≥ 1, got {value}")
    errors += distributed_errors(cfg.distributed, cfg.method)
    if cfg.export_adapters and cfg.export_dir is None:
        errors.append("--export-adapters applies to --export-dir: give the directory too")
    if cfg.resume is not None and cfg.overwrite:
        errors.append("--resume and --overwrite contradict each other")
    if (report := report_to_error(cfg.report_to)) is not None:
        errors.append(report)
    return errors


# ------------------------------------------------------------------------------ the flags
def _flags() -> list[Flag]:
    method = [
        dataclasses.replace(
            fl,
            help="peak learning rate (default per method family: "
            + ", ".join(f"{k} {v:g}" for k, v in SFT_LR.items())
            + ")",
        )
        if fl.name == "lr"
        else fl
        for fl in method_flags()
    ]
    method = [
        dataclasses.replace(fl, default="galore_adamw") if fl.name == "method" else fl
        for fl in method
    ]
    return flags_of(SFTConfig, nested={"data": SFTDataConfig}) + method


#: every setting of ``galore sft``, in the order of ``--help``
FLAGS: list[Flag] = _flags()


def build_config(values: dict[str, Any]) -> SFTConfig:
    """The ``SFTConfig`` of flat ``values`` (missing settings: the defaults)."""
    parts: dict[str, dict[str, Any]] = {"": {}, "data": {}, "method": {"method": "galore_adamw"}}
    for fl in FLAGS:
        if fl.name in values:
            section = fl.path[0] if len(fl.path) > 1 else ""
            parts[section][fl.name] = values[fl.name]
    method = parts["method"]
    if "max_grad_norm" in method and not method["max_grad_norm"]:
        method["max_grad_norm"] = None  # 0: off
    seed = values.get("seed", 0)
    return SFTConfig(
        data=SFTDataConfig(**parts["data"], seed=seed),
        method=MethodConfig(**method),
        **parts[""],
        **{k: values[k] for k in ("resume", "world_size") if k in values},
    )


def config_values(cfg: SFTConfig) -> dict[str, Any]:
    """Flat name → value of every setting (``config.json``; reads back through
    ``build_config``), with the learning rate actually used."""
    out = flatten(cfg, FLAGS)
    if out["max_grad_norm"] is None:
        out["max_grad_norm"] = 0.0
    out["lr"] = cfg.peak_lr
    return out


def default_output_dir(cfg: SFTConfig) -> Path:
    import time

    name = Path(cfg.model).stem if cfg.model.endswith(".gguf") else cfg.model.replace("/", "-")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"sft-{name}-{cfg.method.method}-{stamp}"
