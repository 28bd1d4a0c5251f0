"""The training-loop core: accumulation, clipping, the divergence stop before the update, the
per-step callbacks, the stop flag, the periodic-action rule."""

from __future__ import annotations

import signal

import pytest
import torch
from torch import nn

from galorekit.train.loop import Loop, NonFiniteError, StopFlag, check_finite, due


def _setup(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    return model, optimizer, scheduler


def _mse(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch
    return ((model(x) - y) ** 2).mean()


def _data(n: int, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(4, 4, generator=g), torch.randn(4, 1, generator=g)) for _ in range(n)]


def test_accumulation_equals_one_big_batch():
    batches = _data(4)
    model_a, opt_a, sched_a = _setup()
    it = iter(batches)
    loop = Loop(model_a, opt_a, sched_a, lambda: next(it), _mse, accumulation=2)
    outs = list(loop.steps(2))
    assert [o.step for o in outs] == [1, 2] and loop.step == 2

    model_b, opt_b, sched_b = _setup()
    merged = [
        (torch.cat([a[0], b[0]]), torch.cat([a[1], b[1]]))
        for a, b in zip(batches[::2], batches[1::2], strict=True)
    ]
    it_b = iter(merged)
    list(Loop(model_b, opt_b, sched_b, lambda: next(it_b), _mse).steps(2))
    for p, q in zip(model_a.parameters(), model_b.parameters(), strict=True):
        torch.testing.assert_close(p, q)


def test_clipping_reports_the_pre_clip_norm():
    model, optimizer, scheduler = _setup()
    it = iter(_data(1))
    before = [p.detach().clone() for p in model.parameters()]
    out = Loop(model, optimizer, scheduler, lambda: next(it), _mse, max_grad_norm=1e-3).train_step()
    assert out.grad_norm > 1e-3
    moved = sum(float((p.detach() - b).pow(2).sum()) for p, b in zip(model.parameters(), before))
    assert moved**0.5 == pytest.approx(0.1 * 1e-3, rel=1e-3)  # lr × the clipped norm


def test_a_non_finite_loss_stops_before_the_update():
    model, optimizer, scheduler = _setup()
    batches = _data(3)
    batches[2] = (batches[2][0] * float("nan"), batches[2][1])
    it = iter(batches)
    loop = Loop(model, optimizer, scheduler, lambda: next(it), _mse, hint="lower --lr")
    list(loop.steps(2))
    after_two = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(NonFiniteError) as info:
        loop.train_step()
    message = str(info.value)
    assert message.startswith("training diverged at step 3: the training loss became nan")
    assert "update was not applied" in message and message.endswith("lower --lr")
    assert isinstance(info.value, FloatingPointError)  # what reproduce's workers catch
    for p, q in zip(model.parameters(), after_two, strict=True):
        assert torch.equal(p, q)  # nothing diverged was applied
    assert loop.step == 2


def test_callbacks_see_the_clipped_gradients_before_and_after_the_update():
    model, optimizer, scheduler = _setup()
    it = iter(_data(2))
    seen: list[tuple[str, int, bool]] = []

    def before(loop: Loop) -> None:
        seen.append(("before", loop.step, model.weight.grad is not None))

    def after(loop: Loop) -> None:
        seen.append(("after", loop.step, model.weight.grad is not None))

    loop = Loop(
        model,
        optimizer,
        scheduler,
        lambda: next(it),
        _mse,
        before_update=before,
        after_update=after,
    )
    list(loop.steps(2))
    assert seen == [
        ("before", 0, True),
        ("after", 0, True),
        ("before", 1, True),
        ("after", 1, True),
    ]


def test_a_stop_signal_is_reported_after_the_step_and_synced():
    model, optimizer, scheduler = _setup()
    it = iter(_data(2))
    calls = []

    def sync(loss: float, stopping: bool) -> tuple[float, bool]:
        calls.append(stopping)
        return loss, stopping

    with StopFlag() as stop:
        loop = Loop(model, optimizer, scheduler, lambda: next(it), _mse, sync=sync, stop=stop)
        assert not loop.train_step().stopping
        stop.signal = signal.SIGTERM
        assert loop.train_step().stopping
    assert calls == [False, True]


def test_due_and_check_finite():
    assert [s for s in range(1, 11) if due(s, 4, 10)] == [4, 8, 10]
    assert [s for s in range(1, 11) if due(s, 0, 10)] == [10]  # 0: only at the end
    check_finite(1, 1.0, 2.0)
    with pytest.raises(NonFiniteError, match="the gradient norm became inf"):
        check_finite(5, 1.0, float("inf"))
