"""Baselines: LoRA (peft), ReLoRA (merge-and-reinit, optimizer pruning, jagged LR), Low-Rank."""

from __future__ import annotations

import functools
import math

import bitsandbytes as bnb
import pytest
import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from transformers.optimization import Adafactor

from galorekit.methods.adapters import (
    LowRankLinear,
    ReLoRA,
    apply_lora,
    apply_low_rank,
    lora_parameters,
    merge_low_rank,
    prune_optimizer_state,
    relora_lr_lambda,
    resolve_target_modules,
)
from galorekit.models import build_model, count_parameters, default_target_modules

VOCAB = 256
HIDDEN = 64  # llama_tiny: hidden 64, intermediate 176, 4 heads, 2 layers


def tiny(seed: int = 0) -> nn.Module:
    return build_model("llama_tiny", vocab_size=VOCAB, seed=seed)


@pytest.fixture
def batch() -> torch.Tensor:
    return torch.randint(0, VOCAB, (4, 16), generator=torch.Generator().manual_seed(0))


def train_steps(model, batch, params, steps: int, lr: float = 1e-2) -> list[float]:
    opt = torch.optim.AdamW(params, lr=lr)
    losses = []
    for _ in range(steps):
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


# --------------------------------------------------------------------------- targets


def test_target_module_specs():
    model = tiny()
    default = default_target_modules(model)
    assert resolve_target_modules(model) == default
    assert resolve_target_modules(model, r".*\.(self_attn|mlp)\..*") == default
    assert resolve_target_modules(model, "all-linear") == default  # lm_head is never a target
    assert resolve_target_modules(model, ["q_proj", "v_proj"]) == [
        n for n in default if n.endswith(("q_proj", "v_proj"))
    ]
    assert resolve_target_modules(model, r".*layers\.1\..*proj") == default[7:]


@pytest.mark.parametrize("spec", [["nonexistent"], "no_match_regex", ["q_proj", "attention_xyz"]])
def test_targets_matching_nothing_list_the_linear_layers(spec):
    with pytest.raises(ValueError) as err:
        resolve_target_modules(tiny(), spec)
    msg = str(err.value)
    assert "match" in msg and all(leaf in msg for leaf in ("q_proj", "down_proj", "gate_proj"))


@pytest.mark.parametrize("spec", [[], [""], "(unclosed"])
def test_malformed_target_specs(spec):
    with pytest.raises(ValueError, match="target_modules"):
        resolve_target_modules(tiny(), spec)


# --------------------------------------------------------------------------- LoRA


def test_lora_adapters_only(batch):
    model = apply_lora(tiny(), rank=4, alpha=8, train_non_targeted=False)
    names_trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names_trainable and all(".lora_A." in n or ".lora_B." in n for n in names_trainable)
    assert len(names_trainable) == 2 * 14  # A and B on 7 projections x 2 layers
    before = snapshot(model)
    train_steps(model, batch, trainable(model), steps=2)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == names_trainable


def test_lora_pretraining_baseline_freezes_only_the_targeted_weights(batch):
    model = apply_lora(tiny(), rank=4, alpha=8)  # the paper's setting: train_non_targeted=True
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert len(frozen) == 14
    assert all(n.endswith(".base_layer.weight") for n in frozen)
    assert any("embed_tokens" in n for n, p in model.named_parameters() if p.requires_grad)
    before = snapshot(model)
    train_steps(model, batch, trainable(model), steps=2)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed.isdisjoint(frozen)
    assert any("lora_A" in n for n in changed) and any("lm_head" in n for n in changed)


def test_lora_starts_as_the_base_model_and_counts(batch):
    base = tiny()
    base.eval()
    with torch.no_grad():
        expected = base(input_ids=batch).logits
    n_base = count_parameters(base)
    model = apply_lora(base, rank=4, alpha=8)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(input_ids=batch).logits, expected)  # B = 0 at init
    layers = default_target_modules(tiny())
    shapes = {"gate_proj": (64, 176), "up_proj": (64, 176), "down_proj": (176, 64)}
    added = sum(4 * sum(shapes.get(n.rsplit(".", 1)[1], (64, 64))) for n in layers)
    assert count_parameters(model) == n_base + added
    assert sum(p.numel() for p in lora_parameters(model)) == added


def test_lora_on_selected_modules_only():
    model = apply_lora(tiny(), rank=2, alpha=4, target_modules=["q_proj", "v_proj"])
    adapted = {n.split(".lora_A")[0] for n, _ in model.named_parameters() if ".lora_A." in n}
    assert len(adapted) == 4 and all(n.endswith(("q_proj", "v_proj")) for n in adapted)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rank": 0, "alpha": 8}, "positive"),
        ({"rank": -3, "alpha": 8}, "positive"),
        ({"rank": 64, "alpha": 8}, "largest valid rank for these target modules is 63"),
        ({"rank": 4, "alpha": 0}, "alpha"),
        ({"rank": 4, "alpha": 8, "dropout": 1.0}, "dropout"),
        ({"rank": 4, "alpha": 8, "target_modules": ["qkv"]}, "q_proj"),
    ],
)
def test_lora_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        apply_lora(tiny(), **kwargs)


def test_lora_twice_is_refused():
    model = apply_lora(tiny(), rank=2, alpha=4)
    with pytest.raises(ValueError, match="already has LoRA"):
        apply_lora(model, rank=2, alpha=4)


# --------------------------------------------------------------------------- ReLoRA


def test_relora_merge_and_reinit_keeps_outputs(batch):
    relora = ReLoRA(tiny(), rank=4, alpha=8, reset_every=3)
    model = relora.model
    train_steps(model, batch, trainable(model), steps=3)  # make B != 0
    b_params = [p for n, p in model.named_parameters() if ".lora_B." in n]
    a_params = [p for n, p in model.named_parameters() if ".lora_A." in n]
    assert all(p.abs().sum() > 0 for p in b_params)
    a_before = [p.detach().clone() for p in a_params]
    base_before = {n: p.detach().clone() for n, p in model.named_parameters() if "base_layer" in n}
    model.eval()
    with torch.no_grad():
        logits_before = model(input_ids=batch).logits
        relora.merge_and_reinit()
        logits_after = model(input_ids=batch).logits
    torch.testing.assert_close(logits_after, logits_before, rtol=1e-5, atol=1e-5)
    assert all(torch.equal(p, torch.zeros_like(p)) for p in b_params)  # B = 0 as in LoRA init
    assert all(not torch.equal(p, a) and p.abs().sum() > 0 for p, a in zip(a_params, a_before))
    assert all(
        not torch.equal(p, base_before[n]) for n, p in model.named_parameters() if n in base_before
    )


def test_relora_resets_on_schedule_and_prunes_adapter_states(batch):
    relora = ReLoRA(tiny(), rank=4, alpha=8, reset_every=2, optimizer_reset_prune=0.99)
    model = relora.model
    opt = torch.optim.AdamW(trainable(model), lr=1e-2)
    lora = lora_parameters(model)
    lora_ids = {id(p) for p in lora}
    others = [p for p in trainable(model) if id(p) not in lora_ids]
    resets = []
    for step in range(1, 5):
        model(input_ids=batch, labels=batch).loss.backward()
        opt.step()
        opt.zero_grad()
        other_states = [opt.state[p]["exp_avg"].clone() for p in others]
        resets.append(relora.maybe_reset(step, opt))
        if resets[-1]:
            for p in lora:
                m, v = opt.state[p]["exp_avg"], opt.state[p]["exp_avg_sq"]
                # floor(0.99 n) of each state's n entries become zero ...
                assert (m == 0).sum() >= math.floor(0.99 * m.numel())
                assert (v == 0).sum() >= math.floor(0.99 * v.numel())
                # ... the same entries in both moments: no momentum left without its variance
                assert not ((m != 0) & (v == 0)).any()
            assert all(
                torch.equal(opt.state[p]["exp_avg"], s) for p, s in zip(others, other_states)
            )
    assert resets == [False, True, False, True]
    assert relora.num_resets == 2
    assert not relora.maybe_reset(4, opt)  # same step again: no second reset
    restored = ReLoRA(tiny(), rank=4, alpha=8, reset_every=2)
    restored.load_state_dict(relora.state_dict())
    assert restored.state_dict() == {"num_resets": 2, "last_reset_step": 4}


@pytest.mark.slow
def test_relora_training_lowers_the_loss_across_resets(batch):
    relora = ReLoRA(tiny(), rank=4, alpha=8, reset_every=4, rewarmup_steps=1)
    model = relora.model
    opt = torch.optim.AdamW(trainable(model), lr=1e-2)
    sched = LambdaLR(opt, relora.lr_lambda(warmup=2, total=12))
    losses = []
    for step in range(1, 13):
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()
        relora.maybe_reset(step, opt)
        losses.append(loss.item())
    assert relora.num_resets == 3
    # a reset must not undo progress (it did when the moments were pruned unpaired)
    assert losses[-1] < losses[0] - 2.0
    assert max(losses[4:]) < losses[3]


def test_jagged_schedule_values():
    lam = functools.partial(
        relora_lr_lambda, warmup=10, total=100, reset_every=25, rewarmup=5, min_ratio=0.1
    )

    def base(s):
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - 10) / 90))

    assert lam(0) == 0.0 and lam(5) == pytest.approx(0.5)
    assert lam(10) == pytest.approx(1.0)
    assert lam(24) == pytest.approx(base(24))
    for reset in (25, 50, 75):
        assert lam(reset) == 0.0
        ramp = [lam(reset + i) for i in range(6)]
        assert ramp == sorted(ramp)
        assert lam(reset + 2) == pytest.approx(2 / 5 * base(reset + 5))
        assert lam(reset + 5) == pytest.approx(base(reset + 5))
    assert lam(99) == pytest.approx(base(99))
    assert lam(110) == pytest.approx(0.1) and lam(130) == pytest.approx(0.1)  # held at the floor
    # no re-warm-up requested: the base curve throughout
    assert relora_lr_lambda(50, warmup=10, total=100, reset_every=25, rewarmup=0) == pytest.approx(
        base(50)
    )


def test_first_step_after_a_reset_runs_at_zero_lr(batch):
    relora = ReLoRA(tiny(), rank=2, alpha=4, reset_every=3, rewarmup_steps=2)
    opt = torch.optim.SGD(trainable(relora.model), lr=0.1)
    sched = LambdaLR(opt, relora.lr_lambda(warmup=1, total=12))
    lrs = []
    for step in range(1, 8):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
        relora.maybe_reset(step, opt)
    assert lrs[3] == 0.0 and lrs[6] == 0.0  # steps 4 and 7 follow the resets after 3 and 6
    assert 0 < lrs[4] < lrs[5]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"warmup": -1, "total": 10, "reset_every": 5, "rewarmup": 1},
        {"warmup": 1, "total": 0, "reset_every": 5, "rewarmup": 1},
        {"warmup": 1, "total": 10, "reset_every": 0, "rewarmup": 0},
        {"warmup": 1, "total": 10, "reset_every": 5, "rewarmup": 5},
        {"warmup": 1, "total": 10, "reset_every": 5, "rewarmup": 1, "min_ratio": 1.5},
    ],
)
def test_jagged_schedule_bad_input(kwargs):
    with pytest.raises(ValueError):
        relora_lr_lambda(3, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"reset_every": None}, "required"),
        ({"reset_every": 0}, "reset_every"),
        ({"reset_every": 10, "rewarmup_steps": 10}, "rewarmup_steps"),
        ({"reset_every": 10, "optimizer_reset_prune": 1.5}, "optimizer_reset_prune"),
        ({"reset_every": 10, "rank": 0}, "positive"),
        ({"reset_every": 10, "rank": 100}, "largest valid rank"),
        ({"reset_every": 10, "target_modules": ["nothing"]}, "q_proj"),
    ],
)
def test_relora_bad_input(kwargs, match):
    args = {"rank": 4, "alpha": 8, **kwargs}
    with pytest.raises(ValueError, match=match):
        ReLoRA(tiny(), **args)


def test_relora_default_rewarmup():
    assert ReLoRA(tiny(), rank=2, alpha=4, reset_every=5000).rewarmup_steps == 100
    assert ReLoRA(tiny(), rank=2, alpha=4, reset_every=20).rewarmup_steps == 1


# --------------------------------------------------------------------------- optimizer pruning


def _adam_with_state(shape=(10, 10), seed=0):
    p = nn.Parameter(torch.randn(shape, generator=torch.Generator().manual_seed(seed)))
    opt = torch.optim.AdamW([p], lr=1e-3)
    p.grad = torch.randn(shape, generator=torch.Generator().manual_seed(seed + 1))
    opt.step()
    return p, opt


def test_magnitude_pruning_keeps_the_largest_entries():
    p, opt = _adam_with_state()
    m = opt.state[p]["exp_avg"].clone()
    v = opt.state[p]["exp_avg_sq"].clone()
    step = opt.state[p]["step"].clone()
    frac = prune_optimizer_state(opt, [p], 0.9)
    pruned_m, pruned_v = opt.state[p]["exp_avg"], opt.state[p]["exp_avg_sq"]
    kept = pruned_m != 0
    assert kept.sum() == 10 and frac == pytest.approx(0.9)
    assert torch.equal(pruned_m[kept], m[kept])
    assert m[~kept].abs().max() < m[kept].abs().min()  # the largest first moments survive
    assert torch.equal(pruned_v != 0, kept)  # ... with their second moments, unchanged
    assert torch.equal(pruned_v[kept], v[kept])
    assert torch.equal(opt.state[p]["step"], step)


def test_pruning_ratios_zero_and_one():
    p, opt = _adam_with_state()
    m = opt.state[p]["exp_avg"].clone()
    assert prune_optimizer_state(opt, [p], 0.0) == 0.0
    assert torch.equal(opt.state[p]["exp_avg"], m)
    assert prune_optimizer_state(opt, [p], 1.0) == 1.0
    assert not opt.state[p]["exp_avg"].any() and not opt.state[p]["exp_avg_sq"].any()


def test_pruning_bad_input():
    p, opt = _adam_with_state()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        prune_optimizer_state(opt, [p], 1.5)
    stranger = nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match="not in AdamW's param_groups"):
        prune_optimizer_state(opt, [stranger], 0.5)
    fresh = nn.Parameter(torch.zeros(3))
    opt2 = torch.optim.AdamW([fresh])
    assert prune_optimizer_state(opt2, [fresh], 0.5) == 0.0  # no state yet: nothing to prune


def test_pruning_refuses_factored_states():
    p = nn.Parameter(torch.randn(8, 8))
    opt = Adafactor([p], lr=1e-3, relative_step=False, scale_parameter=False)
    p.grad = torch.randn(8, 8)
    opt.step()
    with pytest.raises(ValueError, match="exp_avg_sq_row"):
        prune_optimizer_state(opt, [p], 0.99)


def test_pruning_bitsandbytes_8bit_states_in_the_code_domain():
    p = nn.Parameter(torch.randn(64, 128, generator=torch.Generator().manual_seed(0)))
    small = nn.Parameter(torch.randn(16))  # below bnb's 8-bit threshold: 32-bit states
    opt = bnb.optim.AdamW8bit([p, small], lr=1e-3)
    p.grad = torch.randn(64, 128, generator=torch.Generator().manual_seed(1))
    small.grad = torch.randn(16)
    opt.step()
    state = opt.state[p]
    assert state["state1"].dtype == torch.uint8
    codes = state["state1"].clone()
    codes2_before = state["state2"].clone().reshape(-1)
    scale = state["absmax1"].repeat_interleave(codes.numel() // state["absmax1"].numel())
    values = state["qmap1"][codes.reshape(-1).long()] * scale
    prune_optimizer_state(opt, [p, small], 0.99)
    zero_code = int(state["qmap1"].abs().argmin())
    after = state["state1"].reshape(-1)
    kept = after != zero_code
    assert 0 < kept.sum() <= math.ceil(0.01 * codes.numel())
    assert torch.equal(after[kept], codes.reshape(-1)[kept])  # survivors bit-exact
    assert values[kept].abs().min() >= values[~kept].abs().max()
    codes2 = state["state2"].reshape(-1)
    assert torch.equal(codes2 != int(state["qmap2"].abs().argmin()), kept)  # paired moments
    assert torch.equal(codes2[kept], codes2_before[kept])
    assert (opt.state[small]["state1"] == 0).sum() >= 15


# --------------------------------------------------------------------------- Low-Rank


def test_low_rank_replaces_targets_with_factors():
    model = tiny()
    dense_total = count_parameters(model)
    targets = default_target_modules(model)
    shapes = {}
    for name, module in model.named_modules():
        if name in targets:
            shapes[name] = (module.in_features, module.out_features)
    apply_low_rank(model, rank=8)
    modules = dict(model.named_modules())
    for name, (n_in, n_out) in shapes.items():
        layer = modules[name]
        assert isinstance(layer, LowRankLinear)
        assert layer.A.shape == (8, n_in) and layer.B.shape == (n_out, 8)
    removed = sum(i * o for i, o in shapes.values())
    added = sum(8 * (i + o) for i, o in shapes.values())
    assert count_parameters(model) == dense_total - removed + added
    assert all(p.requires_grad for p in model.parameters())
    assert isinstance(model.lm_head, nn.Linear)  # untouched


def test_low_rank_init_matches_the_dense_init_scale():
    layer = LowRankLinear(1024, 1024, 32, init_std=0.02)
    assert layer.dense_weight().std().item() == pytest.approx(0.02, rel=0.1)
    assert layer.A.std().item() == pytest.approx(layer.B.std().item(), rel=0.1)


def test_low_rank_training_reduces_the_loss(batch):
    model = apply_low_rank(tiny(), rank=8)
    losses = train_steps(model, batch, list(model.parameters()), steps=8)
    assert losses[-1] < losses[0] - 1.0


def test_low_rank_merge_back_to_dense(batch):
    model = apply_low_rank(tiny(), rank=8)
    model.eval()
    with torch.no_grad():
        expected = model(input_ids=batch).logits
        merge_low_rank(model)
        got = model(input_ids=batch).logits
    assert not any(isinstance(m, LowRankLinear) for m in model.modules())
    assert isinstance(model.model.layers[0].mlp.down_proj, nn.Linear)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_low_rank_on_meta():
    model = build_model("llama_60m", device="meta")
    apply_low_rank(model, rank=128)
    q = model.model.layers[0].self_attn.q_proj
    assert isinstance(q, LowRankLinear) and q.A.device.type == "meta"
    assert count_parameters(model) < count_parameters(build_model("llama_60m", device="meta"))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rank": 0}, "positive"),
        ({"rank": 64}, "largest valid rank for these target modules is 63"),
        ({"rank": 8, "target_modules": ["nope"]}, "q_proj"),
        ({"rank": 8, "init_std": 0.0}, "init_std"),
    ],
)
def test_low_rank_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        apply_low_rank(tiny(), **kwargs)
