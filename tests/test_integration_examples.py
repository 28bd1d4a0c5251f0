"""The accelerate and Lightning examples (examples/): they run, layer-wise equals ordinary GaLore
with gradient accumulation, and accelerate's save_state/load_state resumes bit-identically."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from galorekit import LayerwiseOptimizer

EXAMPLES = Path(__file__).parents[1] / "examples"


def _example(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _same(a: dict, b: dict, atol: float = 0.0) -> bool:
    return all(torch.allclose(a[n], b[n], atol=atol, rtol=0) for n in a)


@pytest.fixture(scope="module")
def accelerate_example():
    pytest.importorskip("accelerate")
    return _example("accelerate_galore")


def test_accelerate_layerwise_equals_ordinary(accelerate_example):
    run = lambda *flags: accelerate_example.train(accelerate_example.parse_args(["--cpu", *flags]))  # noqa: E731
    ordinary, layerwise = run(), run("--layerwise")
    assert _same(ordinary, layerwise, atol=1e-6)
    initial = dict(accelerate_example.build_model(0).named_parameters())
    assert not _same(ordinary, {n: p.detach() for n, p in initial.items()}, atol=1e-3)
    clipped = run("--layerwise", "--max-grad-norm", "0.1")
    assert not _same(layerwise, clipped, atol=1e-4)


@pytest.mark.parametrize("layerwise", [False, True])
def test_accelerate_save_and_load_state_resume_bit_identically(
    accelerate_example, tmp_path, layerwise
):
    flags = ["--cpu", "--max-grad-norm", "0.5"] + (["--layerwise"] if layerwise else [])
    state = str(tmp_path / "state")
    straight = accelerate_example.train(
        accelerate_example.parse_args([*flags, "--save-state", state, "--save-at", "3"])
    )
    resumed = accelerate_example.train(
        accelerate_example.parse_args([*flags, "--load-state", state, "--save-at", "3"])
    )
    assert all(torch.equal(straight[n], resumed[n]) for n in straight)


@pytest.fixture(scope="module")
def lightning_example():
    pytest.importorskip("lightning")
    return _example("lightning_galore")


def test_lightning_layerwise_equals_ordinary(lightning_example, tmp_path):
    trainers = {}

    def run(*flags):
        argv = ["--cpu", "--output-dir", str(tmp_path), *flags]
        trainers[flags] = trainer = lightning_example.train(lightning_example.parse_args(argv))
        return {n: p.detach() for n, p in trainer.lightning_module.model.named_parameters()}

    ordinary, layerwise = run(), run("--layerwise")
    assert _same(ordinary, layerwise, atol=1e-6)
    wrapper = trainers[("--layerwise",)].optimizers[0]
    assert isinstance(wrapper, LayerwiseOptimizer) and wrapper.steps == 6
    assert trainers[("--layerwise",)].callback_metrics["grad_norm"] > 0
    initial = {n: p.detach() for n, p in lightning_example.build_model(0).named_parameters()}
    assert not _same(ordinary, initial, atol=1e-3)
    assert not _same(layerwise, run("--layerwise", "--max-grad-norm", "0.1"), atol=1e-4)
