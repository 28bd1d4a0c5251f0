"""The subspace math alone: side choice, project / project back, the SVD refresh and its retries."""

from __future__ import annotations

import warnings

import pytest
import torch

from galorekit.projection import (
    PROJ_TYPES,
    NonFiniteGradientError,
    Side,
    add_projected_,
    check_finite,
    choose_side,
    compute_projector,
    low_rank_shape,
    project,
    project_back,
)


def orthonormal(rows: int, cols: int, gen: torch.Generator) -> torch.Tensor:
    """A rows×cols matrix with orthonormal columns."""
    q, _ = torch.linalg.qr(torch.randn(rows, cols, generator=gen))
    return q


@pytest.mark.parametrize(
    ("proj_type", "shape", "side"),
    [
        ("std", (4, 8), Side.LEFT),  # m < n: project the smaller (left) side
        ("std", (8, 4), Side.RIGHT),
        ("std", (6, 6), Side.RIGHT),  # tie goes right, as in galore-torch
        ("reverse_std", (4, 8), Side.RIGHT),
        ("reverse_std", (8, 4), Side.LEFT),
        ("reverse_std", (6, 6), Side.LEFT),
        ("left", (8, 4), Side.LEFT),
        ("left", (4, 8), Side.LEFT),
        ("right", (4, 8), Side.RIGHT),
        ("right", (8, 4), Side.RIGHT),
        ("full", (4, 8), Side.FULL),
    ],
    ids=lambda v: (
        v.name if isinstance(v, Side) else "x".join(map(str, v)) if isinstance(v, tuple) else v
    ),
)
def test_choose_side(proj_type: str, shape: tuple[int, int], side: Side) -> None:
    assert choose_side(proj_type, shape) == side
    assert choose_side(proj_type, torch.Size(shape)) == side


def test_choose_side_unknown_lists_valid() -> None:
    with pytest.raises(ValueError, match="proj_type") as info:
        choose_side("diagonal", (4, 8))
    for valid in PROJ_TYPES:
        assert valid in str(info.value)


@pytest.mark.parametrize(
    ("side", "expected"), [(Side.LEFT, (3, 8)), (Side.RIGHT, (6, 3)), (Side.FULL, (3, 3))]
)
def test_low_rank_shape(side: Side, expected: tuple[int, int]) -> None:
    assert low_rank_shape((6, 8), 3, side) == expected


@pytest.mark.parametrize("side", list(Side), ids=lambda s: s.name)
def test_project_and_back_match_explicit_products(side: Side, gen: torch.Generator) -> None:
    m, n, r = 7, 5, 2
    p_left = orthonormal(m, r, gen)  # P
    q = orthonormal(n, r, gen)  # Q; the functions take Qᵀ (r×n)
    left = p_left if side in (Side.LEFT, Side.FULL) else None
    right = q.t().contiguous() if side in (Side.RIGHT, Side.FULL) else None
    grad = torch.randn(m, n, generator=gen)

    low = project(grad, side, left, right)
    expected_low = {
        Side.LEFT: lambda: p_left.t() @ grad,
        Side.RIGHT: lambda: grad @ q,
        Side.FULL: lambda: p_left.t() @ grad @ q,
    }[side]()
    assert low.shape == low_rank_shape((m, n), r, side)
    torch.testing.assert_close(low, expected_low)

    update = torch.randn(*low.shape, generator=gen)
    update_before = update.clone()
    expected_full = {
        Side.LEFT: lambda: p_left @ update,
        Side.RIGHT: lambda: update @ q.t(),
        Side.FULL: lambda: p_left @ update @ q.t(),
    }[side]()
    back = project_back(update, side, left, right, scale=0.25)
    torch.testing.assert_close(back, 0.25 * expected_full)
    assert torch.equal(update, update_before), "project_back must not modify the update"
    torch.testing.assert_close(project_back(update, side, left, right), expected_full)

    param = torch.randn(m, n, generator=gen)
    expected_param = param - 0.3 * expected_full
    out = add_projected_(param, update, side, left, right, alpha=-0.3)
    assert out.data_ptr() == param.data_ptr(), "add_projected_ works in place"
    torch.testing.assert_close(param, expected_param)


@pytest.mark.parametrize("side", list(Side), ids=lambda s: s.name)
def test_project_back_inverts_project_inside_the_subspace(side: Side, gen: torch.Generator) -> None:
    m, n, r = 6, 9, 3
    p_left, q = orthonormal(m, r, gen), orthonormal(n, r, gen)
    # a gradient that lies in the subspace is reproduced exactly by project → project back
    core = torch.randn(r, r, generator=gen)
    grad = {
        Side.LEFT: p_left @ torch.randn(r, n, generator=gen),
        Side.RIGHT: torch.randn(m, r, generator=gen) @ q.t(),
        Side.FULL: p_left @ core @ q.t(),
    }[side]
    left = p_left if side != Side.RIGHT else None
    right = q.t().contiguous() if side != Side.LEFT else None
    back = project_back(project(grad, side, left, right), side, left, right)
    torch.testing.assert_close(back, grad, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("side", "want_left", "want_right"),
    [(Side.LEFT, True, False), (Side.RIGHT, False, True), (Side.FULL, True, True)],
)
def test_compute_projector_is_truncated_svd(
    side: Side, want_left: bool, want_right: bool, gen: torch.Generator
) -> None:
    grad = torch.randn(8, 5, generator=gen)
    u, _, vh = torch.linalg.svd(grad, full_matrices=False)
    left, right = compute_projector(grad, 3, side)
    assert (left is not None) == want_left
    assert (right is not None) == want_right
    if want_left:
        assert left.shape == (8, 3) and left.is_contiguous()
        torch.testing.assert_close(left, u[:, :3])
    if want_right:
        assert right.shape == (3, 5) and right.is_contiguous()
        torch.testing.assert_close(right, vh[:3])


def test_compute_projector_svd_in_float32_for_bf16(
    monkeypatch: pytest.MonkeyPatch, gen: torch.Generator
) -> None:
    seen: list[torch.dtype] = []
    real_svd = torch.linalg.svd

    def spy(matrix, *args, **kwargs):
        seen.append(matrix.dtype)
        return real_svd(matrix, *args, **kwargs)

    monkeypatch.setattr(torch.linalg, "svd", spy)
    grad = torch.randn(8, 6, generator=gen).bfloat16()
    left, right = compute_projector(grad, 2, Side.FULL)
    assert seen == [torch.float32]
    assert left.dtype == right.dtype == torch.bfloat16  # default: the gradient's dtype
    left32, _ = compute_projector(grad, 2, Side.LEFT, out_dtype=torch.float32)
    assert left32.dtype == torch.float32
    u, _, _ = real_svd(grad.float(), full_matrices=False)
    torch.testing.assert_close(left32, u[:, :2])


def test_compute_projector_unknown_method(gen: torch.Generator) -> None:
    with pytest.raises(ValueError, match="exact"):
        compute_projector(torch.randn(4, 4, generator=gen), 2, Side.LEFT, method="randomized?")


def test_svd_failure_is_retried_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, gen: torch.Generator
) -> None:
    grad = torch.randn(9, 6, generator=gen)
    u, _, _ = torch.linalg.svd(grad, full_matrices=False)
    real_svd = torch.linalg.svd
    calls = []

    def flaky(matrix, *args, **kwargs):
        calls.append(matrix.dtype)
        if len(calls) == 1:
            raise torch.linalg.LinAlgError("linalg.svd: The algorithm failed to converge")
        return real_svd(matrix, *args, **kwargs)

    monkeypatch.setattr(torch.linalg, "svd", flaky)
    with pytest.warns(RuntimeWarning, match="did not converge"):
        left, _ = compute_projector(grad, 2, Side.LEFT)
    assert len(calls) == 2
    assert left.dtype == torch.float32
    # singular vectors are defined up to sign: compare the projections P Pᵀ
    torch.testing.assert_close(left @ left.t(), u[:, :2] @ u[:, :2].t(), atol=1e-5, rtol=1e-5)


def test_svd_failing_everywhere_raises_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, gen: torch.Generator
) -> None:
    def broken(*args, **kwargs):
        raise torch.linalg.LinAlgError("linalg.svd: The algorithm failed to converge")

    monkeypatch.setattr(torch.linalg, "svd", broken)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "succeeded" warning may be emitted
        with pytest.raises(torch.linalg.LinAlgError, match="GaLore subspace refresh failed"):
            compute_projector(torch.randn(5, 4, generator=gen), 2, Side.RIGHT)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_check_finite_names_the_parameter(bad: float, gen: torch.Generator) -> None:
    grad = torch.randn(4, 4, generator=gen)
    check_finite(grad, "layers.0.q_proj.weight")  # finite: no error
    grad[1, 2] = bad
    grad[3, 0] = bad
    with pytest.raises(NonFiniteGradientError, match=r"layers\.0\.q_proj\.weight") as info:
        check_finite(grad, "layers.0.q_proj.weight")
    assert "2 non-finite" in str(info.value)
    # must not be mistaken for an SVD failure
    assert not isinstance(info.value, torch.linalg.LinAlgError)
