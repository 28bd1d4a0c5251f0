"""Optimizer-state bytes of a method on a plan's model: what it holds after a step, the memory
model's estimate, and the estimate's part for the attention/MLP matrices (the ones GaLore and its
successors project; for AdamW the same matrices at full rank). Used by the ``successors`` section
of ``galore reproduce`` and by ``benchmarks/successors.py``."""

from __future__ import annotations

import torch

from galorekit.analysis import state_bytes as held_bytes
from galorekit.memory.optimizer_states import optimizer_state_tensors, total_bytes
from galorekit.methods import MethodConfig, setup
from galorekit.models import build_model


def optimizer_state_bytes(
    model: str,
    vocab_size: int,
    method: str,
    *,
    rank: int,
    update_proj_gap: int,
    scale: float | None = None,
    seed: int = 0,
) -> dict[str, int]:
    """``state_bytes``: every tensor ``method``'s optimizer holds after one step (all of them
    exist then); ``state_bytes_estimate``: ``galorekit.memory``'s figure for the same optimizer;
    ``matrix_state_bytes_estimate``: its part for the matrices GaLore d/``rank`` projects.
    ``scale`` None: the method's own α (GaLore's default, APOLLO's 1, …)."""

    def built(name: str):
        config = MethodConfig(
            method=name, lr=1e-3, rank=rank, update_proj_gap=update_proj_gap, scale=scale
        )
        return setup(build_model(model, vocab_size=vocab_size, seed=seed), config, total_steps=400)

    run = built(method)
    tensors = optimizer_state_tensors(run.optimizer)
    # the matrices GaLore projects, named by a GaLore optimizer for the same model
    reference = built("galore_adamw").optimizer
    projected = {n for g in reference.param_groups if "rank" in g for n in g["param_names"]}
    ids = torch.randint(0, vocab_size, (2, 32), generator=torch.Generator().manual_seed(seed))
    run.model(input_ids=ids, labels=ids).loss.backward()
    run.optimizer.step()
    return {
        "state_bytes": held_bytes(run.optimizer),
        "state_bytes_estimate": total_bytes(tensors),
        "matrix_state_bytes_estimate": total_bytes([t for t in tensors if t.param in projected]),
    }
