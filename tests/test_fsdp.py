"""FSDP2 for GaLore: the sharded subspace refresh (row shards run in threads that sum their
sketches, so no processes are needed) equals the unsharded one; the sharded clip; the pretrain
config's refusals. The 2-process runs are in tests/test_fsdp_pretrain.py."""

from __future__ import annotations

import threading

import pytest
import torch

from galorekit.distributed.fsdp import clip_grad_norm_
from galorekit.projection import RowShard, Side, compute_projector, refresh_projector


def _sharded_projectors(
    grad: torch.Tensor, rows: list[int], *, projections: list | None = None, **kwargs
) -> list[torch.Tensor]:
    """The right factors ``refresh_projector`` gives on row blocks of ``grad``, one thread per
    block; ``reduce`` sums over the threads (what an all-reduce does across processes). Each
    block's projection R, when the refresh gives one, is appended to ``projections``."""
    n = len(rows)
    barrier, lock = threading.Barrier(n), threading.Lock()
    posted: dict[int, list[torch.Tensor]] = {}
    results: list = [None] * n
    errors: list[BaseException] = []
    offsets = [sum(rows[:i]) for i in range(n + 1)]

    def make_reduce():
        calls = [0]

        def reduce(t: torch.Tensor) -> torch.Tensor:
            k = calls[0]
            calls[0] += 1
            with lock:
                posted.setdefault(k, []).append(t.clone())
            barrier.wait()
            total = torch.stack(posted[k]).sum(0)
            barrier.wait()
            return t.copy_(total)

        return reduce

    def run(i: int) -> None:
        try:
            shard = RowShard(offsets[i], grad.shape[0], make_reduce())
            results[i] = refresh_projector(grad[offsets[i] : offsets[i + 1]], shard=shard, **kwargs)
        except BaseException as err:  # surfaced below; the other threads would wait forever
            errors.append(err)
            barrier.abort()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    if projections is not None:
        projections.extend(result.projected for result in results)
    return [result.right for result in results]


def _gradient(m: int, n: int, seed: int) -> torch.Tensor:
    """A decaying spectrum plus noise, like a real gradient."""
    g = torch.Generator().manual_seed(seed)
    u = torch.linalg.qr(torch.randn(m, n, generator=g)).Q
    v = torch.linalg.qr(torch.randn(n, n, generator=g)).Q
    s = torch.logspace(0, -3, n)
    return (u * s) @ v.t() + 1e-4 * torch.randn(m, n, generator=g)


@pytest.mark.parametrize("method", ["randomized", "warm"])
@pytest.mark.parametrize("rows", [[40, 40], [27, 27, 26], [50, 30, 0]])
def test_sharded_refresh_equals_the_unsharded_one(method, rows):
    grad = _gradient(80, 48, seed=1)
    previous = compute_projector(_gradient(80, 48, seed=2), 6, Side.RIGHT, method="exact")[1]
    kwargs = dict(rank=6, side=Side.RIGHT, method=method, previous_right=previous)
    _, expected, projected = refresh_projector(grad, **kwargs)
    blocks: list[torch.Tensor] = []
    shards = _sharded_projectors(grad, rows, projections=blocks, **kwargs)
    for right in shards:  # every process gets the same projector, the single process's
        assert torch.equal(right, shards[0])
        torch.testing.assert_close(right, expected, rtol=0, atol=1e-4)
    # and each process R = G_i·Q for its own rows, from the refresh's own products
    assert [b.shape for b in blocks] == [torch.Size([r, 6]) for r in rows]
    torch.testing.assert_close(torch.cat(blocks), projected, rtol=0, atol=1e-4)
    torch.testing.assert_close(torch.cat(blocks), grad @ shards[0].t(), rtol=0, atol=1e-4)


def test_sharded_exact_refresh_spans_the_top_singular_subspace():
    grad = _gradient(64, 40, seed=3)
    _, expected = compute_projector(grad, 5, Side.RIGHT, method="exact")
    shards = _sharded_projectors(grad, [32, 32], rank=5, side=Side.RIGHT, method="exact")
    assert torch.equal(shards[0], shards[1])
    # singular vectors are defined up to sign: compare the projections onto their span
    torch.testing.assert_close(
        shards[0].t() @ shards[0], expected.t() @ expected, atol=1e-5, rtol=0
    )


@pytest.mark.parametrize("side", [Side.LEFT, Side.FULL])
@pytest.mark.parametrize("method", ["exact", "warm"])
def test_a_row_shard_refuses_left_projections(side, method):
    shard = RowShard(0, 8, reduce=lambda t: t)
    with pytest.raises(ValueError, match="right"):
        compute_projector(torch.randn(8, 6), 2, side, method=method, shard=shard)


def test_sharded_random_block_is_the_single_process_one():
    """On a flat spectrum the result depends on the random start: the shards must draw the
    single process's block (seeded from the global shape) and multiply their own rows of it."""
    grad = torch.randn(70, 32, generator=torch.Generator().manual_seed(4))
    kwargs = dict(rank=4, side=Side.RIGHT, method="randomized")
    _, expected = compute_projector(grad, **kwargs)
    shards = _sharded_projectors(grad, [36, 34], **kwargs)
    torch.testing.assert_close(shards[0], expected, rtol=0, atol=1e-4)


def test_clip_grad_norm_equals_torch_on_unsharded_tensors():
    torch.manual_seed(0)
    a = [torch.nn.Parameter(torch.randn(5, 3)) for _ in range(3)]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    for p, q in zip(a, b):
        p.grad = torch.randn(5, 3) * 4
        q.grad = p.grad.clone()
    norm = clip_grad_norm_(a, 1.0)
    expected = torch.nn.utils.clip_grad_norm_(b, 1.0)
    assert norm == pytest.approx(float(expected), rel=1e-6)
    for p, q in zip(a, b):
        torch.testing.assert_close(p.grad, q.grad)
    assert clip_grad_norm_(a, 100.0) == pytest.approx(1.0, rel=1e-5)  # below the limit: kept


@pytest.mark.parametrize(
    "extra,message",
    [
        (("--method", "lora"), "--distributed fsdp supports the methods"),
        (("--method", "galore_adafactor"), "Adafactor"),
        (("--proj-type", "left"), "--proj-type must be std or right"),
        (("--lowrank-comm",), "--lowrank-comm is a DDP option"),
    ],
)
def test_bad_fsdp_input_fails_before_any_process_starts(tmp_path, capsys, extra, message):
    from galorekit.cli import main

    out = tmp_path / "run"
    argv = ["pretrain", "--model", "llama_tiny", "--output-dir", str(out), "--batch-size", "4"]
    argv += ["--nproc-per-node", "2", "--distributed", "fsdp", *extra]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
