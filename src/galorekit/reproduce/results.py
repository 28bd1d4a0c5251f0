"""A finished run's result and the output directory's layout.

``OUT/runs/<key>.json`` holds one run's result (written atomically when the run ends: its presence
means "finished, never run again" as long as its ``identity`` — everything the result depends
on — matches the plan's), ``OUT/runs/<key>/`` the run's ``metrics.jsonl`` and ``config.json``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from galorekit.atomic import atomic_write_json

#: what ``galore reproduce`` writes in its output directory (``--overwrite`` removes exactly these)
OUTPUT_NAMES = ("plan.json", "runs", "results.json", "reproduce.md", "plots")
RUNS_DIR = "runs"
#: statuses of a finished run: trained to the end, or stopped by a non-finite loss (a result too:
#: the learning rate is too high for the method)
STATUSES = ("ok", "diverged")


@dataclass
class RunResult:
    """One finished run. Perplexities are None when the run diverged."""

    key: str
    status: str
    identity: dict[str, Any]
    lr: float
    steps: int
    tokens: int
    eval_loss: float | None = None
    eval_ppl: float | None = None
    train_loss: float | None = None
    seconds: float = 0.0  # the training loop's wall time
    cpu_seconds: float = 0.0  # CPU time of the whole run (setup, loop, evaluations)
    wall_seconds: float = 0.0  # wall time of the whole run
    eval_curve: list[list[float]] = field(default_factory=list)  # [step, eval_ppl]
    train_curve: list[list[float]] = field(default_factory=list)  # [step, train loss]
    memory: dict[str, int] = field(default_factory=dict)
    error: str | None = None
    worker: dict[str, Any] = field(default_factory=dict)
    theory: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown run status {self.status!r}; valid: {', '.join(STATUSES)}")

    @property
    def ok(self) -> bool:
        return self.status == "ok" and self.eval_ppl is not None

    @property
    def lr_other_ratio(self) -> float:
        """The other parameters' LR as a multiple of ``lr`` (1 where the identity has none)."""
        return float(self.identity.get("run", {}).get("lr_other_ratio", 1.0))

    def to_dict(self) -> dict[str, Any]:
        return finite_json(asdict(self))

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RunResult:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})


def finite_json(value: Any) -> Any:
    """NaN/inf → None, so that the JSON is standard (``allow_nan=False``)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_json(v) for v in value]
    return value


def result_path(out: Path, key: str) -> Path:
    return out / RUNS_DIR / f"{key}.json"


def run_dir(out: Path, key: str) -> Path:
    return out / RUNS_DIR / key


def save_result(out: Path, result: RunResult) -> Path:
    path = result_path(out, result.key)
    atomic_write_json(path, result.to_dict(), allow_nan=False)
    return path


def load_result(out: Path, key: str) -> RunResult | None:
    """The cached result of ``key``, or None (no file, or an unreadable one: run it again)."""
    path = result_path(out, key)
    try:
        return RunResult.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None


def load_results(out: Path, keys: list[str] | None = None) -> dict[str, RunResult]:
    """Every cached result in ``out`` (or those of ``keys``)."""
    root = out / RUNS_DIR
    if keys is None:
        keys = sorted(p.stem for p in root.glob("*.json")) if root.is_dir() else []
    found = {k: load_result(out, k) for k in keys}
    return {k: r for k, r in found.items() if r is not None}
