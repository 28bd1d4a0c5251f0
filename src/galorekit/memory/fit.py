"""Fit mode: which methods, ranks and batch sizes train a model within a memory budget.

For every method (ordinary and layer-wise), every candidate rank (for the methods that have one)
and with and without activation checkpointing, the largest micro-batch (in sequences of the
setup's ``seq_len``) whose estimated total fits the budget. Weights, gradients and optimizer
states do not depend on the batch; activations grow with it, so the model is built once per
(method, rank) and only the activation formula is re-evaluated while searching the batch size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from galorekit.memory.activations import LlamaStructure, estimate_activations, llama_structure
from galorekit.memory.estimator import gradient_bytes, static_components
from galorekit.memory.model import adapter_rank_limit, build_training_model, galore_shapes
from galorekit.memory.setup import BASELINE_METHODS, METHODS, TrainingSetup, uses_rank
from galorekit.projection import effective_rank

#: ranks tried when none are given (the paper's 60M…7B ranks)
DEFAULT_RANKS = (128, 256, 512, 1024)
#: no search beyond this many sequences per micro-batch
MAX_BATCH = 1 << 16


@dataclass(frozen=True)
class FitRow:
    """The largest micro-batch of one configuration within the budget (0: none fits)."""

    method: str
    layerwise: bool
    rank: int | None
    activation_checkpointing: bool
    max_batch_size: int
    total_at_max: int
    static: int  # weights + gradients + optimizer states

    @property
    def fits(self) -> bool:
        return self.max_batch_size > 0

    def label(self) -> str:
        name = self.method + (f" r{self.rank}" if self.rank is not None else "")
        return name + (" (layer-wise)" if self.layerwise else "")

    def as_dict(self) -> dict:
        return {
            "method": self.method,
            "layerwise": self.layerwise,
            "rank": self.rank,
            "activation_checkpointing": self.activation_checkpointing,
            "max_batch_size": self.max_batch_size,
            "total_at_max_batch": self.total_at_max,
            "weights_gradients_states": self.static,
        }


def _max_batch(
    structure: LlamaStructure, setup: TrainingSetup, static: int, budget: int
) -> tuple[int, int]:
    """(largest batch size that fits, its total); (0, total at batch 1) when none does."""

    def total(b: int) -> int:
        return static + estimate_activations(structure, setup.with_(batch_size=b)).total

    first = total(1)
    if first > budget:
        return 0, first
    lo, hi = 1, 2
    while hi <= MAX_BATCH and total(hi) <= budget:
        lo, hi = hi, hi * 2
    hi = min(hi, MAX_BATCH + 1)
    while hi - lo > 1:  # total(lo) fits, total(hi) does not (or hi is past the cap)
        mid = (lo + hi) // 2
        if total(mid) <= budget:
            lo = mid
        else:
            hi = mid
    return lo, total(lo)


def valid_ranks(net: nn.Module, setup: TrainingSetup, ranks: Sequence[int]) -> list[int]:
    """The ranks of ``ranks`` that are low-rank on every matrix ``setup.method`` acts on (with
    ``setup``'s target modules): below ``min(m, n)`` of each matrix GaLore projects
    (``galorekit.projection.effective_rank`` clamps nothing), or within the adapters' limit
    (no clamping by ``galore pretrain``'s adapter rule)."""
    if setup.method in BASELINE_METHODS:
        limit = adapter_rank_limit(net, setup)
        return [r for r in ranks if r <= limit]
    shapes = galore_shapes(net, setup)
    return [r for r in ranks if all(effective_rank(r, s) < min(s) for s in shapes)]


def fit_budget(
    model: str | object,
    budget: int,
    base: TrainingSetup,
    *,
    methods: Sequence[str] = METHODS,
    ranks: Sequence[int] = DEFAULT_RANKS,
    vocab_size: int | None = None,
) -> list[FitRow]:
    """One :class:`FitRow` per (method, layer-wise, rank, checkpointing) for ``model`` under
    ``budget`` bytes; ``base`` gives precision, sequence length, projection type, targets,
    attention implementation and accumulation. Ranks at or above the smallest dimension of the
    matrices a method acts on (with ``base``'s target modules) are skipped: they save nothing.
    Raises ``ValueError`` when a method with a rank has no valid rank in ``ranks``."""
    if budget <= 0:
        raise ValueError(f"the budget must be positive, got {budget}")
    for m in methods:
        if m not in METHODS:
            raise ValueError(f"unknown method {m!r}; valid: {', '.join(METHODS)}")
    plain = build_training_model(model, base.with_(method="adamw"), vocab_size=vocab_size).model
    structures: dict[int, LlamaStructure] = {}  # walked once per built model

    def structure(net: nn.Module) -> LlamaStructure:
        if id(net) not in structures:
            structures[id(net)] = llama_structure(net)
        return structures[id(net)]

    rows: list[FitRow] = []
    adapted: dict[tuple[str, int], nn.Module] = {}  # LoRA and ReLoRA train the same model
    for method in methods:
        rank_list: list[int | None] = [None]
        if uses_rank(method):
            probe = base.with_(method=method, rank=None, layerwise=False)
            rank_list = list(valid_ranks(plain, probe, ranks))
            if not rank_list:
                raise ValueError(
                    f"{method}: no rank in {list(ranks)} is below the smallest dimension of the "
                    "matrices it acts on; give smaller ranks (--ranks)"
                )
        for rank in rank_list:
            setup0 = base.with_(method=method, rank=rank, batch_size=1, layerwise=False)
            if method in BASELINE_METHODS:
                key = ("low_rank" if method == "low_rank" else "lora", rank)
                if key not in adapted:
                    adapted[key] = build_training_model(model, setup0, vocab_size=vocab_size).model
                net = adapted[key]
            else:
                net = plain
            comp = static_components(net, setup0)  # the optimizer's state: built once
            for layerwise in (False, True) if method not in BASELINE_METHODS else (False,):
                setup1 = setup0.with_(layerwise=layerwise)
                grads = gradient_bytes(net, setup1)
                static = comp["weights"] + grads + comp["optimizer_states"]
                for ckpt in (False, True):
                    setup2 = setup1.with_(activation_checkpointing=ckpt)
                    batch, total = _max_batch(structure(net), setup2, static, budget)
                    rows.append(FitRow(method, layerwise, rank, ckpt, batch, total, static))
    return rows
