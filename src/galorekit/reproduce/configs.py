"""A run of the plan as the training code's configs: ``DataConfig``, ``PretrainConfig``, and the
run's identity (what its result depends on, checked before a cached result is reused)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from galorekit.data import DataConfig
from galorekit.methods import MethodConfig
from galorekit.names import GALORE_DEFAULTS, method_info
from galorekit.reproduce.plan import PlanConfig, RunSpec
from galorekit.train.pretrain import PretrainConfig

#: the plan's settings every run's result depends on (its identity's shared part)
SHARED_SETTINGS = (
    "model",
    "dataset",
    "data_files",
    "vocab_size",
    "seq_len",
    "batch_size",
    "val_sequences",
    "device",
    "seed",
    "scale",
    "eval_points",
    "theory_points",
)


@dataclass(frozen=True)
class Job:
    """One run to execute: the spec, its resolved LR, the plan's settings and where to write."""

    spec: RunSpec
    lr: float
    config: PlanConfig
    run_dir: str
    ratio: float = 1.0  # the other parameters' LR / lr (--lr-other-ratio)

    @property
    def identity(self) -> dict[str, Any]:
        return run_identity(self.config, self.spec, self.lr, self.ratio)

    @property
    def batch_size(self) -> int:
        return self.spec.batch_size or self.config.batch_size

    @property
    def tokens(self) -> int:
        return self.spec.steps * self.batch_size * self.config.seq_len


def data_config(cfg: PlanConfig):
    return DataConfig(
        dataset=cfg.dataset,
        data_files=list(cfg.data_files) if cfg.data_files else None,
        vocab_size=cfg.vocab_size,
        seq_len=cfg.seq_len,
        val_sequences=cfg.val_sequences,
        seed=cfg.seed,
        cache_dir=cfg.cache_dir,
    )


def method_config(spec: RunSpec, lr: float, cfg: PlanConfig, ratio: float = 1.0):
    # the plan's α is GaLore's; a successor with its own (APOLLO 1, APOLLO-Mini √128) keeps it
    own_scale = "scale" in dict(method_info(spec.method).group)
    return MethodConfig(
        method=spec.method,
        lr=lr,
        lr_other_ratio=ratio,
        rank=spec.rank,
        update_proj_gap=spec.update_proj_gap
        or GALORE_DEFAULTS["update_proj_gap"],  # unused without GaLore
        scale=None if own_scale else cfg.scale,
    )


def pretrain_config(job: Job):
    """The ``galore pretrain`` configuration of a run: the library's defaults (warm-up 10%, cosine
    to 10% of the peak, gradient clip 1.0, float32) except the plan's settings; no intermediate
    checkpoints (an unfinished run starts again), no progress bar, TensorBoard or plot."""
    cfg, spec = job.config, job.spec
    return PretrainConfig(
        model=cfg.model,
        data=data_config(cfg),
        method=method_config(spec, job.lr, cfg, job.ratio),
        max_steps=spec.steps,
        batch_size=job.batch_size,
        eval_every=cfg.eval_every,
        save_every=0,
        keep_checkpoints=1,
        log_every=max(1, cfg.eval_every // 5),
        output_dir=str(Path(job.run_dir)),
        overwrite=True,
        device=cfg.device,
        seed=cfg.seed,
        progress=False,
        tensorboard=False,
        plot=False,
    )


def run_identity(cfg: PlanConfig, spec: RunSpec, lr: float, ratio: float = 1.0) -> dict[str, Any]:
    """Everything a run's result depends on (the plan's shared settings, the run, its LRs).
    The ratio and the batch size appear only when they are not the plan's defaults, so that a
    run's identity is the one it had before the per-group protocol existed."""
    shared = {name: value for name, value in cfg.to_dict().items() if name in SHARED_SETTINGS}
    # the table length decides the evaluation cadence of every run
    shared["eval_every"] = cfg.eval_every
    planning = ("key", "lr_group", "ratio", "batch_size", "lr_step")
    run = {k: v for k, v in spec.to_dict().items() if k not in planning}
    run["lr"] = lr
    if ratio != 1:
        run["lr_other_ratio"] = ratio
    if spec.batch_size is not None:
        run["batch_size"] = spec.batch_size
    return {"shared": shared, "run": run}
