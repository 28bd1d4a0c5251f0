"""``galore memory`` flags each change what is estimated or measured (each test fails if its flag
is ignored), and the fit search honours the target modules and walks each model once."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from galorekit.memory import cli as memory_cli
from galorekit.memory import fit as fit_mod
from galorekit.memory.estimator import estimate
from galorekit.memory.fit import fit_budget
from galorekit.memory.measure import Measurement
from galorekit.memory.model import build_training_model
from galorekit.memory.setup import TrainingSetup

VOCAB = 256
TINY = ("--model", "llama_tiny", "--vocab-size", str(VOCAB))
BASE = ("--rank", "16", "--precision", "fp32", "--seq-len", "32")


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    memory_cli.add_arguments(parser)
    return parser.parse_args(list(argv))


def _json(capsys: pytest.CaptureFixture, *argv: str) -> dict:
    assert memory_cli.run(_args(*TINY, *BASE, "--json", *argv)) == 0
    return json.loads(capsys.readouterr().out)


def _expected(**setup) -> dict:
    base = {"rank": 16, "precision": "fp32", "seq_len": 32, **setup}
    return estimate("llama_tiny", TrainingSetup(**base), vocab_size=VOCAB).as_dict()


def test_optimizer_is_an_alias_of_method(capsys):
    got = _json(capsys, "--optimizer", "adamw8bit")
    assert got == _expected(method="adamw8bit")
    assert (
        got["optimizer_states"] != _json(capsys, "--optimizer", "galore_adamw")["optimizer_states"]
    )


def test_proj_type_decides_projector_and_moment_shapes(capsys):
    std = _json(capsys, "--method", "galore_adamw")
    left = _json(capsys, "--method", "galore_adamw", "--proj-type", "left")
    assert left == _expected(method="galore_adamw", proj_type="left")
    # gate/up weights are 176×64: std keeps a 64×r projector and 176×r moments, left a 176×r
    # projector and r×64 moments (3·176·r + 64·r against 176·r + 3·64·r floats in all)
    assert left["optimizer_states"] < std["optimizer_states"]


@pytest.mark.parametrize(
    ("flag", "parsed"),
    [
        ("q_proj,v_proj", ("q_proj", "v_proj")),
        # a regex matches whole module names, as in peft
        ("re:.*mlp\\.(up|down)_proj", ".*mlp\\.(up|down)_proj"),
    ],
)
def test_target_modules_select_the_projected_or_adapted_matrices(capsys, flag, parsed):
    default = _json(capsys, "--method", "galore_adamw")
    got = _json(capsys, "--method", "galore_adamw", "--target-modules", flag)
    assert got == _expected(method="galore_adamw", target_modules=parsed)
    # fewer projected matrices: more full-rank moments
    assert got["optimizer_states"] > default["optimizer_states"]
    lora = _json(capsys, "--method", "lora", "--target-modules", flag)
    assert lora == _expected(method="lora", target_modules=parsed)
    assert lora["weights"] < _json(capsys, "--method", "lora")["weights"]  # fewer adapters


def test_attn_implementation_changes_the_saved_tensors(capsys):
    sdpa = _json(capsys)
    eager = _json(capsys, "--attn-implementation", "eager")
    assert eager == _expected(method="galore_adamw", attn_implementation="eager")
    assert eager["activations"] > sdpa["activations"]  # the s×s softmax
    assert memory_cli.run(_args(*TINY, *BASE, "--attn-implementation", "eager", "--detail")) == 0
    assert "eager softmax (float32)" in capsys.readouterr().out


def test_accumulation_steps_keep_every_layerwise_gradient(capsys):
    one = _json(capsys, "--layerwise")
    two = _json(capsys, "--layerwise", "--accumulation-steps", "2")
    assert two == _expected(method="galore_adamw", layerwise=True, accumulation_steps=2)
    assert two["gradients"] > one["gradients"]


def test_seed_reaches_the_measured_run(capsys, monkeypatch):
    import galorekit.memory.measure as measure_mod

    seen = {}

    def fake_measure(model, setup, **kwargs):
        seen.update(kwargs)
        return Measurement("cpu", 1, 1, 1, 1, 1, 4)

    monkeypatch.setattr(measure_mod, "measure", fake_measure)
    argv = (*TINY, *BASE, "--measure", "--device", "cpu", "--json")
    assert memory_cli.run(_args(*argv, "--seed", "7")) == 0
    assert seen["seed"] == 7
    capsys.readouterr()
    # and the seed decides the measured model's initialisation
    setup = TrainingSetup(method="adamw", precision="fp32")
    a, b, c = (
        build_training_model("llama_tiny", setup, vocab_size=VOCAB, device="cpu", seed=s).model
        for s in (7, 7, 8)
    )
    wa, wb, wc = (m.get_input_embeddings().weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


# ---- fit mode ------------------------------------------------------------------------------------
#: grouped-query attention: k_proj and v_proj are 16×64, the other matrices 64 or 176 wide
GQA = {
    "hidden_size": 64,
    "intermediate_size": 176,
    "num_attention_heads": 4,
    "num_key_value_heads": 1,
    "num_hidden_layers": 2,
    "vocab_size": VOCAB,
    "max_position_embeddings": 64,
}


def _fit_ranks(base: TrainingSetup, methods=("galore_adamw", "lora", "low_rank")) -> dict:
    rows = fit_budget(dict(GQA), 10**9, base, methods=methods, ranks=(8, 32))
    out: dict[str, set] = {}
    for r in rows:
        out.setdefault(r.method, set()).add(r.rank)
    return out


def test_fit_rank_filter_follows_the_target_modules():
    base = TrainingSetup(precision="fp32", seq_len=16)
    # default targets include k/v (16 wide): rank 32 would be clamped, so it is not offered
    assert _fit_ranks(base) == {"galore_adamw": {8}, "lora": {8}, "low_rank": {8}}
    wide = base.with_(target_modules=("q_proj", "o_proj", "gate_proj", "up_proj", "down_proj"))
    assert _fit_ranks(wide) == {"galore_adamw": {8, 32}, "lora": {8, 32}, "low_rank": {8, 32}}
    with pytest.raises(ValueError, match="lora: no rank in \\[32\\]"):
        fit_budget(dict(GQA), 10**9, base, methods=("lora",), ranks=(32,))


def test_fit_builds_and_walks_each_model_once(monkeypatch):
    builds, walks = [], []
    real_build, real_walk = fit_mod.build_training_model, fit_mod.llama_structure

    def build(model, setup, **kw):
        builds.append((setup.method, setup.rank))
        return real_build(model, setup, **kw)

    def walk(net):
        walks.append(id(net))
        return real_walk(net)

    monkeypatch.setattr(fit_mod, "build_training_model", build)
    monkeypatch.setattr(fit_mod, "llama_structure", walk)
    base = TrainingSetup(precision="fp32", seq_len=32)
    methods = ("adamw", "galore_adamw", "galore_adamw8bit", "lora", "relora", "low_rank")
    rows = fit_budget(
        "llama_tiny", 1_500_000, base, methods=methods, ranks=(8, 16), vocab_size=VOCAB
    )
    # the plain model, then LoRA (shared with ReLoRA) and Low-Rank once per rank
    assert sorted(builds) == sorted(
        [("adamw", None), ("lora", 8), ("lora", 16), ("low_rank", 8), ("low_rank", 16)]
    )
    assert len(walks) == len(set(walks)) == 5
    assert any(r.fits for r in rows) and not all(r.fits for r in rows)


def test_fit_mode_tries_both_update_modes_whatever_layerwise_says(capsys):
    """--layerwise (meaningless for the baselines) used to make fit mode fail on them."""
    argv = (*TINY, "--budget", "1.5MB", "--precision", "fp32", "--seq-len", "32", "--ranks", "16")
    assert memory_cli.run(_args(*argv, "--json")) == 0
    plain = json.loads(capsys.readouterr().out)
    assert memory_cli.run(_args(*argv, "--layerwise", "--json")) == 0
    assert json.loads(capsys.readouterr().out) == plain
    assert {c["method"] for c in plain["configurations"]} >= {"lora", "relora", "low_rank"}


def test_json_path_writes_the_same_json_as_stdout(capsys, tmp_path):
    """``--json PATH`` writes to PATH (the convention of every command); ``--json`` alone and
    ``--json -`` print."""
    on_stdout = _json(capsys)
    assert memory_cli.run(_args(*TINY, *BASE, "--json", "-")) == 0
    assert json.loads(capsys.readouterr().out) == on_stdout
    path = tmp_path / "est.json"
    assert memory_cli.run(_args(*TINY, *BASE, "--json", str(path))) == 0
    assert capsys.readouterr().out == ""
    assert json.loads(path.read_text()) == on_stdout


# ------------------------------------------------------------ flags from the setup's fields
def test_setup_flags_are_the_training_setups_fields():
    from dataclasses import fields

    from galorekit.memory.names import SetupFields

    named = {fl.name for fl in memory_cli.SETUP_FLAGS}
    assert named == {f.name for f in fields(TrainingSetup)} - {"lora_alpha"}
    assert [f.name for f in fields(TrainingSetup)] == [f.name for f in fields(SetupFields)]
    args = memory_cli.resolve(_args())
    resolved = {fl.name: getattr(args, fl.name) for fl in memory_cli.SETUP_FLAGS}
    setup = TrainingSetup(**{k: v for k, v in resolved.items() if k != "method"})
    assert setup == TrainingSetup() and args.method is None  # no --method: --budget tries all
    assert (args.model, args.vocab_size, args.seed, args.measure_steps) == ("llama_7b", None, 0, 3)


@pytest.mark.parametrize("suffix", [".toml", ".json"])
def test_config_file_under_the_command_line(tmp_path, capsys, suffix):
    values = {"model": "llama_tiny", "vocab_size": VOCAB, "method": "galore_adamw8bit", "rank": 16}
    values |= {"precision": "fp32", "seq_len": 64, "target_modules": "q_proj,v_proj"}
    path = tmp_path / f"memory{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(values))
    else:
        path.write_text(
            "\n".join(f"{k.replace('_', '-')} = {json.dumps(v)}" for k, v in values.items())
        )
    args = memory_cli.resolve(_args("--config", str(path), "--seq-len", "32", "--layerwise"))
    assert (args.model, args.vocab_size, args.seq_len) == ("llama_tiny", VOCAB, 32)
    assert args.method == "galore_adamw8bit" and args.layerwise is True
    assert memory_cli.run(_args("--config", str(path), "--seq-len", "32", "--json")) == 0
    got = json.loads(capsys.readouterr().out)
    assert got == _expected(method="galore_adamw8bit", target_modules=("q_proj", "v_proj"))
    assert got != _expected(method="galore_adamw8bit")  # the file's target modules counted


def test_config_file_precision_is_checked(tmp_path, capsys):
    path = tmp_path / "memory.json"
    path.write_text(json.dumps({"model": "llama_tiny", "precision": "bf16"}))
    assert memory_cli.run(_args("--config", str(path))) == 2
    err = capsys.readouterr().err
    assert err.startswith("galore memory: error: --config") and "bf16-true" in err
