"""Learning-rate schedules as multipliers for ``torch.optim.lr_scheduler.LambdaLR``."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable


def warmup_cosine(step: int, *, warmup: int, total: int, min_ratio: float = 0.1) -> float:
    """The paper's schedule: linear warm-up over ``warmup`` steps, then cosine decay to
    ``min_ratio`` of the peak at ``total`` (held there afterwards). ``step`` counts from 0."""
    if warmup < 0 or total <= 0:
        raise ValueError(f"warmup_cosine needs warmup >= 0 and total > 0, got {warmup}, {total}")
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_linear(step: int, *, warmup: int, total: int) -> float:
    """Fine-tuning's schedule: linear warm-up over ``warmup`` steps to 1 (the first step already
    above 0), then linear decay towards 0 at ``total``. ``step`` counts from 0."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def pretrain_schedule(
    *, warmup_ratio: float, total: int, min_ratio: float
) -> Callable[[int], float]:
    """``warmup_cosine`` with a warm-up of ``warmup_ratio`` of ``total`` steps (LambdaLR's
    function), as ``galore pretrain`` and the theory run use it."""
    return functools.partial(
        warmup_cosine, warmup=int(warmup_ratio * total), total=total, min_ratio=min_ratio
    )
