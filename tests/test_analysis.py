"""The shared measurements (``galorekit.analysis``): subspace metrics and the one count of an
optimizer's state bytes."""

from __future__ import annotations

import math

import pytest
import torch

from galorekit import analysis
from galorekit.projection import Side


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def test_captured_energy_is_that_of_galorekit_projection(gen: torch.Generator) -> None:
    g = torch.randn(12, 20, generator=gen)
    p = torch.linalg.qr(torch.randn(12, 3, generator=gen)).Q  # left: 12×r
    q = torch.linalg.qr(torch.randn(20, 3, generator=gen)).Q  # right is Qᵀ: r×20
    total = float(g.square().sum())
    assert analysis.captured_energy(g, Side.LEFT, p, None) == pytest.approx(
        float((p.t() @ g).square().sum()) / total
    )
    assert analysis.captured_energy(g, Side.RIGHT, None, q.t()) == pytest.approx(
        float((g @ q).square().sum()) / total
    )
    assert analysis.captured_energy(g, Side.FULL, p, q.t()) == pytest.approx(
        float((p.t() @ g @ q).square().sum()) / total
    )


def test_metrics_of_a_zero_matrix_are_nan_not_an_error() -> None:
    zero = torch.zeros(4, 6)
    basis = torch.eye(4)[:, :2]
    assert math.isnan(analysis.captured_energy(zero, Side.LEFT, basis, None))
    assert math.isnan(analysis.exact_energy(zero, 2))


def test_exact_energy_is_the_ceiling_reached_by_the_top_singular_vectors(gen) -> None:
    g = torch.randn(10, 16, generator=gen)
    u = torch.linalg.svd(g.double(), full_matrices=False).U[:, :3]
    assert analysis.captured_energy(g, Side.LEFT, u, None) == pytest.approx(
        analysis.exact_energy(g, 3), rel=1e-12
    )


def test_state_bytes_counts_shared_tensors_once_and_tensors_inside_objects() -> None:
    class Holder:
        def __init__(self, t: torch.Tensor) -> None:
            self.ortho_matrix = t

    p, q = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.SGD([p, q], lr=0.1)
    shared = torch.zeros(256)
    full = torch.zeros(10, 10)
    opt.state[p] = {
        "a": torch.zeros(5),  # 20 bytes
        "qmap": shared,  # shared by both parameters: 1024 bytes once
        "projector": Holder(torch.zeros(2, 2, dtype=torch.float64)),  # 32 bytes
        "step": 3,
    }
    opt.state[q] = {"qmap": shared, "view": full[:, :2]}  # a view counts its own 20 elements
    assert analysis.state_bytes(opt) == 20 + 1024 + 32 + 80
