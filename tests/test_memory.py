"""galorekit.memory: the estimate equals what real optimizers and real forwards hold, the paper's
7B numbers come out, and ``galore memory`` behaves (JSON, budgets, errors, plots, fit, measure)."""

from __future__ import annotations

import argparse
import json
import math
import warnings

import pytest
import torch

from galorekit.analysis import state_bytes as held_state_bytes
from galorekit.memory import cli as memory_cli
from galorekit.memory.activations import estimate_activations
from galorekit.memory.estimator import COMPONENTS, estimate, estimate_model
from galorekit.memory.fit import fit_budget
from galorekit.memory.model import build_optimizer, build_training_model
from galorekit.memory.setup import METHODS, PRECISIONS, TrainingSetup
from galorekit.memory.trackers import GradientTracker, SavedTensorTracker, allocator_peak
from galorekit.models.build import enable_activation_checkpointing
from galorekit.units import format_bytes, parse_size

VOCAB = 256
# llama_tiny: hidden 64, intermediate 176, 4 heads, 2 layers. Rank 32 makes some GaLore moments
# 8-bit (176×32 ≥ 4096 elements) and some float32 (64×32 < 4096): both 8-bit paths are exercised.
RANK = 32
OPTIMIZERS = (
    "adamw",
    "adamw8bit",
    "adafactor",
    "galore_adamw",
    "galore_adamw8bit",
    "galore_adafactor",
)


def _batch(seq: int = 16, batch: int = 2) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(0))


def _real_pretrain_run(method: str, precision: str, layerwise: bool, proj_type: str = "std"):
    """A real tiny model and optimizer built by galore pretrain's own code path, one step taken;
    returns (held optimizer-state bytes, peak live gradient bytes)."""
    from galorekit.methods import MethodConfig, setup
    from galorekit.models import build_model

    dtype = PRECISIONS[precision][0]
    model = build_model("llama_tiny", vocab_size=VOCAB, seed=0, dtype=dtype)
    cfg = MethodConfig(method=method, rank=RANK, layerwise=layerwise, proj_type=proj_type)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rank clamping of the tiny model's small matrices
        built = setup(model, cfg, total_steps=10)
    params = [p for p in built.model.parameters() if p.requires_grad]
    tracker = GradientTracker(params)
    ids = _batch()
    built.model(input_ids=ids, labels=ids).loss.backward()
    built.optimizer.step()
    grads = tracker.peak
    tracker.remove()
    built.optimizer.zero_grad(set_to_none=True)
    return held_state_bytes(built.optimizer), grads


# ---- optimizer states: exactly what the optimizers hold --------------------------------------------
@pytest.mark.parametrize("precision", ["fp32", "bf16-true"])
@pytest.mark.parametrize("method", [*OPTIMIZERS, "lora", "low_rank"])
def test_optimizer_state_bytes_equal_real_optimizer_after_a_step(method, precision):
    held, grads = _real_pretrain_run(method, precision, layerwise=False)
    est = estimate(
        "llama_tiny", TrainingSetup(method=method, rank=RANK, precision=precision), vocab_size=VOCAB
    )
    assert est.optimizer_states == held
    assert est.gradients == grads


@pytest.mark.parametrize("method", OPTIMIZERS)
def test_layerwise_state_bytes_equal_and_one_gradient_at_a_time(method):
    """The layer-wise wrapper keeps the same state; gradients: the largest single one."""
    setup = TrainingSetup(method=method, rank=RANK, precision="fp32", layerwise=True)
    built = build_training_model("llama_tiny", setup, vocab_size=VOCAB, device="cpu", seed=0)
    params = [p for p in built.model.parameters() if p.requires_grad]
    tracker = GradientTracker(params)  # registered first: sees each gradient before it is freed
    opt = build_optimizer(built.model, built.setup)
    assert type(opt).__name__ == "LayerwiseOptimizer"
    ids = _batch()
    built.model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    est = estimate("llama_tiny", setup, vocab_size=VOCAB)
    assert est.optimizer_states == held_state_bytes(opt)
    assert est.gradients == tracker.peak == max(p.numel() * 4 for p in params)
    assert all(p.grad is None for p in params)


def test_layerwise_with_accumulation_holds_every_gradient_between_micro_batches():
    setup = TrainingSetup(
        method="galore_adamw", rank=RANK, precision="fp32", layerwise=True, accumulation_steps=2
    )
    built = build_training_model("llama_tiny", setup, vocab_size=VOCAB, device="cpu", seed=0)
    params = [p for p in built.model.parameters() if p.requires_grad]
    tracker = GradientTracker(params)
    opt = build_optimizer(built.model, built.setup)
    for _ in range(2):
        ids = _batch()
        (built.model(input_ids=ids, labels=ids).loss / 2).backward()
    opt.step()
    est = estimate("llama_tiny", setup, vocab_size=VOCAB)
    assert est.gradients == tracker.peak == sum(p.numel() * 4 for p in params)
    assert est.optimizer_states == held_state_bytes(opt)


def test_tied_embeddings_counted_once(make_tiny_llama):
    """A model with tied input/output embeddings: every component equals a real step's."""
    model = make_tiny_llama(tie_word_embeddings=True)
    setup = TrainingSetup(method="galore_adamw", rank=8, precision="fp32", batch_size=2, seq_len=16)
    est = estimate_model(model, setup)
    params = list({id(p): p for p in model.parameters()}.values())
    assert est.weights == sum(p.numel() * 4 for p in params) + sum(
        b.numel() * b.element_size() for b in model.buffers()
    )
    grads = GradientTracker(params)
    opt = build_optimizer(model, setup)
    ids = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    with SavedTensorTracker(exclude=params) as saved:
        model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    assert est.gradients == grads.peak
    assert est.optimizer_states == held_state_bytes(opt)
    assert est.activations == saved.peak


@pytest.mark.parametrize("proj_type", ["reverse_std", "left", "right", "full"])
def test_projection_type_changes_state_shapes_exactly(proj_type):
    held, _ = _real_pretrain_run("galore_adamw8bit", "fp32", layerwise=False, proj_type=proj_type)
    est = estimate(
        "llama_tiny",
        TrainingSetup(method="galore_adamw8bit", rank=RANK, precision="fp32", proj_type=proj_type),
        vocab_size=VOCAB,
    )
    assert est.optimizer_states == held


@pytest.mark.parametrize("precision", ["fp32", "bf16-true"])
def test_every_svd_method_stores_projectors_of_exactly_r_rows(precision):
    """A projector that were a view of the whole SVD factor would hold more than r×n: refresh
    every step (update_proj_gap=1) with each method, 'warm' starting from the previous one."""
    from galorekit.models import build_model, default_target_modules
    from galorekit.optim import create_optimizer
    from galorekit.projection import SVD_METHODS

    setup = TrainingSetup(method="galore_adamw", rank=8, precision=precision)
    expected = estimate("llama_tiny", setup, vocab_size=VOCAB).optimizer_states
    for svd in SVD_METHODS:
        model = build_model("llama_tiny", vocab_size=VOCAB, seed=0, dtype=setup.param_dtype)
        opt = create_optimizer(
            model,
            "galore_adamw",
            lr=1e-3,
            rank=8,
            svd=svd,
            update_proj_gap=1,
            target_modules=default_target_modules(model),
        )
        for _ in range(2):
            ids = _batch()
            model(input_ids=ids, labels=ids).loss.backward()
            opt.step()
            opt.zero_grad()
        assert held_state_bytes(opt) == expected, svd


def test_states_count_projectors_and_shared_8bit_maps_once():
    est = estimate(
        "llama_tiny",
        TrainingSetup(method="galore_adamw8bit", rank=RANK, precision="fp32"),
        vocab_size=VOCAB,
    )
    qmaps = [t for t in est.state_tensors if t.key.startswith("qmap")]
    assert len(qmaps) > 2  # every 8-bit parameter refers to the maps ...
    shared_bytes = sum({t.shared: t.nbytes for t in qmaps}.values())
    assert shared_bytes == 2 * 256 * 4  # ... counted once: two 256-entry float32 maps
    # projectors: for std, m >= n projects right (r x n); 7 matrices per layer, 2 layers
    proj = [t for t in est.state_tensors if t.is_projector]
    assert len(proj) == 14 and est.projectors == sum(t.nbytes for t in proj)


def test_rank_above_matrix_size_is_clamped_and_reported():
    est = estimate(
        "llama_tiny",
        TrainingSetup(method="galore_adamw", rank=100, precision="fp32"),
        vocab_size=VOCAB,
    )
    # hidden 64 < 100: every matrix has min(m, n) = 64, so all 14 are clamped
    assert est.clamped_matrices == 14
    full = estimate(
        "llama_tiny",
        TrainingSetup(method="galore_adamw", rank=64, precision="fp32"),
        vocab_size=VOCAB,
    )
    assert est.optimizer_states == full.optimizer_states


# ---- activations: the formula against saved-tensor measurements ---------------------------------
def _measure_saved(model, setup: TrainingSetup) -> int:
    model.train()
    if setup.activation_checkpointing:
        # reentrant: its recomputation passes through the hooks (non-reentrant keeps the same
        # tensors but hides them behind its own hooks)
        enable_activation_checkpointing(model, reentrant=True)
    ids = _batch(setup.seq_len, setup.batch_size)
    ac = setup.autocast_dtype
    params = list(model.parameters())
    with SavedTensorTracker(exclude=params) as tracker:
        with torch.autocast("cpu", dtype=ac or torch.bfloat16, enabled=ac is not None):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
    return tracker.peak


ACT_CASES = [
    # (method, precision, attention, checkpointing)
    *[
        ("galore_adamw", p, a, c)
        for p in ("fp32", "bf16-true", "bf16-mixed")
        for a in ("sdpa", "eager")
        for c in (False, True)
    ],
    ("lora", "fp32", "sdpa", False),
    (
        "lora",
        "bf16-true",
        "sdpa",
        False,
    ),  # peft keeps float32 adapters: cast copies of their inputs
    ("lora", "bf16-mixed", "eager", True),
    ("low_rank", "fp32", "sdpa", False),
    ("low_rank", "bf16-mixed", "sdpa", True),
]


@pytest.mark.parametrize(("method", "precision", "attn", "ckpt"), ACT_CASES)
def test_activation_formula_equals_measured_saved_tensors(method, precision, attn, ckpt):
    """Tolerance: none — the formula counts every saved storage, so the bytes are equal."""
    setup = TrainingSetup(
        method=method,
        rank=8,
        precision=precision,
        attn_implementation=attn,
        activation_checkpointing=ckpt,
        batch_size=2,
        seq_len=24,
    )
    built = build_training_model("llama_tiny", setup, vocab_size=VOCAB, device="cpu", seed=0)
    estimated = estimate_activations(built.model, built.setup).total
    assert estimated == _measure_saved(built.model, built.setup)


@pytest.mark.parametrize("ckpt", [False, True])
def test_activation_formula_gqa_and_frozen_embeddings(ckpt):
    """Grouped-query attention, and peft-style LoRA with everything but the adapters frozen."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from galorekit.methods.adapters import apply_lora

    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_hidden_layers=2,
    )
    torch.manual_seed(0)
    model = apply_lora(
        LlamaForCausalLM(config),
        rank=4,
        alpha=8,
        train_non_targeted=False,
        target_modules=["q_proj", "v_proj"],
    )
    setup = TrainingSetup(
        method="lora",
        rank=4,
        precision="fp32",
        batch_size=2,
        seq_len=16,
        activation_checkpointing=ckpt,
    )
    assert estimate_activations(model, setup).total == _measure_saved(model, setup)


def test_activation_formula_matches_the_documented_closed_form():
    """Pure bf16, SDPA, all weights trained: 24Th + 8Tf + 8T + 4aT per layer (module docstring)."""
    setup = TrainingSetup(method="adamw", precision="bf16-true", batch_size=2, seq_len=256)
    built = build_training_model("llama_60m", setup, device="meta")
    act = estimate_activations(built.model, setup)
    T, h, f, a = 512, 512, 1376, 8
    assert act.layers == [24 * T * h + 8 * T * f + 8 * T + 4 * a * T] * 8
    d, V = h // a, 32000
    assert act.shared == 2 * 256 * d * 2
    # token ids, final norm (4Th + 4T + 2Th), lm_head input 2Th, log-softmax, labels, weight
    assert act.head == 8 * T + (4 * T * h + 4 * T + 2 * T * h) + 2 * T * h + 4 * T * V + 8 * T + 4
    ckpt = estimate_activations(built.model, setup.with_(activation_checkpointing=True))
    kept = 8 * T * h * 2  # every layer's bf16 input
    assert ckpt.checkpointed_inputs == kept
    # peak: the kept inputs plus the larger of the head and one recomputed layer (token ids live
    # throughout backward)
    assert ckpt.total == act.shared + max(kept + act.head, kept + 8 * T + act.layers[0])


# ---- the paper's 7B story ------------------------------------------------------------------------
def test_7b_bf16_adamw_near_58gb_and_8bit_galore_layerwise_near_22gb():
    """Paper (Fig. 1, §5.5): BF16 AdamW ≈ 58 GB = 14 weights + 42 states & gradients + 2
    activations; 8-bit GaLore with layer-wise updates ≈ 22.0 GB (token batch 256). Bounds: ±10%
    of the totals (the paper rounds nominal 7B counts), components within ±1.5 GB."""
    base = TrainingSetup(precision="bf16-true", batch_size=1, seq_len=256, rank=1024)
    adam = estimate("llama_7b", base.with_(method="adamw"))
    galore = estimate("llama_7b", base.with_(method="galore_adamw8bit", layerwise=True))
    gb = 1e9
    assert 52 * gb <= adam.total <= 62 * gb
    assert abs(adam.weights - 14 * gb) < 1.5 * gb
    assert abs(adam.gradients + adam.optimizer_states - 42 * gb) < 2.5 * gb
    assert gb <= adam.activations <= 3 * gb
    assert 19.8 * gb <= galore.total <= 24.2 * gb
    assert galore.gradients < 0.5 * gb  # one gradient at a time: the 32000×4096 embedding
    saving = 1 - galore.total / adam.total
    assert 0.55 <= saving <= 0.70  # paper: 63.3%


# ---- units and budgets ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("24GB", 24 * 10**9),
        ("24 GB", 24 * 10**9),
        ("24gb", 24 * 10**9),
        ("24GiB", 24 * 2**30),
        ("24000MB", 24 * 10**9),
        ("24G", 24 * 2**30),
        ("1.5TB", 15 * 10**11),
        ("512MiB", 512 * 2**20),
        ("1000", 1000),
    ],
)
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "GB", "24 gigs", "-3GB", "0GB", "24GBs", "2 4GB"])
def test_parse_size_rejects_garbage_naming_the_formats(text):
    with pytest.raises(ValueError, match="24GiB"):
        parse_size(text)


def test_format_bytes():
    assert format_bytes(13_476_831_744, "GB") == "13.48 GB"
    assert format_bytes(2**30, "GiB") == "1.00 GiB"
    with pytest.raises(ValueError, match="valid"):
        format_bytes(1, "furlongs")


# ---- fit mode -------------------------------------------------------------------------------------
def test_fit_finds_the_largest_batch_within_the_budget():
    base = TrainingSetup(precision="fp32", seq_len=32)
    budget = 3 * 10**6
    rows = fit_budget(
        "llama_tiny",
        budget,
        base,
        methods=("adamw", "galore_adamw"),
        ranks=(16, 32),
        vocab_size=VOCAB,
    )
    assert {r.method for r in rows} == {"adamw", "galore_adamw"}
    assert {r.rank for r in rows if r.method == "galore_adamw"} == {16, 32}
    fitting = [r for r in rows if r.fits]
    assert fitting
    for r in fitting:
        setup = base.with_(
            method=r.method,
            rank=r.rank,
            layerwise=r.layerwise,
            activation_checkpointing=r.activation_checkpointing,
        )
        at = estimate("llama_tiny", setup.with_(batch_size=r.max_batch_size), vocab_size=VOCAB)
        over = estimate(
            "llama_tiny", setup.with_(batch_size=r.max_batch_size + 1), vocab_size=VOCAB
        )
        assert at.total == r.total_at_max <= budget < over.total
    # checkpointing never lowers the largest batch
    by = {(r.method, r.rank, r.layerwise, r.activation_checkpointing): r for r in rows}
    for (m, rk, lw, ck), r in by.items():
        if not ck:
            assert by[(m, rk, lw, True)].max_batch_size >= r.max_batch_size


# ---- the CLI --------------------------------------------------------------------------------------
def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    memory_cli.add_arguments(parser)
    return parser.parse_args(list(argv))


TINY = ("--model", "llama_tiny", "--vocab-size", str(VOCAB))


def test_torch_free_names_match_the_library():
    """``galorekit.memory.names`` holds torch-free copies for the parser: they must agree with
    the originals, and the parser must offer exactly them."""
    from galorekit.memory import names
    from galorekit.names import METHODS as PRETRAIN_METHODS
    from galorekit.projection import PROJ_TYPES

    assert names.METHODS == PRETRAIN_METHODS == METHODS
    assert names.PROJ_TYPES == PROJ_TYPES
    assert set(PRECISIONS) == set(names.PRECISION_DTYPES)
    parser = argparse.ArgumentParser()
    memory_cli.add_arguments(parser)
    choices = {a.dest: a.choices for a in parser._actions if a.choices is not None}
    assert tuple(choices["proj_type"]) == PROJ_TYPES
    assert set(choices["precision"]) == set(PRECISIONS)
    # the one vocabulary: pretrain's --precision names mean the same here
    from galorekit.config import PRECISIONS as TRAINED

    assert set(TRAINED) <= set(PRECISIONS)
    assert tuple(choices["attn_implementation"]) == ("sdpa", "eager")


def test_cli_json_has_the_five_byte_counts(capsys):
    code = memory_cli.run(
        _args(
            *TINY,
            "--method",
            "galore_adamw8bit",
            "--layerwise",
            "--rank",
            "16",
            "--precision",
            "bf16-true",
            "--json",
        )
    )
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data) == {"weights", "gradients", "optimizer_states", "activations", "total"}
    assert all(isinstance(v, int) and v > 0 for v in data.values())
    assert data["total"] == sum(data[k] for k in COMPONENTS)


def test_cli_breakdown_table(capsys):
    code = memory_cli.run(
        _args(
            *TINY,
            "--method",
            "galore_adamw",
            "--rank",
            "16",
            "--activation-checkpointing",
            "--unit",
            "KB",
        )
    )
    out = capsys.readouterr().out
    assert code == 0
    for row in (
        "Weights",
        "Weight gradients",
        "Optimizer states",
        "of which projectors",
        "Activations",
        "Total",
    ):
        assert row in out
    assert "activation checkpointing" in out and " KB" in out


def test_cli_compare_and_plot_write_a_png(tmp_path, capsys):
    png = tmp_path / "fig" / "memory.png"
    code = memory_cli.run(_args(*TINY, "--compare", "--rank", "16", "--plot", str(png)))
    out = capsys.readouterr().out
    assert code == 0
    for method in METHODS:
        assert method in out
    assert "(layer-wise)" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in png.parent.iterdir() if p.name.startswith(".")]  # no temp left


def test_cli_compare_with_a_budget_lists_what_fits(capsys):
    argv = (*TINY, "--compare", "--rank", "16", "--precision", "fp32", "--seq-len", "32")
    argv += ("--budget", "1.5MB")
    assert memory_cli.run(_args(*argv)) == 0
    line = capsys.readouterr().out.split("within 1.50 MB:")[1]
    assert "galore_adamw8bit r16 (layer-wise)" in line and "adamw," not in line


def test_cli_detail_lists_saved_tensors_and_state_kinds(capsys):
    argv = (*TINY, "--method", "galore_adamw8bit", "--rank", str(RANK), "--detail")
    assert memory_cli.run(_args(*argv)) == 0
    out = capsys.readouterr().out
    for name in (
        "sdpa log-sum-exp",
        "SiLU out",
        "log-softmax (float32)",
        "RoPE cos, sin",
        "proj_right",
        "absmax1",
        "qmap1",
    ):
        assert name in out


def test_cli_module_imports_no_torch_for_help():
    """``galore --help`` builds every sub-parser: ours must not import torch."""
    import subprocess
    import sys

    code = (
        "import argparse, sys; import galorekit.memory.cli as c; "
        "c.add_arguments(argparse.ArgumentParser()); print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_cli_compare_json_keys_every_configuration(capsys):
    assert memory_cli.run(_args(*TINY, "--compare", "--rank", "16", "--json")) == 0
    data = json.loads(capsys.readouterr().out)
    assert "adamw" in data and "galore_adamw8bit r16 (layer-wise)" in data and "lora r16" in data
    assert data["adamw (layer-wise)"]["gradients"] < data["adamw"]["gradients"]


def test_cli_fit_mode(capsys):
    argv = (*TINY, "--budget", "1.5MB", "--precision", "fp32", "--seq-len", "32", "--ranks", "16")
    code = memory_cli.run(_args(*argv))
    out = capsys.readouterr().out
    assert code == 0
    assert "max batch" in out and "galore_adamw8bit r16 (layer-wise)" in out
    # full-rank AdamW needs 2.1 MB for weights, gradients and states alone
    failing = out.split("do not fit even at batch size 1:")[1]
    assert "adamw (needs" in failing
    code = memory_cli.run(_args(*TINY, "--budget", "1.5MB", "--method", "adamw8bit", "--json"))
    data = json.loads(capsys.readouterr().out)
    assert code == 0 and data["budget"] == 1_500_000
    assert {c["method"] for c in data["configurations"]} == {"adamw8bit"}
    assert len(data["configurations"]) == 4  # ordinary / layer-wise, with / without checkpointing


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("--model", "llama_8b"), "llama_7b"),  # unknown model: lists the named configs
        (("--model", "llama_tiny", "--method", "sgd"), "galore_adamw8bit"),  # lists methods
        (("--model", "llama_tiny", "--budget", "lots"), "24GiB"),  # lists the size formats
        (("--model", "llama_tiny", "--method", "lora", "--layerwise"), "optimizer methods"),
        (("--model", "llama_tiny", "--measure", "--compare"), "not with --compare"),
        (("--model", "llama_tiny", "--compare", "--plot", "out.pdf"), ".png"),
        (("--model", "llama_tiny", "--ranks", "a,b", "--budget", "1GB"), "integers"),
    ],
)
def test_cli_bad_input_gives_a_clear_message(argv, message, capsys):
    assert memory_cli.run(_args(*argv)) == 2
    err = capsys.readouterr().err
    assert "galore memory: error:" in err and message in err


def test_cli_unknown_method_lists_valid_choices_through_the_parser(capsys):
    # the lead's `galore` parser passes --method through; run() validates it
    args = _args("--model", "llama_tiny")
    args.method = "adam"
    assert memory_cli.run(args) == 2
    err = capsys.readouterr().err
    assert all(m in err for m in METHODS)


@pytest.mark.parametrize(
    ("device", "says"),
    [
        ("tpu", "unknown --device 'tpu'"),
        ("xpu", "is not supported"),
        ("cuda:7", "no CUDA device"),
        ("mps", "MPS"),
        ("cpu:1", "no index"),
    ],
)
def test_cli_measure_refuses_a_device_it_cannot_measure(monkeypatch, capsys, device, says):
    """The training commands' resolver and messages (CUDA and MPS reported missing here)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    code = memory_cli.run(_args(*TINY, "--method", "adamw", "--measure", "--device", device))
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("galore memory: error: ") and says in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("flag", ["--json", "--plot"])
def test_cli_refuses_an_output_path_it_cannot_write(tmp_path, capsys, flag):
    (tmp_path / "taken.png").mkdir()
    code = memory_cli.run(_args(*TINY, flag, str(tmp_path / "taken.png")))
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"galore memory: error: {flag} ") and "directory" in err


def test_cli_measure_refuses_when_the_estimate_exceeds_free_memory(monkeypatch, capsys):
    import galorekit.memory.measure as measure_mod

    monkeypatch.setattr(measure_mod, "available_memory", lambda device: 10**6)
    code = memory_cli.run(
        _args(*TINY, "--method", "adamw", "--precision", "fp32", "--measure", "--device", "cpu")
    )
    assert code == 1
    assert "refusing to measure" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_measure_reports_measured_beside_estimate(capsys):
    """A real run: every component measured equals the estimate exactly; the allocator's peak is
    reported with its difference (it includes transients the summed estimate leaves out)."""
    code = memory_cli.run(
        _args(
            *TINY,
            "--method",
            "galore_adamw",
            "--rank",
            "16",
            "--precision",
            "fp32",
            "--batch-size",
            "2",
            "--seq-len",
            "32",
            "--measure",
            "--measure-steps",
            "2",
            "--device",
            "cpu",
            "--json",
        )
    )
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    for key in COMPONENTS:
        assert data["measured"][key] == data["estimate"][key], key
        assert data["difference"][key] == 0
    peak, total = data["measured"]["peak"], data["estimate"]["total"]
    assert data["difference"]["peak_minus_total"] == peak - total
    # the peak holds at least weights + states + the larger of gradients and activations
    m = data["measured"]
    assert peak >= m["weights"] + m["optimizer_states"] + max(m["gradients"], m["activations"])
    assert math.isclose(peak, total, rel_tol=0.5)


@pytest.mark.slow
def test_measure_table_for_lora_with_checkpointing(capsys):
    code = memory_cli.run(
        _args(
            *TINY,
            "--method",
            "lora",
            "--rank",
            "8",
            "--precision",
            "fp32",
            "--activation-checkpointing",
            "--measure",
            "--measure-steps",
            "1",
            "--device",
            "cpu",
            "--unit",
            "KB",
        )
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "measured" in out and "Total / measured peak" in out


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["bf16-mixed", "bf16-true"])
def test_measure_model_components_equal_the_estimate(precision):
    from galorekit.memory.measure import measure_model

    setup = TrainingSetup(
        method="galore_adamw8bit",
        rank=RANK,
        precision=precision,
        batch_size=2,
        seq_len=16,
        activation_checkpointing=True,
    )
    built = build_training_model("llama_tiny", setup, vocab_size=VOCAB, device="cpu", seed=0)
    est = estimate_model(built.model, built.setup)
    meas = measure_model(built.model, built.setup, steps=2)
    assert [getattr(meas, k) for k in COMPONENTS] == [getattr(est, k) for k in COMPONENTS]
    assert meas.peak >= meas.weights + meas.optimizer_states + meas.activations


def test_estimate_model_reads_a_prepared_module_without_side_effects():
    setup = TrainingSetup(method="galore_adamw", rank=16, precision="fp32", layerwise=True)
    built = build_training_model("llama_tiny", setup, vocab_size=VOCAB, device="cpu", seed=0)
    est = estimate_model(built.model, built.setup)
    assert est.total > 0
    # no backward hooks were left behind: a backward keeps every gradient
    ids = _batch()
    built.model(input_ids=ids, labels=ids).loss.backward()
    assert all(p.grad is not None for p in built.model.parameters() if p.requires_grad)


@pytest.mark.parametrize(
    ("cls", "state_dtype"),
    [("GaLoreAdamW", "float32"), ("GaLoreAdamW", None), ("GaLoreAdafactor", "bfloat16")],
)
def test_state_dtype_and_kernels_are_counted_exactly(cls, state_dtype) -> None:
    """The estimator's state layout follows ``state_dtype`` and projects a kernel as its
    out × rest unfolding, byte for byte what the optimizer holds after a step."""
    import galorekit
    from galorekit.memory.optimizer_states import optimizer_state_tensors, total_bytes

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3), torch.nn.Flatten(), torch.nn.Linear(16 * 6 * 6, 32)
    ).to(torch.bfloat16)
    groups = [
        {"params": [model[0].bias, model[2].bias]},
        {"params": [model[0].weight, model[2].weight], "rank": 4},
    ]
    extra = {"lr": 1e-3} if cls == "GaLoreAdamW" else {"lr": 1e-3, "beta1": 0.9}
    opt = getattr(galorekit, cls)(groups, state_dtype=state_dtype, **extra)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    assert total_bytes(optimizer_state_tensors(opt)) == held_state_bytes(opt)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("--dtype", "bf16"), "use --precision"),
        (("--precision", "bf16"), "invalid choice"),
    ],
)
def test_old_precision_spellings_are_refused(argv, message, capsys) -> None:
    from galorekit.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["memory", *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_the_python_api_refuses_an_old_precision_with_its_new_name() -> None:
    with pytest.raises(ValueError, match="'bf16' is now 'bf16-true'"):
        TrainingSetup(precision="bf16")


def test_memory_counts_state_dtype() -> None:
    base = TrainingSetup(method="galore_adamw", rank=16, precision="bf16-true", seq_len=32)
    plain = estimate("llama_tiny", base, vocab_size=VOCAB).optimizer_states
    wide = estimate("llama_tiny", base.with_(state_dtype="float32"), vocab_size=VOCAB)
    # the moments double (2 → 4 bytes each), the projectors stay bf16
    assert plain < wide.optimizer_states < 2 * plain


def test_cpu_allocator_peak_counts_only_what_the_steps_allocate() -> None:
    """What earlier measurements left behind is not this one's peak: the profiler's running total
    keeps tensors allocated under an earlier profile and freed after it (an optimizer's states),
    and the same function must measure the same whatever was measured or is held before."""

    def work() -> None:
        a = torch.empty(2**20, dtype=torch.float32)  # 4 MiB
        b = torch.empty(2**19, dtype=torch.float32)  # 2 MiB, while a is alive
        del a, b

    kept: list[torch.Tensor] = []
    first = allocator_peak(lambda: kept.append(torch.empty(2**24)), "cpu")  # 64 MiB, kept
    assert first >= 64 * 2**20
    kept.clear()  # freed outside any measurement
    alone = allocator_peak(work, "cpu")
    held = torch.ones(2**24, dtype=torch.float32)  # 64 MiB alive during the next measurement
    beside = allocator_peak(work, "cpu")
    assert held.sum() > 0
    assert alone == beside
    assert 6 * 2**20 <= alone < 7 * 2**20
