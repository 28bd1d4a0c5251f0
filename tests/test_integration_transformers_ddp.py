"""``GaLoreTrainer`` under DDP (2 gloo processes, the Trainer's own data sharding): layer-wise
GaLore with gradient accumulation — which transformers refuses — equals the ordinary GaLore run of
the same Trainer, on both ranks, and logs the same grad_norm. The accelerate example likewise."""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

pytest.importorskip("transformers")

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

WORLD = 2


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        HF_HUB_OFFLINE="1",
    )
    torch.set_num_threads(1)
    from _integration_fixtures import TokenDataset, params, tiny_llama, training_args
    from galorekit.integrations.transformers import GaLoreTrainer, _layerwise_of

    results = {}
    for optim in ("galore_adamw", "galore_adamw_layerwise"):
        model = tiny_llama(seed=rank)  # different inits: DDP's broadcast must align them
        args = training_args(f"{out}/{optim}", optim=optim, ddp_backend="gloo")
        trainer = GaLoreTrainer(model=model, args=args, train_dataset=TokenDataset(n=16))
        trainer.train()
        assert (_layerwise_of(trainer.optimizer) is not None) == optim.endswith("layerwise")
        norms = [h["grad_norm"] for h in trainer.state.log_history if "grad_norm" in h]
        torch.save(params(model), f"{out}/{optim}.{rank}.pt")
        results[optim] = norms
    with open(f"{out}/norms.{rank}.json", "w") as f:
        json.dump(results, f)
    # the accelerate example under the same 2-process DDP: layer-wise (backward under no_sync,
    # the hooks average) equals its ordinary run
    example = _accelerate_example()
    for flag in ("", "--layerwise"):
        weights = example.train(example.parse_args(["--cpu", "--seed", str(rank), *flag.split()]))
        torch.save(weights, f"{out}/accelerate{flag}.{rank}.pt")


def _accelerate_example():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "examples" / "accelerate_galore.py"
    spec = importlib.util.spec_from_file_location("accelerate_galore", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_layerwise_under_ddp_with_accumulation_equals_the_ordinary_run(tmp_path):
    out = str(tmp_path)
    mp.spawn(_worker, args=(_free_port(), out), nprocs=WORLD, join=True)
    load = lambda name: torch.load(f"{out}/{name}", weights_only=True)  # noqa: E731
    ordinary = [load(f"galore_adamw.{r}.pt") for r in range(WORLD)]
    layerwise = [load(f"galore_adamw_layerwise.{r}.pt") for r in range(WORLD)]
    for rank in range(WORLD):
        for name, value in ordinary[0].items():
            assert torch.equal(ordinary[rank][name], value)  # DDP keeps the ranks identical
            assert torch.allclose(layerwise[rank][name], value, atol=1e-6, rtol=0), name
    initial = __import__("_integration_fixtures").tiny_llama(seed=0)
    moved = max(
        float((p.detach() - ordinary[0][n]).abs().max()) for n, p in initial.named_parameters()
    )
    assert moved > 1e-3  # it trained
    for rank in range(WORLD):
        with open(f"{out}/norms.{rank}.json") as f:
            norms = json.load(f)
        assert len(norms["galore_adamw"]) == 4
        assert norms["galore_adamw_layerwise"] == pytest.approx(norms["galore_adamw"], rel=1e-5)
    plain = [load(f"accelerate.{r}.pt") for r in range(WORLD)]
    layerwise = [load(f"accelerate--layerwise.{r}.pt") for r in range(WORLD)]
    for rank in range(WORLD):
        for name, value in plain[0].items():
            assert torch.equal(plain[rank][name], value)
            assert torch.allclose(layerwise[rank][name], value, atol=1e-6, rtol=0), name
