"""The inner optimizers' pure update functions against formulas written out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from galorekit.optim.functional import (
    adafactor_beta2,
    adafactor_lr,
    adafactor_update,
    adam_step_size,
    adam_update,
    adam_update_foreach,
    rms,
)


@pytest.mark.parametrize("correct_bias", [True, False])
def test_adam_update_by_hand(correct_bias: bool, gen: torch.Generator) -> None:
    beta1, beta2, eps = 0.9, 0.99, 1e-6
    exp_avg, exp_avg_sq = torch.zeros(3, 5), torch.zeros(3, 5)
    m_ref, v_ref = torch.zeros(3, 5, dtype=torch.float64), torch.zeros(3, 5, dtype=torch.float64)
    for step in (1, 2, 3):
        grad = torch.randn(3, 5, generator=gen)
        g = grad.double()
        m_ref = beta1 * m_ref + (1 - beta1) * g
        v_ref = beta2 * v_ref + (1 - beta2) * g * g
        direction, step_size = adam_update(
            grad,
            exp_avg,
            exp_avg_sq,
            step=step,
            beta1=beta1,
            beta2=beta2,
            eps=eps,
            correct_bias=correct_bias,
        )
        # moments are updated in place
        torch.testing.assert_close(exp_avg.double(), m_ref)
        torch.testing.assert_close(exp_avg_sq.double(), v_ref)
        torch.testing.assert_close(direction.double(), m_ref / (v_ref.sqrt() + eps))
        expected_size = math.sqrt(1 - beta2**step) / (1 - beta1**step) if correct_bias else 1.0
        assert step_size == pytest.approx(expected_size, rel=1e-12)
    assert direction.data_ptr() != exp_avg.data_ptr(), "the direction must not alias a moment"


def test_adam_update_foreach_is_adam_update_on_each(gen: torch.Generator) -> None:
    """The batched moment update is the per-tensor one, bit for bit, for tensors of any shapes."""
    shapes = [(3, 5), (7,), (4, 2), (1, 9)]
    single = [(torch.zeros(s), torch.zeros(s)) for s in shapes]
    batched = [(torch.zeros(s), torch.zeros(s)) for s in shapes]
    for step in (1, 2, 3):
        grads = [torch.randn(s, generator=gen) for s in shapes]
        expected = [
            adam_update(g, m, v, step=step, beta1=0.9, beta2=0.99, eps=1e-6)
            for g, (m, v) in zip(grads, single)
        ]
        directions = adam_update_foreach(
            grads,
            [m for m, _ in batched],
            [v for _, v in batched],
            beta1=0.9,
            beta2=0.99,
            eps=1e-6,
        )
        for (direction, step_size), got, (m, v), (m_ref, v_ref) in zip(
            expected, directions, batched, single
        ):
            assert torch.equal(got, direction)
            assert torch.equal(m, m_ref) and torch.equal(v, v_ref)
            assert step_size == adam_step_size(step, 0.9, 0.99)
    assert adam_step_size(3, 0.9, 0.99, correct_bias=False) == 1.0


def test_rms(gen: torch.Generator) -> None:
    x = torch.randn(4, 6, generator=gen)
    assert float(rms(x)) == pytest.approx(float(x.pow(2).mean().sqrt()), rel=1e-6)


def test_adafactor_beta2() -> None:
    assert adafactor_beta2(1, -0.8) == 0.0  # the first step takes the new statistics whole
    assert adafactor_beta2(10, -0.8) == pytest.approx(1 - 10**-0.8)


def test_adafactor_lr() -> None:
    common = dict(param_rms=0.5, eps2=1e-3, warmup_init=False)
    # relative step: min(1e-2, 1/√t), ignoring lr; scaled by max(eps2, RMS(W))
    assert adafactor_lr(
        lr=None, step=4, relative_step=True, scale_parameter=True, **common
    ) == pytest.approx(1e-2 * 0.5)
    assert adafactor_lr(
        lr=None, step=40_000, relative_step=True, scale_parameter=False, **common
    ) == pytest.approx(1 / math.sqrt(40_000))
    # warm-up: 1e-6 · t
    assert adafactor_lr(
        lr=None,
        step=7,
        relative_step=True,
        scale_parameter=False,
        param_rms=0.5,
        eps2=1e-3,
        warmup_init=True,
    ) == pytest.approx(7e-6)
    # manual lr, with and without the parameter scale; eps2 is the floor of the scale
    assert adafactor_lr(
        lr=0.1, step=3, relative_step=False, scale_parameter=False, **common
    ) == pytest.approx(0.1)
    assert adafactor_lr(
        lr=0.1, step=3, relative_step=False, scale_parameter=True, **common
    ) == pytest.approx(0.05)
    assert adafactor_lr(
        lr=0.1,
        step=3,
        relative_step=False,
        scale_parameter=True,
        param_rms=0.0,
        eps2=1e-3,
        warmup_init=False,
    ) == pytest.approx(1e-4)


def _hand_adafactor_factored(grads, lr, clip, eps1, beta1=None):
    """Adafactor's factored second moment, written out element by element in float64."""
    rows, cols = grads[0].shape
    row = torch.zeros(rows, dtype=torch.float64)
    col = torch.zeros(cols, dtype=torch.float64)
    first = torch.zeros(rows, cols, dtype=torch.float64)
    updates = []
    for t, grad in enumerate(grads, start=1):
        g = grad.double()
        b2 = 1 - t**-0.8
        sq = g * g + eps1
        row = b2 * row + (1 - b2) * sq.mean(dim=1)
        col = b2 * col + (1 - b2) * sq.mean(dim=0)
        v_hat = torch.outer(row, col) / row.mean()  # rank-1 estimate of the second moment
        u = g / v_hat.sqrt()
        u = u / max(1.0, float(u.pow(2).mean().sqrt()) / clip)
        u = lr * u
        if beta1 is not None:
            first = beta1 * first + (1 - beta1) * u
            u = first.clone()
        updates.append((u, row.clone(), col.clone()))
    return updates


@pytest.mark.parametrize(
    ("clip", "beta1"), [(1.0, None), (0.05, None), (1.0, 0.9)], ids=["plain", "clipped", "beta1"]
)
def test_adafactor_update_factored_by_hand(
    clip: float, beta1: float | None, gen: torch.Generator
) -> None:
    grads = [torch.randn(4, 6, generator=gen) * s for s in (1.0, 3.0, 0.2)]
    lr, eps1 = 0.01, 1e-30
    expected = _hand_adafactor_factored(grads, lr, clip, eps1, beta1)
    row, col = torch.zeros(4), torch.zeros(6)
    exp_avg = torch.zeros(4, 6) if beta1 is not None else None
    for t, (grad, (u_ref, row_ref, col_ref)) in enumerate(zip(grads, expected), start=1):
        update = adafactor_update(
            grad,
            lr=lr,
            beta2t=adafactor_beta2(t, -0.8),
            eps1=eps1,
            clip_threshold=clip,
            exp_avg_sq_row=row,
            exp_avg_sq_col=col,
            exp_avg=exp_avg,
            beta1=beta1,
        )
        torch.testing.assert_close(row.double(), row_ref)
        torch.testing.assert_close(col.double(), col_ref)
        torch.testing.assert_close(update.double(), u_ref, rtol=1e-5, atol=1e-9)
        if clip < 1.0:  # the clip must actually bind in this case
            assert float(rms(update)) == pytest.approx(lr * clip, rel=1e-5)


def test_adafactor_update_unfactored_by_hand(gen: torch.Generator) -> None:
    exp_avg_sq = torch.zeros(7)
    v = torch.zeros(7, dtype=torch.float64)
    for t in (1, 2, 3):
        grad = torch.randn(7, generator=gen)
        b2 = adafactor_beta2(t, -0.8)
        v = b2 * v + (1 - b2) * (grad.double() ** 2 + 1e-30)
        u = grad.double() / v.sqrt()
        u = 0.1 * u / max(1.0, float(u.pow(2).mean().sqrt()))
        update = adafactor_update(
            grad, lr=0.1, beta2t=b2, eps1=1e-30, clip_threshold=1.0, exp_avg_sq=exp_avg_sq
        )
        torch.testing.assert_close(exp_avg_sq.double(), v)
        torch.testing.assert_close(update.double(), u, rtol=1e-5, atol=1e-9)


def test_adafactor_update_rejects_missing_state(gen: torch.Generator) -> None:
    grad = torch.randn(3, 3, generator=gen)
    with pytest.raises(ValueError, match="second moment"):
        adafactor_update(grad, lr=0.1, beta2t=0.0, eps1=1e-30, clip_threshold=1.0)
    with pytest.raises(ValueError, match="exp_avg"):
        adafactor_update(
            grad,
            lr=0.1,
            beta2t=0.0,
            eps1=1e-30,
            clip_threshold=1.0,
            exp_avg_sq=torch.zeros(3, 3),
            beta1=0.9,
        )
