"""galorekit.distributed with 2 gloo processes on a tiny MLP: DDP + GaLore equals one process on the
global batch (projectors identical on every rank), low-rank communication equals full all-reduce
(GaLore only reads the projected gradient), layer-wise GaLore through ``setup_data_parallel``, and
the bytes counted at the process-group calls. Plus the launcher's checks (no processes)."""

from __future__ import annotations

import argparse
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from galorekit import GaLoreAdamW, LayerwiseOptimizer
from galorekit.distributed import (
    CommCounter,
    DistContext,
    ProjectionLookup,
    check_nproc,
    namespace_to_argv,
    setup_data_parallel,
)

ACC, STEPS, WORLD, GAP, RANK = 2, 5, 2, 3, 4
SHAPES = [(48, 16), (48,), (8, 48), (8,)]  # parameters of _model, in order


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(16, 48), torch.nn.Tanh(), torch.nn.Linear(48, 8))


def _groups(m: torch.nn.Module) -> list[dict]:
    return [
        {"params": [m[0].bias, m[2].bias]},
        {"params": [m[0].weight, m[2].weight], "rank": RANK, "update_proj_gap": GAP},
    ]


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(64, 16, generator=g), torch.randn(64, 8, generator=g)


def _train(parallel, opt, rank: int, world: int, counter=None) -> list[int]:
    """STEPS optimizer steps of ACC micro-batches; this rank's share of each; bytes per step."""
    x, y = _data()
    sent = []
    for _ in range(STEPS):
        for k in range(ACC):
            xb, yb = x[k::ACC][rank::world], y[k::ACC][rank::world]
            with parallel.accumulate(last=k == ACC - 1):
                (((parallel.module(xb) - yb) ** 2).mean() / ACC).backward()
        opt.step()
        opt.zero_grad()
        if counter is not None:
            sent.append(counter.reset())
    return sent


def _snapshot(model, opt) -> dict:
    inner = getattr(opt, "inner", opt)
    projectors = {}
    for i, p in enumerate(model.parameters()):
        state = inner.state.get(p, {})
        for key in ("proj_left", "proj_right"):
            if key in state:
                projectors[f"{i}.{key}"] = state[key].clone()
    return {"params": [p.detach().clone() for p in model.parameters()], "proj": projectors}


def _scenario(name: str, rank: int, world: int, ctx: DistContext):
    model = _model(seed=100 + rank if world > 1 else 100)  # different inits: must be aligned
    if name == "layerwise":
        opt = LayerwiseOptimizer(_groups(model), GaLoreAdamW, accumulation_steps=ACC, lr=1e-2)
    else:
        opt = GaLoreAdamW(_groups(model), lr=1e-2)
    parallel = setup_data_parallel(
        model,
        opt,
        ctx,
        torch.device("cpu"),
        layerwise=name == "layerwise",
        lowrank_comm=name == "lowrank",
    )
    if world == 1:
        _train(parallel, opt, 0, 1)
        return _snapshot(model, opt), []
    with CommCounter() as counter:
        sent = _train(parallel, opt, rank, world, counter)
    return _snapshot(model, opt), sent


SCENARIOS = ("ddp", "lowrank", "layerwise")


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        ctx = DistContext(rank=rank, world_size=WORLD, backend="gloo")
        results = {name: _scenario(name, rank, WORLD, ctx) for name in SCENARIOS}
        torch.save(results, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """Every scenario run once by 2 gloo processes (one spawn for the whole module)."""
    out = str(tmp_path_factory.mktemp("dist") / "result")
    mp.spawn(_worker, args=(_free_port(), out), nprocs=WORLD, join=True)
    return [torch.load(f"{out}.{r}", weights_only=True) for r in range(WORLD)]


@pytest.fixture(scope="module")
def single():
    """The same scenarios in one process on the global batch (plain GaLore, no communication)."""
    ctx = DistContext()
    return {
        "ddp": _scenario("ddp", 0, 1, ctx)[0],
        "layerwise": _scenario("layerwise", 0, 1, ctx)[0],
    }


def _assert_params_close(a: list, b: list) -> None:
    for p, q in zip(a, b, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("name", ["ddp", "layerwise"])
def test_two_ranks_equal_one_process(two_ranks, single, name):
    for r in range(WORLD):
        _assert_params_close(two_ranks[r][name][0]["params"], single[name]["params"])


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("name", SCENARIOS)
def test_ranks_hold_identical_parameters_and_projectors(two_ranks, name):
    a, b = two_ranks[0][name][0], two_ranks[1][name][0]
    assert a["proj"].keys() == b["proj"].keys() and len(a["proj"]) == 2
    for key in a["proj"]:
        assert torch.equal(a["proj"][key], b["proj"][key]), key  # bit-identical refreshes
    for p, q in zip(a["params"], b["params"], strict=True):
        assert torch.equal(p, q)


@pytest.mark.distributed
@pytest.mark.slow
def test_lowrank_communication_gives_the_full_allreduce_update(two_ranks, single):
    """Without clipping GaLore reads only the projected gradient: projecting before the
    reduction changes nothing but the bytes."""
    for r in range(WORLD):
        _assert_params_close(two_ranks[r]["lowrank"][0]["params"], single["ddp"]["params"])


def _expected_bytes(lowrank: bool) -> list[int]:
    full = sum(torch.Size(s).numel() for s in SHAPES) * 4
    if not lowrank:
        return [full] * STEPS
    # "std" sides: 48×16 (m ≥ n) → right, R = GQ is 48×r; 8×48 → left, R = PᵀG is r×48
    low = (48 * RANK + 48 + RANK * 48 + 8) * 4
    return [full if step % GAP == 0 else low for step in range(STEPS)]


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("name", SCENARIOS)
def test_bytes_counted_at_the_process_group_calls(two_ranks, name):
    sent = two_ranks[0][name][1]
    assert sent == _expected_bytes(lowrank=name == "lowrank")
    if name == "lowrank":
        assert sent[1] < sent[0] / 2  # between refreshes: the projected gradients only


# ------------------------------------------------------------------- single process, no spawn
def test_projection_lookup_tracks_the_refresh_schedule():
    model = _model(0)
    opt = GaLoreAdamW(_groups(model), lr=1e-2)
    lookup = ProjectionLookup(opt)
    assert lookup(model[0].bias) is None
    x, y = _data()
    due = []
    for _ in range(7):
        view = lookup(model[0].weight)
        due.append(view.refresh_due)
        ((model(x) - y) ** 2).mean().backward()
        opt.step()
        opt.zero_grad()
    assert due == [True, False, False, True, False, False, True]
    view = lookup(model[0].weight)
    state = opt.state[model[0].weight]
    assert view.left is state.get("proj_left") and view.right is state.get("proj_right")


def test_projection_lookup_refuses_a_non_galore_optimizer():
    with pytest.raises(TypeError, match="GaLore optimizer"):
        ProjectionLookup(torch.optim.AdamW(_model(0).parameters()))


def test_check_nproc_refuses_more_processes_than_the_machine_has():
    with pytest.raises(ValueError, match="CPU core"):
        check_nproc(10_000, "cpu")
    if torch.cuda.device_count() == 0:
        with pytest.raises(ValueError, match="CUDA device"):
            check_nproc(1, "cuda")
    with pytest.raises(ValueError, match="≥ 1"):
        check_nproc(0, "cpu")
    check_nproc(1, "cpu")


def test_namespace_to_argv_round_trips_the_pretrain_flags():
    from galorekit.train.pretrain_cli import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    argv = [
        "--model", "llama_tiny", "--layerwise", "--lr", "0.003", "--data-files", "a.txt", "b.txt",
        "--resume", "--no-plot", "--max-grad-norm", "0.5", "--nproc-per-node", "2", "--lowrank-comm",
    ]  # fmt: skip
    args = parser.parse_args(argv)
    again = parser.parse_args(namespace_to_argv(parser, args))
    assert vars(again) == vars(args)
    args = parser.parse_args(["--resume", "ckpt/step-00000004"])
    assert namespace_to_argv(parser, args) == ["--resume", "ckpt/step-00000004"]
    assert namespace_to_argv(parser, parser.parse_args([])) == []


# ------------------------------------------------------------- `galore pretrain` input checks
def _pretrain_argv(out, *extra: str) -> list[str]:
    return [
        "pretrain",
        "--model",
        "llama_tiny",
        "--output-dir",
        str(out),
        "--batch-size",
        "4",
        *extra,
    ]


@pytest.mark.parametrize(
    "extra,message",
    [
        (("--nproc-per-node", "10000"), "CPU core"),
        (("--nproc-per-node", "2", "--total-batch-size", "12"), "--batch-size × processes (4 × 2"),
        (("--lowrank-comm",), "needs data parallelism"),
        (("--nproc-per-node", "2", "--lowrank-comm", "--method", "adamw"), "galore_* method"),
        (("--nproc-per-node", "2", "--lowrank-comm", "--layerwise"), "--layerwise"),
    ],
)
def test_bad_distributed_input_fails_before_any_process_starts(tmp_path, capsys, extra, message):
    from galorekit.cli import main

    out = tmp_path / "run"
    assert main(_pretrain_argv(out, *extra)) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()  # nothing launched, nothing written


def test_existing_run_is_refused_before_launch(tmp_path, capsys):
    from galorekit.cli import main

    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text("")
    assert main(_pretrain_argv(out, "--nproc-per-node", "2")) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_nproc_inside_torchrun_must_match_the_job(tmp_path, capsys, monkeypatch):
    from galorekit.cli import main

    env = dict(RANK="0", WORLD_SIZE="2", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT="1")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert main(_pretrain_argv(tmp_path / "run", "--nproc-per-node", "4")) == 2
    assert "inside a torchrun job of 2 processes" in capsys.readouterr().err
