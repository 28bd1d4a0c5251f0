"""``lr_other_ratio`` (``--lr-other-ratio``): every method gives the parameters outside its
matrices (embeddings, head, norms, biases) their own learning rate."""

from __future__ import annotations

import pytest
import torch

from galorekit.methods import MethodConfig, setup
from galorekit.models import build_model
from galorekit.train.schedule import warmup_cosine

LR, RATIO = 0.002, 4.0


def _lr_of(optimizer) -> dict[str, float]:
    return {n: g["lr"] for g in optimizer.param_groups for n in g["param_names"]}


def _is_matrix_name(name: str) -> bool:
    inside = any(k in name for k in ("self_attn.", "mlp."))
    return inside and name.endswith(("weight", ".A", ".B")) and "norm" not in name


@pytest.mark.parametrize(
    "method, layerwise",
    [
        ("adamw", False),
        ("adamw", True),
        ("galore_adamw", False),
        ("galore_adamw", True),
        ("adamw8bit", False),
        ("galore_adamw8bit", False),
        ("galore_torch_adamw", False),
        ("lora", False),
        ("relora", False),
        ("low_rank", False),
    ],
)
def test_each_method_gives_the_other_parameters_their_lr(method: str, layerwise: bool) -> None:
    model = build_model("llama_tiny", vocab_size=64, seed=0)
    cfg = MethodConfig(method=method, lr=LR, lr_other_ratio=RATIO, rank=4, layerwise=layerwise)
    built = setup(model, cfg, total_steps=8)
    lrs = _lr_of(built.optimizer)
    trainable = [n for n, p in built.model.named_parameters() if p.requires_grad]
    assert sorted(lrs) == sorted(trainable)  # every trainable parameter once
    matrices = {n for n in trainable if _is_matrix_name(n)}
    assert matrices and len(matrices) < len(trainable)
    for name, lr in lrs.items():
        assert lr == pytest.approx(LR if name in matrices else LR * RATIO), name
    assert any("embed_tokens" in n and lr == pytest.approx(LR * RATIO) for n, lr in lrs.items())


def test_ratio_one_leaves_the_groups_as_they_were() -> None:
    model = build_model("llama_tiny", vocab_size=64, seed=0)
    built = setup(model, MethodConfig(method="adamw", lr=LR), total_steps=8)
    assert len(built.optimizer.param_groups) == 1
    built = setup(model, MethodConfig(method="galore_adamw", lr=LR, rank=4), total_steps=8)
    assert len(built.optimizer.param_groups) == 2
    assert all(g["lr"] == LR for g in built.optimizer.param_groups)


def test_the_schedule_keeps_the_ratio() -> None:
    model = build_model("llama_tiny", vocab_size=64, seed=0)
    cfg = MethodConfig(method="galore_adamw", lr=LR, lr_other_ratio=RATIO, rank=4)
    optimizer = setup(model, cfg, total_steps=20).optimizer
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, warmup=2, total=20, min_ratio=0.1)
    )
    for step in range(12):
        lrs = sorted({g["lr"] for g in optimizer.param_groups})
        assert len(lrs) == 2 and lrs[1] == pytest.approx(RATIO * lrs[0]), step
        optimizer.step()
        scheduler.step()
    assert lrs[0] < LR  # the schedule did move them


def test_bad_ratio_is_refused() -> None:
    for bad in (0, -1.0, float("inf"), True):
        with pytest.raises(ValueError, match="lr_other_ratio must be a finite number > 0"):
            MethodConfig(lr_other_ratio=bad)


def test_pretrain_flag_and_resume_rule() -> None:
    """``galore pretrain --lr-other-ratio`` reaches the method; a resumed run refuses a change
    of it (a trajectory setting) unless --allow-config-change."""
    from galorekit.train.pretrain_config import (
        FLAGS,
        build_config,
        config_values,
        trajectory_changes,
    )

    flag = next(f for f in FLAGS if f.name == "lr_other_ratio")
    assert flag.trajectory and "embeddings" in flag.help
    cfg = build_config({"lr_other_ratio": 8.0})
    assert cfg.method.lr_other_ratio == 8.0
    saved = config_values(build_config({}))
    assert saved["lr_other_ratio"] == 1.0
    assert trajectory_changes(saved, config_values(cfg)) == {"lr_other_ratio": (1.0, 8.0)}
    old = {k: v for k, v in saved.items() if k != "lr_other_ratio"}  # a run saved before it
    assert trajectory_changes(old, config_values(build_config({}))) == {}
