"""Read-only view of a GaLore optimizer's projector for one parameter, for code that must project a
gradient *before* the optimizer sees it (low-rank gradient communication).

It reads the per-parameter state documented in ``galorekit.optim.base`` (``step``, ``proj_side``,
``proj_left``, ``proj_right``) and the group's ``update_proj_gap``, and decides "is the next update
a refresh?" exactly as ``GaLoreOptimizer._refresh_due`` does. A public accessor on the optimizer
(proposed in /work/team/patch-distributed.md) would replace this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from galorekit.projection import Side


@dataclass(frozen=True)
class ProjectionView:
    """The projector the next update of a parameter will use. ``refresh_due``: the next update
    recomputes it from the full gradient (so that gradient must be communicated in full)."""

    side: Side
    left: Tensor | None
    right: Tensor | None
    refresh_due: bool


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

    def is_galore(self, p: Tensor) -> bool:
        return id(p) in self._group_of

    def __call__(self, p: Tensor) -> ProjectionView | None:
        gi = self._group_of.get(id(p))
        if gi is None:
            return None
        group = self.optimizer.param_groups[gi]
        state = self.optimizer.state.get(p, {})
        if "proj_side" not in state:
            return ProjectionView(Side.LEFT, None, None, refresh_due=True)
        due = int(state.get("step", 0)) % int(group["update_proj_gap"]) == 0
        return ProjectionView(
            Side(int(state["proj_side"])), state.get("proj_left"), state.get("proj_right"), due
        )
