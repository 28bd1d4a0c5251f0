"""Parameters of more than two dimensions in a GaLore group (convolution kernels): projected as
their mode-0 unfolding (out × in·kh·kw), with the same trajectory as that matrix, through every
optimizer, layer-wise updates and a checkpoint; a 1-D parameter in a GaLore group is refused."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from galorekit import GaLoreAdafactor, GaLoreAdamW, GaLoreAdamW8bit, LayerwiseOptimizer
from galorekit.optim.base import matrix_shape

OPTIMIZERS = (GaLoreAdamW, GaLoreAdamW8bit, GaLoreAdafactor)


def gradients(shape: tuple[int, ...], steps: int = 7) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(shape, generator=gen) for _ in range(steps)]


def train(cls, weight: torch.Tensor, grads, **group) -> tuple[nn.Parameter, torch.optim.Optimizer]:
    w = nn.Parameter(weight.clone())
    opt = cls([{"params": [w], "rank": 4, "update_proj_gap": 3, **group}], lr=1e-2)
    for g in grads:
        w.grad = g.reshape(w.shape).clone()
        opt.step()
    return w, opt


@pytest.mark.parametrize("cls", OPTIMIZERS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("shape", [(16, 8, 3, 3), (12, 6, 5), (40, 2, 2, 2)])
def test_a_kernel_trains_as_its_unfolding(cls, shape) -> None:
    gen = torch.Generator().manual_seed(1)
    kernel = torch.randn(shape, generator=gen)
    grads = gradients(shape)
    w4, opt4 = train(cls, kernel, grads)
    w2, opt2 = train(cls, kernel.reshape(matrix_shape(shape)), grads)
    assert w4.shape == shape
    torch.testing.assert_close(w4.detach().reshape(w2.shape), w2.detach(), rtol=0, atol=0)
    for key, value in opt2.state[w2].items():
        other = opt4.state[w4][key]
        assert torch.equal(other, value) if torch.is_tensor(value) else other == value


def test_a_channels_last_kernel_is_updated_too() -> None:
    conv = nn.Conv2d(8, 16, 3).to(memory_format=torch.channels_last)
    assert not conv.weight.is_contiguous()
    before = conv.weight.detach().clone()
    grads = gradients(tuple(conv.weight.shape), 4)
    opt = GaLoreAdamW([{"params": [conv.weight], "rank": 4, "update_proj_gap": 2}], lr=1e-2)
    for g in grads:
        conv.weight.grad = g.contiguous(memory_format=torch.channels_last)
        opt.step()
    reference, _ = train(GaLoreAdamW, before.contiguous(), grads, update_proj_gap=2)
    torch.testing.assert_close(conv.weight.detach(), reference.detach(), rtol=1e-6, atol=1e-7)


def _cnn() -> tuple[nn.Module, LayerwiseOptimizer]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 8, 3), nn.Flatten())
    groups = [
        {"params": [model[0].bias, model[2].bias]},
        {"params": [model[0].weight, model[2].weight], "rank": 4, "update_proj_gap": 2},
    ]
    return model, LayerwiseOptimizer(groups, GaLoreAdamW, lr=1e-2)


def _steps(model: nn.Module, opt: LayerwiseOptimizer, n: int) -> list[float]:
    x = torch.randn(4, 3, 10, 10, generator=torch.Generator().manual_seed(2))
    losses = []
    for _ in range(n):
        loss = model(x).square().mean()
        losses.append(loss.item())
        loss.backward()
        opt.step()
        opt.zero_grad()
    return losses


def test_a_cnn_trains_layer_wise_and_resumes_bit_identically(tmp_path) -> None:
    model, opt = _cnn()
    losses = _steps(model, opt, 3)
    assert losses[-1] < losses[0]
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, tmp_path / "ckpt.pt")
    _steps(model, opt, 3)
    again, again_opt = _cnn()
    saved = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    again.load_state_dict(saved["model"])
    again_opt.load_state_dict(saved["opt"])
    assert again_opt.state[again[2].weight]["proj_left"].shape == (8, 4)  # 8 × 16·3·3: left
    _steps(again, again_opt, 3)
    for p, q in zip(model.parameters(), again.parameters()):
        assert torch.equal(p, q)


def test_a_vector_in_a_galore_group_is_refused() -> None:
    bias = nn.Parameter(torch.zeros(8))
    with pytest.raises(ValueError, match=r"holds parameter 0 of the group of shape \(8,\)"):
        GaLoreAdamW([{"params": [bias], "rank": 4}])
