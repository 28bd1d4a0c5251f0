"""README "Use it from your trainer": its code blocks run as printed, and the claims about
transformers' own GaLore path (that GaLoreTrainer fixes) hold for the installed version."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from _integration_fixtures import TokenDataset, tiny_llama, training_args

pytest.importorskip("transformers")

README = Path(__file__).resolve().parents[1] / "README.md"


def _section_blocks() -> list[str]:
    text = README.read_text(encoding="utf-8")
    start = text.index("## Use it from your trainer")
    section = text[start : text.index("\n## ", start + 1)]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_the_sections_code_runs(tmp_path, monkeypatch):
    from galorekit.integrations import galore_torch_compat
    from galorekit.integrations.transformers import GaLoreTrainer, galore_optimizer

    monkeypatch.chdir(tmp_path)
    trainer_block, drop_in_block = _section_blocks()
    namespace: dict = {}
    exec(compile(trainer_block, str(README), "exec"), namespace)
    assert namespace["Trainer"] is GaLoreTrainer
    opt = galore_optimizer(namespace["args"], tiny_llama())
    assert opt.accumulation_steps == 4
    assert next(g for g in opt.param_groups if "rank" in g)["rank"] == 64
    try:
        exec(compile(drop_in_block, str(README), "exec"), {})
        import galore_torch

        assert galore_torch.GaLoreAdamW.__module__ == galore_torch_compat.__name__
    finally:
        galore_torch_compat.uninstall()


def test_default_targets_are_attention_and_mlp(tmp_path):
    from galorekit.integrations.transformers import galore_optimizer

    opt = galore_optimizer(training_args(tmp_path, optim_target_modules=None), tiny_llama())
    names = next(g for g in opt.param_groups if "rank" in g)["param_names"]
    assert len(names) == 14 and all(("self_attn" in n) != ("mlp" in n) for n in names)


def test_transformers_own_layerwise_refuses_accumulation_and_ddp(tmp_path, monkeypatch):
    pytest.importorskip("galore_torch")
    from transformers import Trainer, TrainingArguments
    from transformers.training_args import ParallelMode

    args = training_args(tmp_path, optim="galore_adamw_layerwise", gradient_accumulation_steps=2)
    with pytest.raises(ValueError, match="does not support gradient accumulation"):
        Trainer.get_optimizer_cls_and_kwargs(args, tiny_llama())
    monkeypatch.setattr(
        TrainingArguments, "parallel_mode", property(lambda self: ParallelMode.DISTRIBUTED)
    )
    with pytest.raises(NotImplementedError, match="does not support DDP"):
        Trainer.get_optimizer_cls_and_kwargs(args, tiny_llama())


def test_transformers_own_layerwise_logs_a_zero_grad_norm(tmp_path):
    pytest.importorskip("galore_torch")
    from transformers import Trainer

    args = training_args(
        tmp_path, optim="galore_adamw_layerwise", gradient_accumulation_steps=1, num_train_epochs=1
    )
    trainer = Trainer(model=tiny_llama(), args=args, train_dataset=TokenDataset())
    trainer.train()
    norms = [h["grad_norm"] for h in trainer.state.log_history if "grad_norm" in h]
    assert norms and all(n == 0 for n in norms)
