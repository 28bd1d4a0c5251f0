"""What must never corrupt training silently: extra backward passes under layer-wise updates, a
state dict of another model, NaN gradients in plain (non-GaLore) groups, and bf16 moments that
cannot decay."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from galorekit import GaLoreAdafactor, GaLoreAdamW, GaLoreAdamW8bit, LayerwiseOptimizer
from galorekit.projection import NonFiniteGradientError


def make_model(seed: int = 0, hidden: int = 48) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, hidden), nn.Tanh(), nn.Linear(hidden, 8))


def groups(model: nn.Module, rank: int = 4) -> list[dict]:
    return [
        {"params": [model[0].bias, model[2].bias], "param_names": ["0.bias", "2.bias"]},
        {
            "params": [model[0].weight, model[2].weight],
            "param_names": ["0.weight", "2.weight"],
            "rank": rank,
            "update_proj_gap": 2,
        },
    ]


def loss_of(model: nn.Module, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(32, 16, generator=g), torch.randn(32, 8, generator=g)
    return ((model(x) - y) ** 2).mean()


def snapshot(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


# ---- layer-wise: one backward pass too many ---------------------------------------------------
@pytest.mark.parametrize("acc", [1, 2])
def test_an_extra_backward_pass_is_an_error_before_any_double_update(acc: int) -> None:
    model, reference = make_model(), make_model()
    opt = LayerwiseOptimizer(groups(model), GaLoreAdamW, accumulation_steps=acc, lr=1e-2)
    ref = LayerwiseOptimizer(groups(reference), GaLoreAdamW, accumulation_steps=acc, lr=1e-2)
    for _ in range(acc):
        (loss_of(model) / acc).backward()
        (loss_of(reference) / acc).backward()
    with pytest.raises(
        RuntimeError, match=rf"pass {acc + 1} of this .*reached 2\.(weight|bias).*call step\(\)"
    ):
        (loss_of(model) / acc).backward()
    ref.step()
    # every parameter was updated exactly once, on the full accumulation
    for p, q in zip(model.parameters(), reference.parameters()):
        assert torch.equal(p, q)
    # after step() and zero_grad(), as the message says, training goes on normally
    opt.step()
    opt.zero_grad()
    for _ in range(acc):
        (loss_of(model) / acc).backward()
    opt.step()


def test_an_extra_pass_reaching_only_a_partly_accumulated_parameter_applies_nothing() -> None:
    """A parameter that skipped micro-batch 2 (a routed expert, say) must not be updated on
    passes 1 + 3 when pass 3 is one too many: the pass is counted once, at its first hook."""
    torch.manual_seed(0)
    shared, expert = nn.Linear(8, 8), nn.Linear(8, 8)
    params = [*shared.parameters(), *expert.parameters()]
    opt = LayerwiseOptimizer(params, GaLoreAdamW, accumulation_steps=2, lr=1e-2)
    x = torch.randn(4, 8)
    expert(shared(x)).sum().backward()  # pass 1: both
    shared(x).sum().backward()  # pass 2: the expert gets nothing
    shared_after, expert_before = shared.weight.detach().clone(), expert.weight.detach().clone()
    with pytest.raises(RuntimeError, match="backward pass 3 of this optimizer step"):
        expert(x).sum().backward()  # pass 3 reaches the expert only
    assert torch.equal(expert.weight, expert_before)
    assert torch.equal(shared.weight, shared_after)
    assert opt.steps == 0


def test_the_right_number_of_passes_still_works_over_many_steps() -> None:
    model = make_model()
    opt = LayerwiseOptimizer(groups(model), GaLoreAdamW, accumulation_steps=2, lr=1e-2)
    for _ in range(3):
        for _ in range(2):
            (loss_of(model) / 2).backward()
        opt.step()
        opt.zero_grad()
    assert opt.steps == 3


# ---- load_state_dict checks ---------------------------------------------------------------------
def trained(model: nn.Module, cls=GaLoreAdamW, steps: int = 3, **kwargs) -> torch.optim.Optimizer:
    opt = cls(groups(model), lr=1e-2, **kwargs)
    for _ in range(steps):
        loss_of(model).backward()
        opt.step()
        opt.zero_grad()
    return opt


def assert_unchanged(opt: torch.optim.Optimizer, before: dict) -> None:
    after = opt.state_dict()
    assert after["param_groups"] == before["param_groups"]
    assert after["state"].keys() == before["state"].keys()
    for pid, pstate in before["state"].items():
        for key, value in pstate.items():
            other = after["state"][pid][key]
            assert torch.equal(other, value) if torch.is_tensor(value) else other == value


@pytest.mark.parametrize("cls", [GaLoreAdamW, GaLoreAdamW8bit, GaLoreAdafactor])
def test_a_state_dict_of_other_shapes_is_refused_and_changes_nothing(cls) -> None:
    source = trained(make_model(hidden=48), cls)
    target_model = make_model(hidden=40)
    target = trained(target_model, cls, steps=1)
    before = copy.deepcopy(target.state_dict())
    with pytest.raises(ValueError, match=r"0\.(weight|bias).*shape.*nothing was loaded"):
        target.load_state_dict(source.state_dict())
    assert_unchanged(target, before)
    loss_of(target_model).backward()
    target.step()  # still usable


def test_parameters_in_another_order_are_refused_by_name() -> None:
    source = trained(make_model())
    model = make_model()
    swapped = groups(model)
    for group in swapped:
        group["params"].reverse()
        group["param_names"].reverse()
    target = GaLoreAdamW(swapped, lr=1e-2)
    with pytest.raises(ValueError, match=r"parameter 0 of param group 0 is '2\.bias' here"):
        target.load_state_dict(source.state_dict())
    assert target.param_groups[0]["param_names"] == ["2.bias", "0.bias"]
    assert not target.state


def test_group_count_and_kind_are_checked() -> None:
    source = trained(make_model())
    model = make_model()
    one_group = GaLoreAdamW(list(model.parameters()), lr=1e-2)
    with pytest.raises(ValueError, match=r"2 param group.*this optimizer 1"):
        one_group.load_state_dict(source.state_dict())
    plain = groups(model)
    del plain[1]["rank"]
    with pytest.raises(ValueError, match="param group 1 is a plain group here"):
        GaLoreAdamW(plain, lr=1e-2).load_state_dict(source.state_dict())


def test_a_matching_state_dict_still_loads() -> None:
    model = make_model()
    source = trained(model)
    target = GaLoreAdamW(groups(model), lr=1e-2)
    target.load_state_dict(source.state_dict())
    assert set(target.state) == set(source.state)


# ---- NaN in plain groups --------------------------------------------------------------------
@pytest.mark.parametrize("cls", [GaLoreAdamW, GaLoreAdamW8bit, GaLoreAdafactor])
def test_a_nan_bias_gradient_raises_before_anything_is_updated(cls) -> None:
    model = make_model()
    opt = cls(groups(model), lr=1e-2)
    loss_of(model).backward()
    model[2].bias.grad[3] = float("nan")
    before = snapshot(model)
    with pytest.raises(NonFiniteGradientError, match=r"2\.bias has 1 non-finite"):
        opt.step()
    for p, q in zip(model.parameters(), before):
        assert torch.equal(p, q)


def test_a_nan_bias_gradient_is_skipped_and_counted_with_skip() -> None:
    model = make_model()
    opt = GaLoreAdamW(groups(model), lr=1e-2, on_nonfinite="skip")
    loss_of(model).backward()
    model[2].bias.grad[0] = float("inf")
    bias = model[2].bias.detach().clone()
    weight = model[2].weight.detach().clone()
    opt.step()
    assert torch.equal(model[2].bias, bias)
    assert not torch.equal(model[2].weight, weight)
    assert opt.state[model[2].bias]["nonfinite_skips"] == 1


def test_layerwise_checks_plain_parameters_too() -> None:
    model = make_model()
    opt = LayerwiseOptimizer(groups(model), GaLoreAdamW, lr=1e-2)
    model[2].bias.register_hook(lambda g: torch.full_like(g, float("nan")))
    bias = model[2].bias.detach().clone()
    with pytest.raises(NonFiniteGradientError, match=r"2\.bias"):
        loss_of(model).backward()
    assert torch.equal(model[2].bias, bias)
    assert opt.steps == 0


# ---- moments of bf16 parameters -------------------------------------------------------------
def spike_then_quiet(state_dtype, steps: int = 3000) -> float:
    """A bf16 weight that sees one large gradient and then small ones: exp_avg_sq after
    ``steps`` steps (float32 decays it by 0.999 per step, to ~5% of the spike's)."""
    w = nn.Parameter(torch.zeros(4, 4, dtype=torch.bfloat16))
    opt = GaLoreAdamW([w], lr=1e-3, state_dtype=state_dtype)
    for step in range(steps):
        w.grad = torch.full((4, 4), 10.0 if step == 0 else 1e-3, dtype=torch.bfloat16)
        opt.step()
    return float(opt.state[w]["exp_avg_sq"].float().mean())


def test_float32_moments_of_bf16_weights_decay_as_in_float32() -> None:
    expected = 0.001 * 100.0 * 0.999**2999 + 1e-6 * (1 - 0.999**2999)
    assert spike_then_quiet("float32") == pytest.approx(expected, rel=1e-3)
    # the reason for the option: in bf16, v·0.999 rounds back to v and the spike never decays
    assert spike_then_quiet(None) > 5 * expected


@pytest.mark.parametrize("cls", [GaLoreAdamW, GaLoreAdafactor])
def test_state_dtype_is_kept_through_steps_and_a_checkpoint(cls, tmp_path) -> None:
    model = make_model().to(torch.bfloat16)
    kwargs = {"lr": 1e-2} if cls is GaLoreAdamW else {"lr": 1e-2, "beta1": 0.9}
    opt = cls(groups(model), state_dtype=torch.float32, **kwargs)
    for _ in range(3):
        for p in model.parameters():
            p.grad = torch.randn_like(p)
        opt.step()
    moments = [v for s in opt.state.values() for k, v in s.items() if k.startswith("exp_avg")]
    assert moments and all(v.dtype == torch.float32 for v in moments)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert opt.param_groups[0]["state_dtype"] == "float32"
    torch.save(opt.state_dict(), tmp_path / "opt.pt")
    again = cls(groups(model), state_dtype="float32", **kwargs)
    again.load_state_dict(torch.load(tmp_path / "opt.pt", weights_only=True))
    moments = [v for s in again.state.values() for k, v in s.items() if k.startswith("exp_avg")]
    assert moments and all(v.dtype == torch.float32 for v in moments)


def test_8bit_refuses_a_state_dtype_and_bad_names_are_refused() -> None:
    model = make_model()
    with pytest.raises(ValueError, match="8-bit"):
        GaLoreAdamW8bit(groups(model), state_dtype="float32")
    with pytest.raises(ValueError, match=r"state_dtype must be None .* float32"):
        GaLoreAdamW(groups(model), state_dtype="float64")
    with pytest.raises(ValueError, match="unknown GaLore moments policy 'rotate'"):
        GaLoreAdamW([{**groups(model)[1], "moments": "rotate"}])


# ---- group keys and foreign state dicts -----------------------------------------------------
@pytest.mark.parametrize("cls", [GaLoreAdamW, GaLoreAdamW8bit, GaLoreAdafactor])
def test_an_unknown_group_key_is_refused_with_a_suggestion(cls) -> None:
    model = make_model()
    bad = groups(model)
    bad[1]["ranks"] = bad[1].pop("rank")
    with pytest.raises(ValueError, match=r"unknown param group key 'ranks'.*did you mean 'rank'"):
        cls(bad, lr=1e-2)


def test_a_scheduler_key_and_galore_keys_are_accepted() -> None:
    model = make_model()
    good = groups(model)
    good[1].update(svd="power", moments="project", stagger=True, scale=0.5, proj_type="left")
    good[0]["initial_lr"] = 1e-2
    opt = GaLoreAdamW(good, lr=1e-2, state_dtype=None)
    torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    assert opt.param_groups[1]["moments"] == "project"


def test_a_galore_torch_state_dict_is_refused_with_a_message() -> None:
    galore_torch = pytest.importorskip("galore_torch")  # the [reference] extra (CI installs it)
    model = make_model()
    theirs = galore_torch.GaLoreAdamW(
        [{"params": list(model.parameters())[:1], "rank": 4, "update_proj_gap": 2,
          "scale": 0.25, "proj_type": "std"}],
        lr=1e-2,
        no_deprecation_warning=True,
    )  # fmt: skip
    loss_of(model).backward()
    theirs.step()
    ours = GaLoreAdamW(
        [{"params": list(model.parameters())[:1], "rank": 4, "update_proj_gap": 2}], lr=1e-2
    )
    with pytest.raises(ValueError, match=r"galore-torch 1\.0 projector objects"):
        ours.load_state_dict(theirs.state_dict())
    assert not ours.state


def test_a_refused_load_of_an_unregistered_svd_method_changes_nothing() -> None:
    import functools

    from galorekit.projection import SVD_METHODS
    from galorekit.projection.randomized import SubspaceIterationConfig
    from galorekit.projection.svd import warm_svd

    SVD_METHODS["warm1"] = functools.partial(
        warm_svd, config=SubspaceIterationConfig(warm_max_iters=1)
    )
    try:
        model = make_model()
        custom = groups(model)
        custom[1]["svd"] = "warm1"
        source = GaLoreAdamW(custom, lr=1e-2)
        loss_of(model).backward()
        source.step()
        saved = source.state_dict()
    finally:
        del SVD_METHODS["warm1"]
    target = GaLoreAdamW(groups(make_model()), lr=1e-2)
    with pytest.raises(ValueError, match="unknown svd method 'warm1'"):
        target.load_state_dict(saved)
    assert not target.state and target.param_groups[1]["svd"] == "warm"


def test_an_fp16_projection_that_overflows_is_caught_by_step() -> None:
    w = nn.Parameter(torch.zeros(256, 128, dtype=torch.float16))
    opt = GaLoreAdamW([{"params": [w], "rank": 4, "update_proj_gap": 1, "svd": "exact"}])
    w.grad = torch.full((256, 128), 30000.0, dtype=torch.float16)  # finite; R = G·Q is not
    with pytest.raises(NonFiniteGradientError):
        opt.step()
    assert bool(torch.isfinite(w).all())


def test_layerwise_with_a_torch_optimizer_refuses_another_models_state() -> None:
    source_model, target_model = make_model(hidden=48), make_model(hidden=40)
    source = LayerwiseOptimizer(source_model.parameters(), torch.optim.AdamW, lr=1e-2)
    loss_of(source_model).backward()
    source.step()
    target = LayerwiseOptimizer(target_model.parameters(), torch.optim.AdamW, lr=1e-2)
    with pytest.raises(ValueError, match=r"0\.weight|shape .*another model"):
        target.load_state_dict(source.state_dict())
    assert not target._per_param
    other = LayerwiseOptimizer(
        source_model.parameters(), torch.optim.AdamW, accumulation_steps=4, lr=1e-2
    )
    with pytest.raises(ValueError, match="accumulation_steps=1, this LayerwiseOptimizer has 4"):
        other.load_state_dict(source.state_dict())


def test_an_8bit_group_may_say_state_dtype_none() -> None:
    model = make_model()
    group = {**groups(model)[1], "state_dtype": None}
    opt = GaLoreAdamW8bit([groups(model)[0], group], lr=1e-2)
    assert opt.param_groups[1]["state_dtype"] is None
    with pytest.raises(ValueError, match="8-bit codes"):
        GaLoreAdamW8bit([{**group, "state_dtype": "float32"}], lr=1e-2)
