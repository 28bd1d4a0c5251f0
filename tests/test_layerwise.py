"""LayerwiseOptimizer: equivalence with the ordinary optimizer, clipping, state, memory."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from galorekit import GaLoreAdafactor, GaLoreAdamW, GaLoreAdamW8bit, LayerwiseOptimizer


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 48), nn.Tanh(), nn.Linear(48, 8))


def groups(model: nn.Module, rank: int = 4, gap: int = 3) -> list[dict]:
    return [
        {"params": [model[0].bias, model[2].bias]},
        {"params": [model[0].weight, model[2].weight], "rank": rank, "update_proj_gap": gap},
    ]


def data(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 16, generator=g), torch.randn(n, 8, generator=g)


def warmup(step: int) -> float:
    return min(1.0, (step + 1) / 4)


def run(model, opt, acc: int, steps: int, clip: float | None = None, resume=None):
    """The ordinary loop (ordinary optimizers clip with clip_grad_norm_ before step).

    ``resume`` = (optimizer state, scheduler state), loaded after the scheduler is built (its
    constructor rewrites the lr).
    """
    x, y = data()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup)
    if resume is not None:
        opt.load_state_dict(resume[0])
        sched.load_state_dict(resume[1])
    norms = []
    for _ in range(steps):
        for k in range(acc):
            loss = ((model(x[k::acc]) - y[k::acc]) ** 2).mean() / acc
            loss.backward()
        if clip is not None and not isinstance(opt, LayerwiseOptimizer):
            norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), clip)))
        opt.step()
        opt.zero_grad()
        sched.step()
        if isinstance(opt, LayerwiseOptimizer):
            norms.append(opt.grad_norm)
    run.last_scheduler = sched.state_dict()
    return norms


def max_diff(a: nn.Module, b: nn.Module) -> float:
    return max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize("acc", [1, 4])
@pytest.mark.parametrize("cls", [GaLoreAdamW, GaLoreAdafactor, GaLoreAdamW8bit])
def test_matches_ordinary_optimizer(acc, cls):
    kwargs = {"lr": 1e-2}
    ref, lw = make_model(), make_model()
    run(ref, cls(groups(ref), **kwargs), acc, steps=7)
    opt = LayerwiseOptimizer(groups(lw), cls, accumulation_steps=acc, **kwargs)
    run(lw, opt, acc, steps=7)
    assert max_diff(ref, lw) < 1e-6
    assert max_diff(ref, make_model()) > 1e-3  # it did train


@pytest.mark.parametrize("acc", [1, 3])
def test_plain_torch_optimizer_matches(acc):
    ref, lw = make_model(), make_model()
    run(ref, torch.optim.AdamW(ref.parameters(), lr=1e-2), acc, steps=5)
    run(
        lw,
        LayerwiseOptimizer(lw.parameters(), torch.optim.AdamW, accumulation_steps=acc, lr=1e-2),
        acc,
        steps=5,
    )
    assert max_diff(ref, lw) < 1e-6


def test_scheduler_drives_every_parameter_once_per_step():
    model = make_model()
    opt = LayerwiseOptimizer(groups(model), GaLoreAdamW, accumulation_steps=2, lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5**s)
    x, y = data()
    for step in range(3):
        assert all(g["lr"] == pytest.approx(0.5**step) for g in opt.param_groups)
        for k in range(2):
            ((model(x[k::2]) - y[k::2]) ** 2).mean().backward()
        opt.step()
        opt.zero_grad()
        sched.step()
    assert opt.inner.state[model[0].weight]["step"] == 3  # one update per optimizer step


def test_grad_norm_is_reported_and_matches_clip_grad_norm():
    ref, lw = make_model(), make_model()
    ref_norms = run(ref, GaLoreAdamW(groups(ref), lr=1e-2), 2, steps=3, clip=1e9)
    lw_norms = run(
        lw, LayerwiseOptimizer(groups(lw), GaLoreAdamW, accumulation_steps=2, lr=1e-2), 2, steps=3
    )
    assert lw_norms[0] > 0
    assert lw_norms == pytest.approx(ref_norms, rel=1e-5)


def test_exact_global_clip_equals_clip_grad_norm():
    clip, acc = 0.05, 2
    ref, lw = make_model(), make_model()
    ref_norms = run(ref, GaLoreAdamW(groups(ref), lr=1e-2), acc, steps=4, clip=clip)
    assert min(ref_norms) > clip  # the clip is active
    opt = LayerwiseOptimizer(
        groups(lw),
        GaLoreAdamW,
        accumulation_steps=acc,
        lr=1e-2,
        max_grad_norm=clip,
        global_clip="exact",
    )
    x, y = data()

    def closure():
        total = 0.0
        for k in range(acc):
            loss = ((lw(x[k::acc]) - y[k::acc]) ** 2).mean() / acc
            loss.backward()
            total += loss.item()
        return total

    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup)
    for _ in range(4):
        opt.step(closure)
        opt.zero_grad()
        sched.step()
    assert max_diff(ref, lw) < 1e-6
    with pytest.raises(ValueError, match="closure"):
        opt.step()


def test_previous_step_global_clip():
    """Step t's gradients are scaled by min(1, max_norm / norm_{t-1}); step 1 is not clipped."""
    clip = 0.05
    ref, lw = make_model(), make_model()
    opt = LayerwiseOptimizer(groups(lw), GaLoreAdamW, max_grad_norm=clip, lr=1e-2)
    ref_opt = GaLoreAdamW(groups(ref), lr=1e-2)
    x, y = data()
    prev = None
    for _ in range(4):
        ((ref(x) - y) ** 2).mean().backward()
        norm = float(torch.nn.utils.clip_grad_norm_(ref.parameters(), float("inf")))
        if prev is not None:
            coef = min(1.0, clip / (prev + 1e-6))
            for p in ref.parameters():
                p.grad.mul_(coef)
        ref_opt.step()
        ref_opt.zero_grad()
        prev = norm
        ((lw(x) - y) ** 2).mean().backward()
        opt.step()
        opt.zero_grad()
        assert opt.grad_norm == pytest.approx(norm, rel=1e-5)
    assert max_diff(ref, lw) < 1e-6


def test_per_parameter_clip():
    ref, lw = make_model(), make_model()
    ref_opt = GaLoreAdamW(groups(ref), lr=1e-2)
    opt = LayerwiseOptimizer(groups(lw), GaLoreAdamW, clip_grad_norm=0.01, lr=1e-2)
    x, y = data()
    for _ in range(3):
        ((ref(x) - y) ** 2).mean().backward()
        for p in ref.parameters():
            torch.nn.utils.clip_grad_norm_([p], 0.01)
        ref_opt.step()
        ref_opt.zero_grad()
        ((lw(x) - y) ** 2).mean().backward()
        opt.step()
        opt.zero_grad()
    assert max_diff(ref, lw) < 1e-6


@pytest.mark.parametrize("cls", [GaLoreAdamW, GaLoreAdamW8bit, torch.optim.AdamW])
def test_state_dict_round_trip_is_bit_identical(cls, tmp_path):
    acc = 2
    first = make_model()
    g = groups(first) if cls is not torch.optim.AdamW else first.parameters()
    opt = LayerwiseOptimizer(g, cls, accumulation_steps=acc, lr=1e-2, max_grad_norm=0.5)
    run(first, opt, acc, steps=3)
    path = tmp_path / "ckpt.pt"
    torch.save(
        {"model": first.state_dict(), "opt": opt.state_dict(), "sched": run.last_scheduler}, path
    )

    resumed = make_model(seed=123)
    ckpt = torch.load(path, weights_only=True)
    resumed.load_state_dict(ckpt["model"])
    g = groups(resumed) if cls is not torch.optim.AdamW else resumed.parameters()
    opt2 = LayerwiseOptimizer(g, cls, accumulation_steps=acc, lr=1e-2, max_grad_norm=0.5)
    run(resumed, opt2, acc, steps=3, resume=(ckpt["opt"], ckpt["sched"]))

    # the uninterrupted run with the same clipping
    again = make_model()
    g = groups(again) if cls is not torch.optim.AdamW else again.parameters()
    run(
        again,
        LayerwiseOptimizer(g, cls, accumulation_steps=acc, lr=1e-2, max_grad_norm=0.5),
        acc,
        steps=6,
    )
    for p, q in zip(again.parameters(), resumed.parameters()):
        assert torch.equal(p, q)
    assert opt2.steps == 6
    assert max_diff(again, make_model()) > 1e-3  # it trained


def test_gradients_are_freed_during_backward():
    """At most one full gradient (plus the one being accumulated into) is alive in backward."""
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(64, 64, bias=False) for _ in range(6)])
    opt = LayerwiseOptimizer(
        [{"params": list(model.parameters()), "rank": 8}], GaLoreAdamW, lr=1e-3
    )
    live: list[int] = []

    def probe(_p):
        live.append(sum(q.grad.numel() for q in model.parameters() if q.grad is not None))

    # registered after the optimizer's hooks: sees the state after the previous update
    for p in model.parameters():
        p.register_post_accumulate_grad_hook(probe)
    model(torch.randn(4, 64)).sum().backward()
    opt.step()
    assert len(live) == 6
    assert max(live) == 0  # each gradient was freed by its own update before the next arrived
    assert all(p.grad is None for p in model.parameters())

    # the ordinary optimizer holds every gradient at the end of backward
    live.clear()
    opt.remove_hooks()
    model(torch.randn(4, 64)).sum().backward()
    assert max(live) == 6 * 64 * 64


def test_wrong_number_of_backward_passes_is_an_error():
    model = make_model()
    opt = LayerwiseOptimizer(groups(model), GaLoreAdamW, accumulation_steps=3, lr=1e-2)
    x, y = data()
    ((model(x) - y) ** 2).mean().backward()
    with pytest.raises(RuntimeError, match="accumulation_steps=3"):
        opt.step()


def test_unused_parameter_is_still_updated_at_step():
    model = make_model()
    extra = nn.Parameter(torch.ones(3))
    opt = LayerwiseOptimizer(
        [*groups(model), {"params": [extra]}], GaLoreAdamW, accumulation_steps=2, lr=0.1
    )
    x, y = data()
    for k in range(2):
        loss = ((model(x[k::2]) - y[k::2]) ** 2).mean()
        if k == 0:
            loss = loss + extra.sum()  # extra gets a gradient in the first micro-batch only
        loss.backward()
    opt.step()
    assert not torch.equal(extra.detach(), torch.ones(3))
    assert extra.grad is None


def test_bad_arguments():
    model = make_model()
    with pytest.raises(ValueError, match="accumulation_steps"):
        LayerwiseOptimizer(groups(model), GaLoreAdamW, accumulation_steps=0)
    with pytest.raises(ValueError, match="global_clip"):
        LayerwiseOptimizer(groups(model), GaLoreAdamW, max_grad_norm=1.0, global_clip="later")
    with pytest.raises(TypeError, match="optimizer class"):
        LayerwiseOptimizer(groups(model), GaLoreAdamW(groups(make_model())))
    with pytest.raises(ValueError, match="not a LayerwiseOptimizer state dict"):
        LayerwiseOptimizer(groups(model), GaLoreAdamW).load_state_dict({"state": {}})


def test_state_dict_is_weights_only_loadable():
    model = make_model()
    opt = LayerwiseOptimizer(groups(model), GaLoreAdamW8bit, accumulation_steps=1, lr=1e-2)
    run(model, opt, 1, steps=2)
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    sd = torch.load(buf, weights_only=True)
    assert sd["layerwise"]["steps"] == 2


def test_bitsandbytes_optimizer_per_parameter_matches():
    """A non-galorekit optimizer class (bitsandbytes' AdamW8bit) runs one instance per parameter,
    its hyper-parameters synced from param_groups: same result as the ordinary optimizer."""
    import bitsandbytes as bnb

    ref, lw = make_model(), make_model()
    kwargs = {"lr": 1e-2, "min_8bit_size": 256}
    run(ref, bnb.optim.AdamW8bit(ref.parameters(), **kwargs), 2, steps=4)
    opt = LayerwiseOptimizer(lw.parameters(), bnb.optim.AdamW8bit, accumulation_steps=2, **kwargs)
    run(lw, opt, 2, steps=4)
    assert max_diff(ref, lw) < 1e-6
    assert any(
        v.dtype == torch.uint8
        for s in opt.state.values()
        for v in s.values()
        if isinstance(v, torch.Tensor)
    )
