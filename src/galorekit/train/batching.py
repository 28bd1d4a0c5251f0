"""The batch arithmetic shared by the data-parallel training configs (pretrain, sft). Torch-free:
``galore --help`` imports it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class DataParallelBatch:
    """The batch arithmetic and construction check of a data-parallel training config
    (``PretrainConfig``, ``SFTConfig``): ``batch_size`` per process, ``total_batch_size`` global
    (None: one micro-batch a process), ``world_size`` from torchrun or ``nproc_per_node``."""

    def _finish(self, what: str, errors: Callable[[Any], list[str]]) -> None:
        """Resolve the world size, refuse ``errors(self)`` in one message, and hand the method
        its accumulation (``__post_init__``)."""
        # torch: when a configuration is built, not when --help imports this module
        from galorekit.distributed.context import env_world_size, inside_torchrun

        if self.world_size is None:
            self.world_size = env_world_size() if inside_torchrun() else self.nproc_per_node
        found = errors(self)
        if found:
            raise ValueError(f"invalid {what} config: " + "; ".join(found))
        self.method.accumulation_steps = self.accumulation_steps

    @property
    def global_batch_size(self) -> int:
        """Sequences per optimizer step over all processes."""
        return self.total_batch_size or self.batch_size * (self.world_size or 1)

    @property
    def accumulation_steps(self) -> int:
        return self.global_batch_size // (self.batch_size * (self.world_size or 1))

    def batch_errors(self) -> list[str]:
        """``total_batch_size`` must be whole micro-batches on every process."""
        world = max(self.world_size or 1, 1)
        per_step, total = self.batch_size * world, self.total_batch_size
        if total is None or (total >= per_step and total % per_step == 0):
            return []
        if world == 1:
            return [
                f"--total-batch-size ({total}) must be a multiple of --batch-size "
                f"({self.batch_size})"
            ]
        return [
            f"--total-batch-size ({total}) must be a multiple of --batch-size × processes "
            f"({self.batch_size} × {world} = {per_step}): each process runs whole "
            "micro-batches of --batch-size"
        ]
