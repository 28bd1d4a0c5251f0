"""galorekit.param_groups on a tiny LLaMA: which matrices go to GaLore, and that training runs."""

from __future__ import annotations

import re
import warnings

import pytest
import torch
from torch import nn

from galorekit import GaLoreAdafactor, GaLoreAdamW, GaLoreAdamW8bit, param_groups
from galorekit.projection import Side

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ATTENTION = {"q_proj", "k_proj", "v_proj", "o_proj"}
GALORE_NAMES = {
    f"model.layers.{layer}.{'self_attn' if proj in ATTENTION else 'mlp'}.{proj}.weight"
    for layer in (0, 1)
    for proj in PROJECTIONS
}


def names_of(group: dict) -> list[str]:
    assert len(group["param_names"]) == len(group["params"])
    return list(group["param_names"])


def check_names_match_params(model: nn.Module, groups: list[dict]) -> None:
    by_name = dict(model.named_parameters())
    for group in groups:
        for name, p in zip(group["param_names"], group["params"]):
            assert by_name[name] is p, f"param_names out of step with params at {name}"


def test_default_targets_are_the_attention_and_mlp_projections(make_tiny_llama) -> None:
    model = make_tiny_llama()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no per-module warning flood
        plain, galore = param_groups(model, rank=8, update_proj_gap=50, scale=0.5, proj_type="left")
    check_names_match_params(model, [plain, galore])
    assert set(names_of(galore)) == GALORE_NAMES
    assert len(galore["params"]) == 14
    all_names = {n for n, _ in model.named_parameters()}
    assert set(names_of(plain)) == all_names - GALORE_NAMES
    assert {"model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"} <= set(
        names_of(plain)
    )
    assert all(
        "layernorm" in n or "embed" in n or "lm_head" in n or n == "model.norm.weight"
        for n in names_of(plain)
    )
    assert (galore["rank"], galore["update_proj_gap"], galore["scale"], galore["proj_type"]) == (
        8,
        50,
        0.5,
        "left",
    )
    assert "rank" not in plain


def test_tied_embeddings_appear_once_in_the_plain_group(make_tiny_llama) -> None:
    model = make_tiny_llama(tie_word_embeddings=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    plain, galore = param_groups(model)
    assert set(names_of(galore)) == GALORE_NAMES
    plain_ids = [id(p) for p in plain["params"]]
    assert len(plain_ids) == len(set(plain_ids))
    assert id(model.lm_head.weight) in plain_ids


@pytest.mark.parametrize(
    ("target_modules", "expected"),
    [
        (["q_proj", "v_proj"], {n for n in GALORE_NAMES if "q_proj" in n or "v_proj" in n}),
        (("mlp.up_proj", "down_proj"), {n for n in GALORE_NAMES if "up_" in n or "down_" in n}),
        (r".*\.mlp\..*", {n for n in GALORE_NAMES if ".mlp." in n}),
        (r".*layers\.1\..*_proj", {n for n in GALORE_NAMES if "layers.1." in n}),
        (r".*(k|o)_proj", {n for n in GALORE_NAMES if "k_proj" in n or "o_proj" in n}),
        ("all-linear", GALORE_NAMES),  # still without lm_head (and embeddings are not Linear)
    ],
    ids=["list", "tuple-suffixes", "regex-mlp", "regex-layer1", "regex-alternation", "all-linear"],
)
def test_target_modules(make_tiny_llama, target_modules, expected: set[str]) -> None:
    model = make_tiny_llama()
    plain, galore = param_groups(model, target_modules=target_modules)
    assert set(names_of(galore)) == expected
    assert set(names_of(plain)) == {n for n, _ in model.named_parameters()} - expected
    assert "lm_head.weight" in names_of(plain)


def test_all_linear_without_output_head_or_plain_params() -> None:
    """A model whose only parameters are GaLore matrices gets an empty (but valid) plain group."""
    model = nn.Sequential(nn.Linear(8, 16, bias=False), nn.ReLU(), nn.Linear(16, 8, bias=False))
    plain, galore = param_groups(model, rank=4, target_modules="all-linear")
    assert plain["params"] == [] and names_of(galore) == ["0.weight", "2.weight"]
    opt = GaLoreAdamW([plain, galore], lr=0.01)
    model(torch.randn(4, 8)).pow(2).mean().backward()
    opt.step()
    assert opt.state[model[0].weight]["step"] == 1


@pytest.mark.parametrize(
    ("target_modules", "match"),
    [
        (["attention_is_all_you_need"], r"matches no nn\.Linear.*q_proj"),
        (r"^transformer\.h\.\d+", "matches no"),
        (["mlp"], "LlamaMLP.*cannot be targeted"),  # the former substring spelling
        ("q_proj", "did you mean.*q_proj"),  # a string is a full-match regex now
        ("(unclosed", "regular expression"),
        ([], "non-empty list"),
        (["q_proj", 3], "list of non-empty strings"),
    ],
    ids=[
        "no-match-list",
        "no-match-regex",
        "container",
        "regex-is-full-match",
        "bad-regex",
        "empty",
        "not-strings",
    ],
)
def test_bad_target_modules(make_tiny_llama, target_modules, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        param_groups(make_tiny_llama(), target_modules=target_modules)


def test_the_output_head_is_a_target_only_when_named(make_tiny_llama) -> None:
    """As in peft: "all-linear" and the default leave the head out, a name selects it."""
    model = make_tiny_llama()
    _, galore = param_groups(model, target_modules=["lm_head"])
    assert names_of(galore) == ["lm_head.weight"]
    _, galore = param_groups(model, target_modules="all-linear", exclude_modules=["q_proj"])
    assert "lm_head.weight" not in names_of(galore) and len(names_of(galore)) == 12


def test_frozen_parameters_are_left_out(make_tiny_llama) -> None:
    model = make_tiny_llama()
    frozen = model.model.layers[0].self_attn.q_proj.weight
    frozen.requires_grad_(False)
    model.model.norm.weight.requires_grad_(False)
    plain, galore = param_groups(model)
    every = [id(p) for p in plain["params"] + galore["params"]]
    assert id(frozen) not in every and id(model.model.norm.weight) not in every
    assert len(galore["params"]) == 13


@pytest.mark.parametrize(
    "cls", [GaLoreAdamW, GaLoreAdamW8bit, GaLoreAdafactor], ids=lambda c: c.__name__
)
def test_training_a_tiny_llama_with_param_groups(cls, make_tiny_llama) -> None:
    model = make_tiny_llama()
    groups = param_groups(model, rank=8, update_proj_gap=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # rank 8 < every min(m, n): no clamp warning
        opt = cls(groups, lr=1e-3)
        tokens = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
        losses = []
        for _ in range(3):
            loss = model(input_ids=tokens, labels=tokens).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert losses[-1] < losses[0]
    layer = model.model.layers[0]
    expected_sides = {
        layer.self_attn.q_proj.weight: (Side.RIGHT, "proj_right", (8, 32)),  # 32×32: tie → right
        layer.mlp.gate_proj.weight: (Side.RIGHT, "proj_right", (8, 32)),  # 64×32
        layer.mlp.down_proj.weight: (Side.LEFT, "proj_left", (32, 8)),  # 32×64
    }
    for p, (side, key, shape) in expected_sides.items():
        state = opt.state[p]
        assert state["proj_side"] == side and state[key].shape == shape
        assert state["step"] == 3 and state["proj_refresh_step"] == 2
    for name, p in zip(groups[0]["param_names"], groups[0]["params"]):
        state = opt.state[p]
        assert not any(re.match("proj_", k) for k in state), f"{name} must not be projected"
