"""``GaLoreTrainer`` (galorekit.integrations.transformers): a Trainer script's ``optim="galore_*"``
runs on galorekit's optimizers; layer-wise equals the ordinary run with gradient accumulation
(and an epoch whose last step is short), logs the real grad_norm, follows the LR schedule, clips,
and resumes bit-identically from a checkpoint loadable with ``weights_only=True``."""

from __future__ import annotations

import inspect

import pytest
import torch

from _integration_fixtures import TokenDataset, max_diff, params, tiny_llama, training_args

transformers = pytest.importorskip("transformers")

from galorekit import GaLoreAdafactor, GaLoreAdamW, LayerwiseOptimizer  # noqa: E402
from galorekit.integrations.optim_args import OPTIM_ARG_KEYS, parse_optim_args  # noqa: E402
from galorekit.integrations.transformers import (  # noqa: E402
    GaLoreTrainer,
    _layerwise_of,
    check_transformers_version,
    galore_optimizer,
)


def _train(tmp_path, name="run", **overrides):
    model = tiny_llama()
    trainer = GaLoreTrainer(
        model=model,
        args=training_args(tmp_path / name, **overrides),
        train_dataset=TokenDataset(),
    )
    trainer.train()
    logs = [h for h in trainer.state.log_history if "grad_norm" in h]
    return trainer, params(model), logs


def _inner(trainer):
    opt = trainer.optimizer
    while not isinstance(opt, (GaLoreAdamW, GaLoreAdafactor, LayerwiseOptimizer)):
        opt = opt.optimizer
    return opt


# ---- the transformers behaviours the integration relies on (SUPPORTED_TRANSFORMERS) ----------
def test_installed_transformers_is_in_the_supported_range():
    check_transformers_version(transformers.__version__)
    for outside in ("4.57.0", "6.0.0"):
        with pytest.raises(RuntimeError, match="supports transformers"):
            check_transformers_version(outside)


def test_trainer_surface_the_mixin_overrides():
    from transformers import Trainer, TrainerCallback
    from transformers.training_args import OptimizerNames

    assert "model" in inspect.signature(Trainer.create_optimizer).parameters
    step = inspect.signature(Trainer.training_step).parameters
    assert list(step)[:3] == ["self", "model", "inputs"]
    assert list(inspect.signature(Trainer.log).parameters)[:2] == ["self", "logs"]
    assert hasattr(TrainerCallback, "on_optimizer_step")
    assert hasattr(Trainer, "get_decay_parameter_names")
    names = {o.value for o in OptimizerNames}
    for base in ("galore_adamw", "galore_adamw_8bit", "galore_adafactor"):
        assert {base, f"{base}_layerwise"} <= names


# ---- optim_args and targets --------------------------------------------------------------------
def test_every_optim_args_key_reaches_the_optimizer(tmp_path):
    args = training_args(
        tmp_path,
        optim_args="rank=3, update_proj_gap=7, scale=0.5, proj_type=left, svd=exact, "
        "moments=align, state_dtype=bfloat16, stagger=true",
    )
    opt = galore_optimizer(args, tiny_llama())
    galore = next(g for g in opt.param_groups if "rank" in g)
    expected = dict(rank=3, update_proj_gap=7, scale=0.5, proj_type="left", svd="exact")
    assert {k: galore[k] for k in expected} == expected
    assert galore["moments"] == "align" and galore["stagger"] is True
    assert galore["state_dtype"] == "bfloat16"
    assert set(parse_optim_args("rank=3")) <= set(OPTIM_ARG_KEYS)


def test_unknown_or_malformed_optim_args_are_refused_with_the_valid_keys():
    with pytest.raises(
        ValueError, match=r"unknown key 'ranks'.*rank:.*update_proj_gap:.*state_dtype"
    ):
        parse_optim_args("ranks=4")
    with pytest.raises(ValueError, match="rank='four' is not valid"):
        parse_optim_args("rank=four")
    with pytest.raises(ValueError, match="not key=value"):
        parse_optim_args("rank")


def test_a_target_that_matches_nothing_is_refused(tmp_path):
    args = training_args(tmp_path, optim_target_modules=["no_such_module"])
    with pytest.raises(ValueError, match=r"no_such_module.*matches no nn.Linear"):
        galore_optimizer(args, tiny_llama())


def test_targets_weight_decay_and_hyperparameters_follow_the_arguments(tmp_path):
    model = tiny_llama()
    args = training_args(tmp_path, optim_target_modules=["q_proj"], adam_beta1=0.8)
    decay = GaLoreTrainer(model=model, args=args).get_decay_parameter_names(model)
    opt = galore_optimizer(args, model, decay_parameter_names=decay)
    galore = next(g for g in opt.param_groups if "rank" in g)
    assert galore["param_names"] == [f"model.layers.{i}.self_attn.q_proj.weight" for i in (0, 1)]
    by_decay = {g["weight_decay"]: g["param_names"] for g in opt.param_groups if "rank" not in g}
    assert all("norm" in n for n in by_decay[0.0]) and "lm_head.weight" in by_decay[0.01]
    assert galore["betas"] == (0.8, 0.999) and galore["lr"] == 1e-2


# ---- training ----------------------------------------------------------------------------------
@pytest.mark.parametrize("optim", ["galore_adamw", "galore_adafactor"])
def test_layerwise_with_accumulation_equals_the_ordinary_run(tmp_path, optim):
    # 10 samples, batch 2, accumulation 2: every epoch ends on a step of one micro-batch
    ordinary, p_ordinary, logs_ordinary = _train(tmp_path, "a", optim=optim)
    layerwise, p_layerwise, logs_layerwise = _train(tmp_path, "b", optim=f"{optim}_layerwise")
    assert isinstance(_layerwise_of(layerwise.optimizer), LayerwiseOptimizer)
    assert _layerwise_of(ordinary.optimizer) is None
    assert max_diff(p_ordinary, p_layerwise) < 1e-6
    assert len(logs_ordinary) == len(logs_layerwise) == 6
    for a, b in zip(logs_ordinary, logs_layerwise):
        # the real norm (the Trainer alone would log 0: the gradients are gone after backward)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-5) and b["grad_norm"] > 0
        assert b["learning_rate"] == pytest.approx(a["learning_rate"])
    # the control: the same Trainer with plain AdamW trains differently
    _, p_adamw, _ = _train(tmp_path, "c", optim="adamw_torch")
    assert max_diff(p_ordinary, p_adamw) > 1e-3


def test_layerwise_clips_with_max_grad_norm(tmp_path):
    _, p_free, logs = _train(tmp_path, "a", optim="galore_adamw_layerwise")
    clip = 0.5 * min(log["grad_norm"] for log in logs)
    trainer, p_clipped, logs_clipped = _train(
        tmp_path, "b", optim="galore_adamw_layerwise", max_grad_norm=clip
    )
    assert _layerwise_of(trainer.optimizer).max_grad_norm == clip
    assert max_diff(p_free, p_clipped) > 1e-4
    # the first step is measured, not clipped (the previous step's norm scales the next one)
    assert logs_clipped[0]["grad_norm"] == pytest.approx(logs[0]["grad_norm"], rel=1e-6)
    one = dict(optim="galore_adamw_layerwise", max_steps=1, warmup_steps=0)
    _, p_one_free, _ = _train(tmp_path, "c", **one)
    _, p_one_clipped, _ = _train(tmp_path, "d", **one, max_grad_norm=clip)
    assert max_diff(p_one_free, p_one_clipped) == 0.0
    assert max_diff(p_one_free, params(tiny_llama())) > 1e-3


@pytest.mark.parametrize("optim", ["galore_adamw", "galore_adamw_layerwise"])
def test_resume_from_checkpoint_is_bit_identical(tmp_path, optim):
    common = dict(optim=optim, save_strategy="steps", save_steps=3, num_train_epochs=2)
    _, p_straight, _ = _train(tmp_path, "straight", **common)
    checkpoint = tmp_path / "straight" / "checkpoint-3"
    state = torch.load(checkpoint / "optimizer.pt", weights_only=True)
    assert state  # galorekit's state is tensors and plain numbers only
    model = tiny_llama(seed=5)  # other weights: the checkpoint must restore them
    trainer = GaLoreTrainer(
        model=model,
        args=training_args(tmp_path / "resumed", **common),
        train_dataset=TokenDataset(),
    )
    trainer.train(resume_from_checkpoint=str(checkpoint))
    resumed = params(model)
    assert all(torch.equal(p_straight[n], resumed[n]) for n in p_straight)


def test_eight_bit_runs(tmp_path):
    pytest.importorskip("bitsandbytes")
    trainer, _, logs = _train(
        tmp_path,
        optim="galore_adamw_8bit_layerwise",
        num_train_epochs=1,
        gradient_accumulation_steps=1,
    )
    assert type(_inner(trainer).inner).__name__ == "GaLoreAdamW8bit"
    assert all(log["grad_norm"] > 0 for log in logs)
