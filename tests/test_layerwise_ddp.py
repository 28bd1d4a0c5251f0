"""Layer-wise updates under data parallelism: 2 gloo processes equal one process on the global
batch, because every final gradient is averaged over the ranks inside its hook."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from galorekit import GaLoreAdamW, LayerwiseOptimizer
from galorekit.optim.layerwise import broadcast_parameters

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

ACC, STEPS, WORLD = 2, 4, 2


def _model(seed: int):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(16, 48), torch.nn.Tanh(), torch.nn.Linear(48, 8))


def _groups(m):
    return [
        {"params": [m[0].bias, m[2].bias]},
        {"params": [m[0].weight, m[2].weight], "rank": 4, "update_proj_gap": 3},
    ]


def _data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(64, 16, generator=g), torch.randn(64, 8, generator=g)


def _train(model, opt, rank: int, world: int) -> None:
    x, y = _data()
    for _ in range(STEPS):
        for k in range(ACC):
            xb, yb = x[k::ACC], y[k::ACC]  # the global micro-batch ...
            xb, yb = xb[rank::world], yb[rank::world]  # ... and this rank's share of it
            (((model(xb) - yb) ** 2).mean() / ACC).backward()
        opt.step()
        opt.zero_grad()


def _worker(rank: int, port: int, out: str, data_parallel: bool) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        model = _model(seed=100 + rank)  # different inits: broadcast must align them
        broadcast_parameters(model)
        opt = LayerwiseOptimizer(
            _groups(model),
            GaLoreAdamW,
            accumulation_steps=ACC,
            lr=1e-2,
            data_parallel=data_parallel,
        )
        _train(model, opt, rank, WORLD)
        torch.save([p.detach().clone() for p in model.parameters()], f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(tmp_path, data_parallel: bool):
    out = str(tmp_path / "params")
    mp.spawn(_worker, args=(_free_port(), out, data_parallel), nprocs=WORLD, join=True)
    return [torch.load(f"{out}.{r}", weights_only=True) for r in range(WORLD)]


def test_two_ranks_equal_one_process(tmp_path):
    ranks = _run(tmp_path, data_parallel=True)
    single = _model(seed=100)
    opt = LayerwiseOptimizer(_groups(single), GaLoreAdamW, accumulation_steps=ACC, lr=1e-2)
    _train(single, opt, rank=0, world=1)
    for r in range(WORLD):
        for p, q in zip(single.parameters(), ranks[r]):
            torch.testing.assert_close(p.detach(), q, rtol=1e-5, atol=1e-6)


def test_without_reduction_ranks_diverge(tmp_path):
    """The control: without the in-hook reduction each rank follows its own gradients."""
    ranks = _run(tmp_path, data_parallel=False)
    assert any(not torch.allclose(p, q) for p, q in zip(ranks[0], ranks[1]))
