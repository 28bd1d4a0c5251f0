"""TRL's ``SFTTrainer`` through ``GaLoreSFTTrainer``: the same optim/optim_args/targets, and
layer-wise with gradient accumulation equals the ordinary GaLore run (tiny LLaMA, tiny texts)."""

from __future__ import annotations

import pytest

pytest.importorskip("trl")

from _integration_fixtures import (
    max_diff,
    params,
    text_dataset,
    tiny_llama,
    training_args,
    word_tokenizer,
)
from galorekit.integrations.transformers import _layerwise_of
from galorekit.integrations.trl import GaLoreSFTTrainer


def _sft(tmp_path, optim: str):
    from trl import SFTConfig

    config = training_args(
        tmp_path / optim,
        SFTConfig,
        optim=optim,
        optim_args="rank=4, update_proj_gap=2, moments=project",
        max_length=16,
        dataset_num_proc=None,
    )
    model = tiny_llama()
    trainer = GaLoreSFTTrainer(
        model=model, args=config, train_dataset=text_dataset(), processing_class=word_tokenizer()
    )
    trainer.train()
    return trainer, params(model)


def test_sft_trainer_layerwise_equals_the_ordinary_run(tmp_path):
    ordinary, p_ordinary = _sft(tmp_path, "galore_adamw")
    layerwise, p_layerwise = _sft(tmp_path, "galore_adamw_layerwise")
    assert _layerwise_of(layerwise.optimizer) is not None
    galore = [g for g in _layerwise_of(layerwise.optimizer).param_groups if "rank" in g]
    assert galore and galore[0]["rank"] == 4 and len(galore[0]["params"]) == 14
    assert max_diff(p_ordinary, p_layerwise) < 1e-6
    assert max_diff(p_ordinary, params(tiny_llama())) > 1e-3  # it trained
    norms = [
        (a["grad_norm"], b["grad_norm"])
        for a, b in zip(ordinary.state.log_history, layerwise.state.log_history)
        if "grad_norm" in a
    ]
    assert norms and all(b == pytest.approx(a, rel=1e-5) and b > 0 for a, b in norms)
