"""Read-only view of a GaLore optimizer's projector for one parameter, for code that must project a
gradient *before* the optimizer sees it (low-rank gradient communication).

It wraps ``GaLoreOptimizer.projection`` (also through a ``LayerwiseOptimizer``) with a fast
"is this a GaLore parameter?" test.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from galorekit.optim.base import ProjectionView


def _galore_optimizer(optimizer: torch.optim.Optimizer) -> Any:
    from galorekit.optim.base import GaLoreOptimizer

    inner = getattr(optimizer, "inner", optimizer)  # LayerwiseOptimizer wraps one
    if not isinstance(inner, GaLoreOptimizer):
        raise TypeError(
            "low-rank gradient communication needs a galorekit GaLore optimizer "
            f"(GaLoreAdamW, GaLoreAdamW8bit, GaLoreAdafactor), got {type(inner).__name__}"
        )
    return inner


class ProjectionLookup:
    """``lookup(p)`` → ``ProjectionView`` for GaLore parameters, ``None`` for the others."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = _galore_optimizer(optimizer)
        # param_groups may be replaced by load_state_dict, so groups are looked up by index
        self._group_of: dict[int, int] = {}
        for gi, group in enumerate(self.optimizer.param_groups):
            if "rank" in group:
                for p in group["params"]:
                    self._group_of[id(p)] = gi

    @property
    def has_galore(self) -> bool:
        return bool(self._group_of)

    def __call__(self, p: Tensor) -> ProjectionView | None:
        index = self._group_of.get(id(p))
        if index is None:  # most calls are for plain parameters
            return None
        return self.optimizer.projection(p, self.optimizer.param_groups[index])
