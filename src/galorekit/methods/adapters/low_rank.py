"""The paper's "Low-Rank" baseline: every targeted matrix is W = B A, both factors trained.

Init: A and B are drawn from N(0, s²) with ``s² = init_std / sqrt(rank)``, so every entry of
the product BA has variance ``rank · s⁴ = init_std²`` — the same as the dense weight it replaces
under the model's own init (LLaMA: ``initializer_range`` = 0.02, the default here). The
low-rank model thus starts statistically like the full-rank one and differs only by the rank
constraint; the factors are balanced so that both get gradients of comparable scale. (ReLoRA's
code base, which the paper's baseline came from, draws both factors Kaiming-uniform instead,
which makes the product's scale depend on the fan-in.)

``rank`` must satisfy ``0 < rank < min(in, out)`` for every targeted layer: a rank at or above
that is no factorisation, and silently clamping would train a different model than asked for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from galorekit.models.targets import (
    TargetSpec,
    check_rank,
    linear_shape,
    module_kind,
    resolve_target_modules,
)


@dataclass
class LowRankConfig:
    """Options of the Low-Rank baseline; ``init_std=None`` uses the model's initializer_range."""

    rank: int
    target_modules: TargetSpec = None
    init_std: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank <= 0:
            raise ValueError(f"Low-Rank: rank must be a positive integer, got {self.rank!r}")
        if self.init_std is not None and not self.init_std > 0:
            raise ValueError(f"Low-Rank: init_std must be > 0, got {self.init_std!r}")


class LowRankLinear(nn.Module):
    """``y = B (A x) + bias`` with ``A: rank × in`` and ``B: out × rank``, both trainable."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int,
        *,
        bias: bool = False,
        init_std: float = 0.02,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.rank = rank
        self.init_std = init_std
        kw = {"device": device, "dtype": dtype}
        self.A = nn.Parameter(torch.empty(rank, in_features, **kw))
        self.B = nn.Parameter(torch.empty(out_features, rank, **kw))
        self.bias = nn.Parameter(torch.empty(out_features, **kw)) if bias else None
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        factor_std = math.sqrt(self.init_std / math.sqrt(self.rank))
        nn.init.normal_(self.A, std=factor_std)
        nn.init.normal_(self.B, std=factor_std)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x, self.A), self.B, self.bias)

    def dense_weight(self) -> torch.Tensor:
        """The ``out × in`` matrix ``B A`` this layer computes."""
        return self.B @ self.A

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"rank={self.rank}, bias={self.bias is not None}"
        )


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def _default_init_std(model: nn.Module) -> float:
    config = getattr(model, "config", None)
    return float(getattr(config, "initializer_range", 0.02) or 0.02)


def apply_low_rank(
    model: nn.Module,
    *,
    rank: int,
    target_modules: TargetSpec = None,
    init_std: float | None = None,
) -> nn.Module:
    """Replace every targeted linear layer of ``model`` by a fresh :class:`LowRankLinear`.

    In place; returns ``model``. The dense weights are dropped (their memory freed); biases are
    kept as zero-initialised biases. Works on ``device="meta"`` models. Raises ``ValueError`` for
    ``rank <= 0`` or ``rank >= min(in, out)`` of a targeted layer, or targets matching nothing.
    """
    config = LowRankConfig(rank, target_modules, init_std)
    names = resolve_target_modules(model, config.target_modules)
    modules = dict(model.named_modules())
    not_linear = [
        f"{n} ({type(modules[n]).__name__})" for n in names if module_kind(modules[n]) != "linear"
    ]
    if not_linear:
        raise ValueError(
            f"Low-Rank factorises linear layers (nn.Linear, Conv1D) only; the targets include "
            f"{', '.join(not_linear[:3])}{' …' if len(not_linear) > 3 else ''}"
        )
    check_rank(model, names, config.rank, "Low-Rank")
    std = config.init_std if config.init_std is not None else _default_init_std(model)
    for name in names:
        old = modules[name]
        n_in, n_out = linear_shape(old)
        new = LowRankLinear(
            n_in,
            n_out,
            config.rank,
            bias=getattr(old, "bias", None) is not None,
            init_std=std,
            device=old.weight.device,
            dtype=old.weight.dtype,
        )
        _set_submodule(model, name, new)
    return model


@torch.no_grad()
def merge_low_rank(model: nn.Module) -> nn.Module:
    """Replace every :class:`LowRankLinear` by an ``nn.Linear`` holding ``B A`` (in place).

    Turns a trained Low-Rank model back into a standard architecture, e.g. to
    ``save_pretrained`` it as a plain ``LlamaForCausalLM``.
    """
    for name, module in list(model.named_modules()):
        if isinstance(module, LowRankLinear):
            dense = nn.Linear(
                module.in_features,
                module.out_features,
                bias=module.bias is not None,
                device=module.A.device,
                dtype=module.A.dtype,
            )
            dense.weight.copy_(module.dense_weight())
            if module.bias is not None:
                dense.bias.copy_(module.bias)
            _set_submodule(model, name, dense)
    return model
