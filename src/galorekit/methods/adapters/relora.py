"""ReLoRA (Lialin et al., 2023): LoRA whose adapters are merged and restarted every K steps.

Every ``reset_every`` optimizer steps the adapters are merged into the frozen weights
(``W += (alpha / r) B A``) and re-initialised (A Kaiming-uniform, B zero), so the model's function
is unchanged while the next LoRA phase explores a new low-rank subspace: the sum of the phases is
high-rank. At each reset the Adam states of the adapters are magnitude-pruned (99% by default, as
in ReLoRA) and the learning rate drops to zero and re-warms up over a few steps (the "jagged
cosine" schedule of :func:`relora_lr_lambda`). ReLoRA's optional full-rank warm start is a choice
of the loop: train the plain model first, then wrap it.

Usage in a loop::

    relora = ReLoRA(model, rank=128, alpha=32, reset_every=1000)
    optimizer = torch.optim.AdamW([p for p in relora.model.parameters() if p.requires_grad], lr)
    scheduler = LambdaLR(optimizer, relora.lr_lambda(warmup=100, total=10_000))
    for step in range(1, total + 1):
        ...; optimizer.step(); scheduler.step(); relora.maybe_reset(step, optimizer)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from galorekit.extras import needs_extra
from galorekit.methods.adapters.lora import LoRAConfig, apply_lora, lora_layers, lora_parameters
from galorekit.methods.adapters.optimizer_pruning import prune_optimizer_state
from galorekit.models.targets import TargetSpec

with needs_extra("train"):
    from peft import PeftModel


@dataclass
class ReLoRAConfig(LoRAConfig):
    """LoRA options plus the restart schedule.

    ``reset_every`` has no default: ReLoRA restarts every 5,000 of 20,000+ steps at its scale
    (about 4 phases a run); short runs want proportionally shorter phases. ``rewarmup_steps``
    defaults to ``max(1, reset_every // 50)`` (ReLoRA: 50–100 steps for 5,000-step phases).
    """

    reset_every: int | None = None
    rewarmup_steps: int | None = None
    optimizer_reset_prune: float = 0.99

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.reset_every is None:
            raise ValueError(
                "ReLoRA: reset_every (optimizer steps between merges) is required; ReLoRA used "
                "5000 for runs of 20K+ steps, i.e. about a quarter of the run"
            )
        if isinstance(self.reset_every, bool) or not isinstance(self.reset_every, int):
            raise ValueError(f"ReLoRA: reset_every must be an integer, got {self.reset_every!r}")
        if self.reset_every <= 0:
            raise ValueError(f"ReLoRA: reset_every must be > 0, got {self.reset_every}")
        if self.rewarmup_steps is None:
            self.rewarmup_steps = max(1, self.reset_every // 50)
        if not 0 <= self.rewarmup_steps < self.reset_every:
            raise ValueError(
                f"ReLoRA: rewarmup_steps must be in [0, reset_every={self.reset_every}), "
                f"got {self.rewarmup_steps}"
            )
        if not 0.0 <= self.optimizer_reset_prune <= 1.0:
            raise ValueError(
                f"ReLoRA: optimizer_reset_prune must be in [0, 1], got {self.optimizer_reset_prune}"
            )


def relora_lr_lambda(
    step: int,
    *,
    warmup: int,
    total: int,
    reset_every: int,
    rewarmup: int,
    min_ratio: float = 0.1,
) -> float:
    """ReLoRA's jagged cosine schedule: the LR multiplier for optimizer step ``step`` (0-based).

    The base is a linear warm-up over ``warmup`` steps and a cosine decay to ``min_ratio`` at
    ``total`` (held there afterwards). After each reset (``step`` a positive multiple of
    ``reset_every``) the multiplier restarts at 0 and rises linearly over ``rewarmup`` steps back
    onto the base curve. Use with ``torch.optim.lr_scheduler.LambdaLR`` (via ``functools.partial``
    or :meth:`ReLoRA.lr_lambda`); after ``k`` calls of ``scheduler.step()`` the next step uses
    ``relora_lr_lambda(k)``, so a reset done after step ``k`` is followed by a zero-LR step.
    """
    if warmup < 0 or total <= 0 or reset_every <= 0 or not 0 <= rewarmup < reset_every:
        raise ValueError(
            "relora_lr_lambda needs warmup >= 0, total > 0, reset_every > 0 and "
            f"0 <= rewarmup < reset_every; got warmup={warmup}, total={total}, "
            f"reset_every={reset_every}, rewarmup={rewarmup}"
        )
    if not 0.0 <= min_ratio <= 1.0:
        raise ValueError(f"min_ratio must be in [0, 1], got {min_ratio}")

    def base(s: int) -> float:
        if s < warmup:
            return s / warmup
        progress = min(1.0, (s - warmup) / max(1, total - warmup))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    since_reset = step % reset_every
    if step >= reset_every and since_reset < rewarmup:
        return since_reset / rewarmup * base(step - since_reset + rewarmup)
    return base(step)


class ReLoRA:
    """LoRA adapters (through peft) with periodic merge-and-reinit and optimizer-state pruning.

    ``ReLoRA(model, ...)`` applies LoRA to ``model`` in place (see
    :func:`~galorekit.methods.adapters.lora.apply_lora`; targeted weights frozen at their init,
    embeddings/norms/head trained unless ``train_non_targeted=False``); train ``relora.model``.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        rank: int,
        alpha: float,
        reset_every: int,
        target_modules: TargetSpec = None,
        dropout: float = 0.0,
        optimizer_reset_prune: float = 0.99,
        rewarmup_steps: int | None = None,
        train_non_targeted: bool = True,
    ) -> None:
        self.config = ReLoRAConfig(
            rank=rank,
            alpha=alpha,
            dropout=dropout,
            target_modules=target_modules,
            train_non_targeted=train_non_targeted,
            reset_every=reset_every,
            rewarmup_steps=rewarmup_steps,
            optimizer_reset_prune=optimizer_reset_prune,
        )
        self.model: PeftModel = apply_lora(
            model,
            rank=rank,
            alpha=alpha,
            dropout=dropout,
            target_modules=target_modules,
            train_non_targeted=train_non_targeted,
        )
        self.num_resets = 0
        self.last_reset_step: int | None = None

    @property
    def rewarmup_steps(self) -> int:
        assert self.config.rewarmup_steps is not None  # set by ReLoRAConfig.__post_init__
        return self.config.rewarmup_steps

    def lora_parameters(self) -> list[nn.Parameter]:
        """The adapter matrices, whose optimizer states are pruned at each reset."""
        return lora_parameters(self.model)

    @torch.no_grad()
    def merge_and_reinit(self) -> None:
        """``W += (alpha / r) B A`` for every adapter, then A ← Kaiming-uniform, B ← 0.

        The adapter tensors are re-initialised in place, so the optimizer keeps referencing them.
        The model's outputs are unchanged (up to the rounding of the merge in ``W``'s dtype).
        """
        for layer in lora_layers(self.model):
            base = layer.get_base_layer()
            for adapter in list(layer.lora_A):
                delta = layer.get_delta_weight(adapter)
                base.weight.add_(delta.to(base.weight.dtype))
                layer.reset_lora_parameters(adapter, True)

    def should_reset(self, step: int) -> bool:
        """Whether :meth:`maybe_reset` resets after optimizer step ``step`` (1-based)."""
        return step > 0 and step % self.config.reset_every == 0 and step != self.last_reset_step

    def maybe_reset(self, step: int, optimizer: torch.optim.Optimizer) -> bool:
        """Call after ``optimizer.step()`` with the number of optimizer steps done so far.

        At a multiple of ``reset_every``: merge and re-initialise the adapters and prune the
        ``optimizer_reset_prune`` fraction of the adapters' optimizer states by magnitude. Returns
        whether it reset. Calling it twice with the same step resets once.
        """
        if not self.should_reset(step):
            return False
        self.merge_and_reinit()
        prune_optimizer_state(optimizer, self.lora_parameters(), self.config.optimizer_reset_prune)
        self.num_resets += 1
        self.last_reset_step = step
        return True

    def lr_lambda(
        self, *, warmup: int, total: int, min_ratio: float = 0.1
    ) -> Callable[[int], float]:
        """:func:`relora_lr_lambda` bound to this ReLoRA's ``reset_every`` and re-warm-up."""
        schedule = functools.partial(
            relora_lr_lambda,
            warmup=warmup,
            total=total,
            reset_every=self.config.reset_every,
            rewarmup=self.rewarmup_steps,
            min_ratio=min_ratio,
        )
        schedule(0)  # bad arguments fail here, not at the first scheduler step
        return schedule

    def state_dict(self) -> dict[str, Any]:
        """Counters to checkpoint with the model (the adapters themselves are model weights)."""
        return {"num_resets": self.num_resets, "last_reset_step": self.last_reset_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = {"num_resets", "last_reset_step"} - set(state)
        if missing:
            raise ValueError(f"ReLoRA state is missing {sorted(missing)}")
        self.num_resets = int(state["num_resets"])
        last = state["last_reset_step"]
        self.last_reset_step = None if last is None else int(last)
