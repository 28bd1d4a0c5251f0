"""GaLore's successors as group options: what each stores, that it resumes exactly, layer-wise
equals step(), the memory estimate equals what is held, validation, and the method rows."""

from __future__ import annotations

import io
import warnings

import pytest
import torch
from torch import nn

from galorekit import GaLoreAdafactor, GaLoreAdamW, GaLoreAdamW8bit, LayerwiseOptimizer
from galorekit.analysis import state_bytes
from galorekit.memory.optimizer_states import optimizer_state_tensors, total_bytes
from galorekit.projection import Side
from galorekit.projection.quantize import dequantize, quantize
from galorekit.projection.random import gaussian_projector, orthonormal_projector

#: one configuration per successor (and the two combined where they combine)
SUCCESSORS = {
    "fira": {"residual": "fira"},
    "apollo": {"projection": "random", "scaling": "channel", "scale": 1.0},
    "apollo_mini": {"projection": "random", "scaling": "tensor", "rank": 1, "scale": 11.3},
    "q_galore": {"projector_bits": 4, "lazy_refresh": True},
    "golore": {"random_after": 4},
    "fira_int8_lazy": {"residual": "fira", "projector_bits": 8, "lazy_refresh": True},
}
CLASSES = [GaLoreAdamW, GaLoreAdamW8bit]


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    # both projections (600×8 on the right, 8×600 on the left) have ≥ 4096 elements: 8-bit codes
    return nn.Sequential(nn.Linear(40, 600), nn.Tanh(), nn.Linear(600, 24))


def groups(model: nn.Module, **options) -> list[dict]:
    return [
        {"params": [model[0].bias, model[2].bias]},
        {
            "params": [model[0].weight, model[2].weight],
            "rank": 8,
            "update_proj_gap": 3,
            **options,
        },
    ]


def data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(64, 40, generator=g), torch.randn(64, 24, generator=g)


def train(model: nn.Module, opt, steps: int) -> list[float]:
    x, y = data()
    losses = []
    for _ in range(steps):
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(loss.detach()))
    return losses


def max_diff(a: nn.Module, b: nn.Module) -> float:
    return max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize("name", list(SUCCESSORS))
@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_trains_and_differs_from_galore(name, cls) -> None:
    base = make_model()
    train(base, cls(groups(base), lr=1e-2), 8)
    model = make_model()
    losses = train(model, cls(groups(model, **SUCCESSORS[name]), lr=1e-2), 8)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]
    assert max_diff(base, model) > 1e-5  # the option changed the trajectory


@pytest.mark.parametrize("name", list(SUCCESSORS))
@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_checkpoint_resumes_bit_identically(name, cls) -> None:
    straight = make_model()
    opt = cls(groups(straight, **SUCCESSORS[name]), lr=1e-2)
    train(straight, opt, 5)
    buffer = io.BytesIO()
    torch.save({"model": straight.state_dict(), "opt": opt.state_dict()}, buffer)
    train(straight, opt, 5)

    saved = torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)
    resumed = make_model(seed=1)
    resumed.load_state_dict(saved["model"])
    opt2 = cls(groups(resumed, **SUCCESSORS[name]), lr=1e-2)
    opt2.load_state_dict(saved["opt"])
    train(resumed, opt2, 5)
    assert max_diff(straight, resumed) == 0.0


@pytest.mark.parametrize("name", ["fira", "apollo", "q_galore", "golore"])
@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_layerwise_equals_step(name, cls) -> None:
    ordinary, layerwise = make_model(), make_model()
    train(ordinary, cls(groups(ordinary, **SUCCESSORS[name]), lr=1e-2), 6)
    train(layerwise, LayerwiseOptimizer(groups(layerwise, **SUCCESSORS[name]), cls, lr=1e-2), 6)
    assert max_diff(ordinary, layerwise) < 1e-6


#: Adafactor takes the projection options only (it refuses Fira's and APOLLO's: tested below)
ESTIMATE_CASES = [(name, cls) for name in SUCCESSORS for cls in CLASSES] + [
    (name, GaLoreAdafactor) for name in ("q_galore", "golore")
]


@pytest.mark.parametrize(
    ("name", "cls"), ESTIMATE_CASES, ids=[f"{c.__name__}-{n}" for n, c in ESTIMATE_CASES]
)
def test_state_estimate_equals_held_bytes(name, cls) -> None:
    options = SUCCESSORS[name]
    model = make_model()
    opt = cls(groups(model, **options), lr=1e-2)
    estimate = total_bytes(optimizer_state_tensors(opt))
    train(model, opt, 1)
    assert state_bytes(opt) == estimate


def test_random_projection_stores_a_seed_and_regenerates_the_same_matrix() -> None:
    model = make_model()
    opt = GaLoreAdamW(groups(model, **SUCCESSORS["apollo"]), lr=1e-2)
    train(model, opt, 4)  # refreshes before steps 1 and 4
    first, second = (opt.state[model[i].weight] for i in (0, 2))
    for state in (first, second):
        assert not any(k.startswith(("proj_left", "proj_right")) for k in state)
    assert first["proj_seed"] != second["proj_seed"]  # each matrix draws its own
    view = opt.projection(model[0].weight)
    # 600×40: a right projection, Qᵀ 8×40 with N(0, 1/8) entries, drawn again from the seed
    assert view.side == Side.RIGHT and view.refresh_due  # APOLLO reads the full gradient
    again = gaussian_projector(
        (600, 40), 8, Side.RIGHT, first["proj_seed"], device="cpu", dtype=torch.float32
    )
    torch.testing.assert_close(view.right, again[1], rtol=0, atol=0)


def test_golore_switches_to_random_orthonormal_bases_at_random_after() -> None:
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(40, 24))
    opt = GaLoreAdamW(
        [{"params": [w], "rank": 4, "update_proj_gap": 2, "random_after": 4}], lr=1e-3
    )
    g = torch.Generator().manual_seed(3)
    grads = [torch.randn(40, 4, generator=g) @ torch.randn(4, 24, generator=g) for _ in range(6)]
    captured = []
    for grad in grads:
        w.grad = grad
        opt.step()
        captured.append(opt.state[w]["proj_right"].clone())
    # before step 4 the refreshes span the (rank-4) gradient's row space exactly
    row_space = torch.linalg.svd(grads[2], full_matrices=False)[2][:4]
    assert torch.linalg.matrix_norm(captured[2] @ row_space.t(), ord=2) > 0.999
    # from step 4 on: orthonormal, and not the gradient's subspace
    q = captured[4]
    torch.testing.assert_close(q @ q.t(), torch.eye(4), rtol=0, atol=1e-5)
    row_space = torch.linalg.svd(grads[4], full_matrices=False)[2][:4]
    assert torch.linalg.svdvals(q @ row_space.t()).min() < 0.99


def test_orthonormal_projector_is_orthonormal_and_seeded() -> None:
    left, _ = orthonormal_projector((50, 30), 6, Side.LEFT, 11, device="cpu", dtype=torch.float32)
    torch.testing.assert_close(left.t() @ left, torch.eye(6), rtol=0, atol=1e-5)
    again, _ = orthonormal_projector((50, 30), 6, Side.LEFT, 11, device="cpu", dtype=torch.float32)
    other, _ = orthonormal_projector((50, 30), 6, Side.LEFT, 12, device="cpu", dtype=torch.float32)
    assert torch.equal(left, again) and not torch.equal(left, other)


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("numel", [256 * 3, 1000, 7])
def test_quantized_projector_round_trip(bits, numel) -> None:
    g = torch.Generator().manual_seed(0)
    values = torch.randn(numel, generator=g)
    codes, absmax = quantize(values, bits, 256)
    assert codes.dtype == torch.uint8 and codes.numel() == (-(-numel // 2) if bits == 4 else numel)
    assert absmax.numel() == -(-numel // 256)
    back = dequantize(codes, absmax, (numel,), bits, 256, torch.float32)
    levels = (1 << (bits - 1)) - 1
    bound = absmax.repeat_interleave(256)[:numel] / levels / 2  # half a quantization step
    assert bool(((back - values).abs() <= bound + 1e-6).all())
    assert torch.equal(back.abs().max(), values.abs().max())  # each block's absmax is exact


def test_int4_projector_state_is_an_eighth_of_float32() -> None:
    model = make_model()
    opt = GaLoreAdamW(groups(model, projector_bits=4), lr=1e-2)
    train(model, opt, 1)
    state = opt.state[model[0].weight]  # 600×40: Qᵀ 8×40 = 320 values → 160 bytes + 2 absmax
    assert state["proj_right_codes"].numel() == 160 and state["proj_right_absmax"].numel() == 2
    assert "proj_right" not in state


def _lazy_run(steady: bool) -> dict:
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(40, 24))
    opt = GaLoreAdamW(
        [{"params": [w], "rank": 2, "update_proj_gap": 2, "lazy_refresh": True, "svd": "exact"}],
        lr=1e-3,
    )
    g = torch.Generator().manual_seed(5)
    fixed = torch.randn(40, 2, generator=g) @ torch.randn(2, 24, generator=g)
    refreshes = []
    for step in range(24):
        w.grad = (
            fixed + 0.01 * torch.randn(40, 24, generator=g)
            if steady
            else torch.randn(40, 24, generator=g)
        )
        opt.step()
        if opt.state[w]["proj_refresh_step"] == step:
            refreshes.append(step)
    return {"state": opt.state[w], "refreshes": refreshes}


def test_lazy_refresh_doubles_the_period_of_a_steady_subspace() -> None:
    steady = _lazy_run(steady=True)
    # refreshes at 0, 2, 4, 6, 8, 10 (five checks, all similar) → the period doubles to 4
    assert steady["refreshes"][:7] == [0, 2, 4, 6, 8, 10, 14]
    assert steady["state"]["proj_gap"] >= 4
    noisy = _lazy_run(steady=False)  # unrelated gradients: the subspace jumps, T stays
    assert noisy["refreshes"] == list(range(0, 24, 2)) and noisy["state"]["proj_gap"] == 2


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"residual": "lora"}, "residual must be one of None, 'fira'"),
        ({"projection": "gaussian"}, "projection must be one of 'svd', 'random'"),
        ({"scaling": "row"}, "scaling must be one of None, 'channel', 'tensor'"),
        ({"projector_bits": 2}, "projector_bits must be one of None, 4, 8"),
        ({"lazy_refresh": 1}, "lazy_refresh must be True or False"),
        ({"norm_growth_limit": 0.5}, "norm_growth_limit must be None"),
        ({"random_after": -1}, "random_after must be None or a step count"),
        ({"residual": "fira", "scaling": "tensor"}, "set one of them"),
        ({"projection": "random", "projector_bits": 4}, "projector_bits=4 needs projection='svd'"),
        ({"projection": "random", "lazy_refresh": True}, "lazy_refresh=True needs projection"),
        ({"projection": "random", "moments": "project"}, "needs an orthonormal basis"),
        ({"residuals": "fira"}, "did you mean 'residual'"),
    ],
)
def test_bad_options_are_refused_clearly(options, message) -> None:
    model = make_model()
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        GaLoreAdamW(groups(model, **options), lr=1e-2)


def test_random_projection_keeps_its_moments_by_default() -> None:
    opt = GaLoreAdamW(groups(make_model(), projection="random"), lr=1e-2)
    assert opt.param_groups[1]["moments"] == "keep"


@pytest.mark.parametrize("option", [{"residual": "fira"}, {"scaling": "channel"}])
def test_adafactor_refuses_fira_and_apollo(option) -> None:
    with pytest.raises(ValueError, match="defined on Adam's update"):
        GaLoreAdafactor(groups(make_model(), **option), lr=1e-2)


def test_checkpoint_of_another_rank_is_refused_for_quantized_projectors() -> None:
    model = make_model()
    opt = GaLoreAdamW(groups(model, projector_bits=4), lr=1e-2)
    train(model, opt, 1)
    other = make_model()
    opt2 = GaLoreAdamW([{**g} for g in groups(other, projector_bits=4)], lr=1e-2)
    opt2.param_groups[1]["rank"] = 4
    saved = opt.state_dict()
    saved["param_groups"][1]["rank"] = 4  # the state's codes are of rank 8
    with pytest.raises(ValueError, match="proj_right_codes"):
        opt2.load_state_dict(saved)


def test_method_rows_set_their_options() -> None:
    from galorekit.methods import MethodConfig

    assert MethodConfig(method="fira_adamw").galore_group(32)["residual"] == "fira"
    apollo = MethodConfig(method="apollo_adamw").galore_group(32)
    assert (apollo["projection"], apollo["scaling"], apollo["scale"], apollo["moments"]) == (
        "random",
        "channel",
        1.0,
        "keep",
    )
    mini = MethodConfig(method="apollo_mini", rank=32).galore_group(32)
    assert mini["rank"] == 1 and mini["scaling"] == "tensor" and mini["scale"] == 128**0.5
    assert MethodConfig(method="apollo_mini", scale=2.0).galore_group(1)["scale"] == 2.0
    q = MethodConfig(method="q_galore_adamw8bit").galore_group(32)
    assert q["projector_bits"] == 4 and q["lazy_refresh"] is True
    golore = MethodConfig(method="golore_adamw").galore_group(32, total_steps=400)
    assert golore["random_after"] == 320
    assert "random_after" not in MethodConfig(method="golore_adamw").galore_group(32)
    plain = MethodConfig().galore_group(32)
    assert not {"residual", "projection", "scaling", "projector_bits"} & plain.keys()
    with pytest.raises(ValueError, match="unknown scaling"):
        MethodConfig(method="galore_adamw", scaling="rows")
    with pytest.raises(ValueError, match="random_after is a fraction"):
        MethodConfig(method="golore_adamw", random_after=320)


def test_create_optimizer_by_successor_name(make_tiny_llama) -> None:
    from galorekit.optim import create_optimizer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt = create_optimizer(make_tiny_llama(), "apollo_mini", lr=1e-2, rank=8)
    galore = next(g for g in opt.param_groups if "rank" in g)
    assert galore["rank"] == 1 and galore["projection"] == "random"
    assert galore["scaling"] == "tensor" and galore["scale"] == 128**0.5
    opt = create_optimizer(make_tiny_llama(), "galore_adamw", lr=1e-2, rank=8, residual="fira")
    assert next(g for g in opt.param_groups if "rank" in g)["residual"] == "fira"
    with pytest.raises(ValueError, match="not a GaLore method"):
        create_optimizer(make_tiny_llama(), "adamw", lr=1e-2, residual="fira")


def test_successor_options_on_a_method_without_galore_are_refused() -> None:
    from galorekit.methods import MethodConfig

    with pytest.raises(ValueError, match="residual: options of galorekit's GaLore methods"):
        MethodConfig(method="adamw", residual="fira")
    with pytest.raises(ValueError, match="not of galore_torch_adamw"):
        MethodConfig(method="galore_torch_adamw", projector_bits=4)


def test_bench_times_the_successors() -> None:
    from galorekit.bench.config import build_config
    from galorekit.bench.timing import _make_optimizers

    cfg = build_config({"model": "60m", "successors": "apollo_mini,golore_adamw", "svd": "warm"})
    params = [nn.Parameter(torch.zeros(64, 48))]
    optimizers = _make_optimizers(params, cfg, gap=5)
    mini = optimizers["apollo_mini"].param_groups[0]
    assert (mini["rank"], mini["projection"], mini["scaling"]) == (1, "random", "tensor")
    assert optimizers["golore_adamw"].param_groups[0]["random_after"] == 0  # its late phase
    with pytest.raises(ValueError, match="unknown successor method"):
        build_config({"model": "60m", "successors": "lion"})


def test_readme_successors_example_runs() -> None:
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("### GaLore's successors") :]
    block = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)
    w = namespace["w"]
    assert namespace["fira"].state[w]["step"] == 1 and "limiter_norm" in namespace["fira"].state[w]
    assert "proj_seed" in namespace["apollo"].state[w]
    assert "proj_right_codes" in namespace["q_galore"].state[w]


@pytest.mark.parametrize(
    ("options", "full"),
    [
        ({}, False),
        ({"random_after": 0}, False),  # GoLore's bases are orthonormal: R survives P·R
        ({"residual": "fira"}, True),
        ({"projection": "random"}, True),  # Gaussian: PᵀP ≠ I
        ({"projector_bits": 4}, True),  # quantized: PᵀP ≈ I only
    ],
)
def test_projection_view_asks_for_the_full_gradient_where_projecting_first_is_wrong(
    options, full
) -> None:
    """Low-rank communication sends P·R̄ between refreshes only where the optimizer's own
    projection gives back R̄ exactly (and where its update does not read G)."""
    model = make_model()
    opt = GaLoreAdamW(groups(model, **options), lr=1e-2)
    train(model, opt, 1)
    view = opt.projection(model[0].weight)
    assert view.refresh_due is full


def test_galore_own_values_are_accepted_on_any_method() -> None:
    """A run's config.json records the resolved values (projection 'svd', lazy_refresh False):
    resuming it under another method must not read them as successor options."""
    from galorekit.methods import MethodConfig

    cfg = MethodConfig(method="adamw", projection="svd", lazy_refresh=False, moments="project")
    assert cfg.projection == "svd"


def test_memory_names_apollo_minis_own_rank(capsys):
    from galorekit.cli import main

    assert main(["memory", "--model", "llama_60m", "--method", "apollo_mini", "--rank", "64"]) == 0
    out = capsys.readouterr().out
    assert "rank 1, apollo_mini's own" in out and "hidden_size // 4" not in out
