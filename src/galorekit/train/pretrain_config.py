"""``galore pretrain``'s configuration: ``PretrainConfig``, the one place of its defaults and help
texts, from which the flags, ``--config`` files and the run's ``config.json`` are generated
(``galorekit.config``). Torch-free: ``galore --help`` imports it.

The nested ``DataConfig`` (``galorekit.data.config``) and ``MethodConfig``
(``galorekit.methods.config``, torch-free) are not declared with ``option``: ``DataConfig``'s help
texts are here (``_DATA_HELP``); ``MethodConfig``'s defaults and help texts are its own, and
``_METHOD`` adds only each flag's kind, group and choices.
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
    differences,
    file_values,
    flags_of,
    flatten,
    option,
    read_config_file,
)
from galorekit.data.config import DataConfig
from galorekit.methods.config import MethodConfig, field_help
from galorekit.names import (
    ALL_METHODS,
    DISTRIBUTED_STRATEGIES,
    METHODS,
    MOMENT_POLICIES,
    PROJ_TYPES,
    PROJECTIONS,
    RESIDUALS,
    SCALINGS,
    STATE_DTYPES,
    WEIGHT_ROUNDINGS,
    is_galore,
)
from galorekit.train.batching import DataParallelBatch
from galorekit.train.logging import REPORT_TO_HELP, report_to_error

#: fields that must match between a checkpoint and the run resuming from it
RESUME_KEYS = ("model", "method", "seq_len", "batch_size", "total_batch_size", "data_fingerprint")
#: galorekit's GaLore methods (low-rank communication and FSDP read their projectors)
GALORE_METHODS = tuple(m for m in METHODS if is_galore(m))  # with the successors
#: --flag → its argument group's title
GROUPS = {
    "model": "model and method",
    "galore": "GaLore options (galore_* methods)",
    "baselines": "baselines (lora, relora, low_rank)",
    "data": "data",
    "loop": "loop",
    "parallel": "data parallelism (torch.distributed)",
    "output": "output",
}
#: old spellings, refused with a pointer
RENAMED = {
    "--grad-clip": "use --max-grad-norm (0: off)",
    "--dtype": "use --precision fp32|bf16-mixed|bf16-true (bfloat16 autocast is bf16-mixed, bfloat16 "
    "weights bf16-true)",
}


@dataclass
class PretrainConfig(DataParallelBatch):
    """One pre-training run. ``galore pretrain --help`` documents each field."""

    model: str = option(
        "llama_9m",
        "named config (llama_tiny, llama_9m, llama_20m, llama_60m, llama_130m, llama_350m, "
        "llama_1b, llama_3b, llama_7b), a JSON config file, or a Hugging Face config name/path",
        group="model",
        trajectory=True,
    )
    init_from: str | None = option(
        None,
        "start from the weights of this Hugging Face model: an --export-dir export "
        "(DIR/final), a save_pretrained or peft adapter directory, or a Hub name; its "
        "architecture is the model's (a --model naming another one is an error) and its "
        "tokenizer is used unless --tokenizer is given",
        group="model",
        metavar="DIR",
        trajectory=True,
    )
    data: DataConfig = field(default_factory=DataConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    # not a trajectory setting: a resumed run may be extended (its cosine tail then stretches)
    max_steps: int = option(200, "optimizer steps", group="loop")
    batch_size: int = option(
        8, "sequences per micro-batch (per process)", group="loop", trajectory=True
    )
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
    eval_every: int = option(
        50, "optimizer steps between evaluations (0: only at the end)", group="loop"
    )
    eval_batch_size: int | None = option(
        None, "sequences per evaluation batch (default: --batch-size)", group="loop"
    )
    save_every: int = option(
        1000, "optimizer steps between checkpoints (0: only at the end)", group="loop"
    )
    save_every_minutes: float = option(
        30.0,
        "also checkpoint when this many minutes passed since the last checkpoint, so that a crash "
        "loses at most that much training (0: off)",
        group="loop",
    )
    keep_checkpoints: int = option(2, "checkpoints kept (older ones are pruned)", group="loop")
    log_every: int = option(10, "optimizer steps between train-loss events", group="loop")
    output_dir: str | None = option(
        None, "run directory (default: runs/pretrain-MODEL-METHOD-TIME)", group="output"
    )
    export_dir: str | None = option(
        None,
        "also write the model as Hugging Face directories (config.json, safetensors, tokenizer, "
        "generation config): DIR/final at the end and DIR/best at each evaluation that improves "
        "the validation loss",
        group="output",
        metavar="DIR",
    )
    export_adapters: bool = option(
        False,
        "--export-dir: save LoRA/ReLoRA adapters as a peft adapter (base in DIR/*/base) instead "
        "of merging them into the weights",
        group="output",
    )
    resume: str | None = option(None, cli=False)  # "latest" or a checkpoint path
    overwrite: bool = option(False, "replace a run in --output-dir", group="output")
    allow_config_change: bool = option(
        False,
        "--resume: accept settings that change the run's trajectory (--lr, --rank, --seed, …); "
        "the changes are recorded in config.json and metrics.jsonl",
        group="output",
    )
    precision: str = option(
        "fp32",
        PRECISION_HELP,
        group="loop",
        choices=PRECISIONS,
        trajectory=True,
    )
    activation_checkpointing: bool = option(
        False, "recompute activations in backward (less memory, more time)", group="loop"
    )
    device: str = option(DEVICE_DEFAULT, DEVICE_HELP, group="loop")
    seed: int = option(
        0, "seeds the model, the data order and every RNG", group="loop", trajectory=True
    )
    trust_remote_code: bool = option(
        False,
        "run the code a Hub or local model/tokenizer ships (auto_map in its config); without "
        "it such a model is refused, never run and never asked about",
        group="model",
    )
    progress: bool = option(True, "no progress bar", group="output")
    tensorboard: bool = option(True, "no TensorBoard event files", group="output")
    report_to: str = option("tensorboard", REPORT_TO_HELP, group="output")
    plot: bool = option(True, "no curves.png at the end", group="output")
    nproc_per_node: int = option(
        1,
        "processes on this machine, launched through torchrun (gloo on CPU, NCCL on CUDA, one GPU "
        "each); --batch-size is then per process and --total-batch-size global",
        group="parallel",
    )
    world_size: int | None = option(None, cli=False)  # None: torchrun's WORLD_SIZE or nproc
    distributed: str = option(
        "ddp",
        "data-parallel strategy: ddp (DistributedDataParallel; --layerwise reduces in its hooks "
        "instead) or fsdp (FSDP2 fully_shard: parameters, gradients and optimizer states sharded "
        "by rows; GaLore projects on the right and refreshes from all-reduced sketches; methods "
        "adamw, adamw8bit, galore_adamw, galore_adamw8bit, with --layerwise too)",
        group="parallel",
        choices=DISTRIBUTED_STRATEGIES,
        trajectory=True,
    )
    lowrank_comm: bool = option(
        False,
        "GaLore methods: between subspace refreshes all-reduce each projected gradient (r×n) "
        "instead of the full one (m×n); full gradients only at refresh steps",
        group="parallel",
        trajectory=True,
    )

    def __post_init__(self) -> None:
        self._finish("pre-training", _errors)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _errors(cfg: PretrainConfig) -> list[str]:
    """Everything wrong with ``cfg`` (one message for all of it)."""
    errors = []
    for name in ("max_steps", "batch_size", "log_every"):
        if getattr(cfg, name) < 1:
            errors.append(f"{name} must be ≥ 1, got {getattr(cfg, name)}")
    for name in ("eval_every", "save_every"):
        if getattr(cfg, name) < 0:
            errors.append(f"{name} must be ≥ 0 (0: only at the end), got {getattr(cfg, name)}")
    if not cfg.save_every_minutes >= 0:
        errors.append(f"save_every_minutes must be ≥ 0 (0: off), got {cfg.save_every_minutes}")
    if cfg.keep_checkpoints < 1:
        errors.append(f"keep_checkpoints must be ≥ 1, got {cfg.keep_checkpoints}")
    if not 0.0 <= cfg.warmup_ratio < 1.0:
        errors.append(f"warmup_ratio must be in [0, 1), got {cfg.warmup_ratio}")
    if not 0.0 <= cfg.min_lr_ratio <= 1.0:
        errors.append(f"min_lr_ratio must be in [0, 1], got {cfg.min_lr_ratio}")
    if cfg.precision not in PRECISIONS:
        errors.append(f"precision must be one of {', '.join(PRECISIONS)}, got {cfg.precision!r}")
    if cfg.nproc_per_node < 1 or cfg.world_size < 1:
        errors.append(
            f"nproc_per_node and world_size must be ≥ 1, got {cfg.nproc_per_node} and "
            f"{cfg.world_size}"
        )
    errors += cfg.batch_errors()
    errors += _parallel_errors(cfg)
    if cfg.method.weight_rounding != "nearest" and cfg.precision != "bf16-true":
        errors.append(
            f"--weight-rounding {cfg.method.weight_rounding} rounds bf16 weights: it needs "
            f"--precision bf16-true (the weights are {cfg.precision}'s float32)"
        )
    if cfg.export_adapters and cfg.export_dir is None:
        errors.append("--export-adapters applies to --export-dir: give the directory too")
    if cfg.resume is not None and cfg.overwrite:
        errors.append("--resume and --overwrite contradict each other")
    if (report := report_to_error(cfg.report_to)) is not None:
        errors.append(report)
    return errors


def distributed_errors(distributed: str, method: MethodConfig) -> list[str]:
    """What ``--distributed`` refuses with ``method`` (``galore pretrain`` and ``galore sft``;
    checked for one process too, so that a command valid alone stays valid under torchrun)."""
    if distributed not in DISTRIBUTED_STRATEGIES:
        return [
            f"unknown --distributed {distributed!r}; valid: " + ", ".join(DISTRIBUTED_STRATEGIES)
        ]
    if distributed != "fsdp":
        return []
    from galorekit.distributed.fsdp import FSDP_METHODS  # torch: when a config is built

    errors = []
    if method.method not in FSDP_METHODS:
        errors.append(
            f"--distributed fsdp supports the methods {', '.join(FSDP_METHODS)}, not "
            f"{method.method} (Adafactor's statistics span whole matrices; the "
            "adapter baselines rebuild the model); use --distributed ddp"
        )
    if method.method in GALORE_METHODS and method.proj_type not in ("std", "right"):
        errors.append(
            "--distributed fsdp projects every matrix on the right (R = G·Q is local to "
            f"a row shard): --proj-type must be std or right, not {method.proj_type}"
        )
    return errors


def _parallel_errors(cfg: PretrainConfig) -> list[str]:
    method = cfg.method
    errors = distributed_errors(cfg.distributed, method)
    if cfg.distributed == "fsdp" and cfg.lowrank_comm:
        errors.append(
            "--lowrank-comm is a DDP option (FSDP2 reduce-scatters full gradients); use "
            "--distributed ddp with it"
        )
    if cfg.lowrank_comm:
        if method.method not in GALORE_METHODS:
            errors.append(
                "--lowrank-comm communicates GaLore's projected gradients: it needs a galore_* "
                f"method, not {method.method}"
            )
        if method.layerwise:
            errors.append(
                "--lowrank-comm is not available with --layerwise (the layer-wise optimizer "
                "all-reduces full gradients inside its hooks)"
            )
        if cfg.world_size < 2:
            errors.append("--lowrank-comm needs data parallelism (--nproc-per-node ≥ 2)")
    return errors


# ------------------------------------------------------------------------------ the flags
_DATA_HELP: dict[str, dict[str, Any]] = {
    "data.dataset": {
        "help": "default (KJV + Shakespeare, offline), kjv, shakespeare, or a Hugging Face "
        "dataset name such as allenai/c4 (streamed; needs internet)",
        "show_default": False,
    },
    "data.dataset_config": {"help": "the Hub dataset's configuration, e.g. 'en' for allenai/c4"},
    "data.data_files": {"help": "local .txt/.jsonl/.parquet files (globs); override --dataset"},
    "data.text_column": {"help": "column holding the text (jsonl, parquet, Hub datasets)"},
    "data.tokenizer": {
        "help": "default (byte-level BPE trained on the corpus, cached), mistral (LLaMA-style "
        "32000-token sentencepiece), or any Hugging Face tokenizer name/path (the paper: t5-base)",
        "show_default": False,
    },
    "data.vocab_size": {"help": "vocabulary of the trained BPE (--tokenizer default)"},
    "data.seq_len": {"help": "tokens per packed training sequence"},
    "data.val_sequences": {"help": "held-out validation sequences"},
    "data.streaming": {
        "help": "stream documents (auto: Hub datasets stream, local files are tokenised and "
        "cached)",
        "kind": "str",
        "default": "auto",
        "choices": ("auto", "yes", "no"),
    },
    "data.cache_dir": {
        "help": "tokenizer/token cache (default: $GALOREKIT_CACHE or ~/.cache/galorekit)"
    },
}
for _entry in _DATA_HELP.values():
    _entry.setdefault("group", "data")
    _entry["trajectory"] = True
_DATA_HELP["data.cache_dir"]["trajectory"] = False
_DATA_HELP["data.streaming"]["trajectory"] = False  # the same token order either way


#: MethodConfig's flags: (kind, group, extra metadata); each default and help text is
#: MethodConfig's own (``galorekit.methods.config``, torch-free)
_METHOD: dict[str, tuple[str, str, dict[str, Any]]] = {
    "method": ("str", "model", {"choices": ALL_METHODS, "aliases": ("--optimizer",)}),
    "layerwise": ("bool", "model", {}),
    "lr": ("float", "model", {}),
    "lr_other_ratio": ("float", "model", {}),
    "weight_decay": ("float", "model", {}),
    "max_grad_norm": ("float", "model", {}),
    "state_dtype": ("str", "model", {"choices": STATE_DTYPES}),
    "weight_rounding": ("str", "model", {"choices": WEIGHT_ROUNDINGS}),
    "rank": ("int", "galore", {}),
    "update_proj_gap": ("int", "galore", {}),
    "scale": ("float", "galore", {}),
    "proj_type": ("str", "galore", {"choices": PROJ_TYPES}),
    "svd": ("str", "galore", {}),
    "moments": ("str", "galore", {"choices": MOMENT_POLICIES}),
    # GaLore's successors (galorekit.names.SUCCESSOR_DEFAULTS): presets of their method rows
    "residual": ("str", "galore", {"choices": RESIDUALS}),
    "projection": ("str", "galore", {"choices": PROJECTIONS}),
    "scaling": ("str", "galore", {"choices": SCALINGS}),
    "norm_growth_limit": ("float", "galore", {}),
    "projector_bits": ("int", "galore", {}),
    "lazy_refresh": ("bool", "galore", {}),
    "random_after": ("float", "galore", {}),
    "projection_seed": ("int", "galore", {}),
    "lora_alpha": ("float", "baselines", {}),
    "lora_dropout": ("float", "baselines", {}),
    "relora_reset_every": ("int", "baselines", {}),
    "relora_prune": ("float", "baselines", {}),
}
_METHOD_DEFAULTS = {f.name: f.default for f in dataclasses.fields(MethodConfig)}


def method_flags() -> list[Flag]:
    helps = field_help(MethodConfig)
    return [
        Flag(
            path=("method", name),
            default=_METHOD_DEFAULTS[name],
            help=helps[name],
            kind=kind,
            group=group,
            optional=_METHOD_DEFAULTS[name] is None,
            trajectory=True,
            **extra,
        )
        for name, (kind, group, extra) in _METHOD.items()
    ]


def _flags() -> list[Flag]:
    # DataConfig's fields without help here (seed: --seed's; shuffle_buffer) are not flags
    return flags_of(PretrainConfig, nested={"data": DataConfig}, overlay=_DATA_HELP) + (
        method_flags()
    )


#: every setting of ``galore pretrain``, in the order of ``--help``
FLAGS: list[Flag] = _flags()
_STREAMING = {"auto": None, "yes": True, "no": False}


def build_config(values: dict[str, Any]) -> PretrainConfig:
    """The ``PretrainConfig`` of flat ``values`` (missing settings: the defaults)."""
    parts: dict[str, dict[str, Any]] = {"": {}, "data": {}, "method": {}}
    for fl in FLAGS:
        if fl.name in values:
            section = fl.path[0] if len(fl.path) > 1 else ""
            parts[section][fl.name] = values[fl.name]
    data, method = parts["data"], parts["method"]
    if "streaming" in data:
        data["streaming"] = _STREAMING[data["streaming"]]
    if "max_grad_norm" in method and not method["max_grad_norm"]:
        method["max_grad_norm"] = None  # 0: off
    init_from = values.get("init_from")
    if init_from is not None:  # the checkpoint's architecture and tokenizer, unless given
        parts[""].setdefault("model", init_from)
        if _has_tokenizer(init_from):
            data.setdefault("tokenizer", init_from)
    seed = values.get("seed", 0)
    return PretrainConfig(
        data=DataConfig(
            **data, seed=seed, trust_remote_code=values.get("trust_remote_code", False)
        ),
        method=MethodConfig(**method),
        **parts[""],
        **{k: values[k] for k in ("resume", "world_size") if k in values},
    )


def _has_tokenizer(location: str) -> bool:
    """Whether ``location`` ships a tokenizer: a directory with its files, or a Hub name."""
    path = Path(location).expanduser()
    if not path.exists():
        return True
    return any((path / n).is_file() for n in ("tokenizer.json", "tokenizer_config.json"))


def config_values(cfg: PretrainConfig) -> dict[str, Any]:
    """Flat name → value of every setting of ``cfg`` (what ``config.json`` records and
    ``build_config`` reads back)."""
    out = flatten(cfg, FLAGS)
    out["streaming"] = {v: k for k, v in _STREAMING.items()}[cfg.data.streaming]
    if out["max_grad_norm"] is None:
        out["max_grad_norm"] = 0.0
    # the values used, so that a later change of a default cannot hide in a resumed run
    out["lr"] = cfg.method.peak_lr
    out["total_batch_size"] = cfg.global_batch_size
    return out


def trajectory_changes(saved: dict[str, Any], now: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """The settings, changed between a run's ``config.json`` and now, that change what it
    computes (``--resume`` refuses them without ``--allow-config-change``)."""
    return differences(saved, now, FLAGS)


#: keys of config.json that are records of the run, not settings
RUN_RECORD_KEYS = ("run", "world_size", "config_changes")
#: saved settings a resumed run does not take over: they concern one invocation
NOT_CARRIED = ("allow_config_change", "overwrite")


def saved_values(output_dir: str | Path) -> dict[str, Any]:
    """The settings recorded in a run directory's ``config.json`` (empty when it has none)."""
    path = Path(output_dir) / "config.json"
    if not path.exists():
        return {}
    values = file_values(
        read_config_file(path), FLAGS, str(path), ignore=RUN_RECORD_KEYS, strict=False
    )
    return {k: v for k, v in values.items() if k not in NOT_CARRIED}
