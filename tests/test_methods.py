"""The method table (``galorekit.names``) and the method layer (``galorekit.methods``)."""

from __future__ import annotations

import dataclasses

import pytest

from galorekit import names
from galorekit.methods import MethodConfig, field_help


def test_method_table_is_the_source_of_every_method_list():
    table = names.METHOD_TABLE
    assert set(names.ALL_METHODS) == set(table)
    assert {n: m.default_lr for n, m in table.items()} == names.DEFAULT_LR
    assert {n for n in table if names.is_galore(n)} == {
        "galore_adamw",
        "galore_adamw8bit",
        "galore_adafactor",
        "galore_torch_adamw",
        *names.SUCCESSOR_METHODS,
    }
    assert set(names.SUCCESSOR_METHODS) == {
        "fira_adamw",
        "apollo_adamw",
        "apollo_mini",
        "q_galore_adamw8bit",
        "golore_adamw",
    }
    assert tuple(n for n, m in table.items() if m.changes_model) == names.BASELINES
    for row in table.values():
        assert row.optimizer in (*names.OPTIMIZER_NAMES, *names.REFERENCE_METHODS)
        assert row.uses_rank == (row.is_galore or row.changes_model)
    assert not names.is_galore("galorekit")  # unknown names are not GaLore


def test_full_is_refused_with_a_pointer_to_adamw():
    with pytest.raises(ValueError, match="use --method adamw"):
        names.method_info("full")
    with pytest.raises(ValueError, match="use --method adamw"):
        MethodConfig(method="full")
    with pytest.raises(ValueError, match="unknown method 'sgd'"):
        MethodConfig(method="sgd")


def test_method_config_defaults_come_from_galore_defaults():
    cfg = MethodConfig()
    for key in ("update_proj_gap", "scale", "proj_type", "moments"):
        assert getattr(cfg, key) == names.GALORE_DEFAULTS[key]
    assert cfg.galore_group(8) == {
        "rank": 8,
        "update_proj_gap": 200,
        "scale": 0.25,
        "proj_type": "std",
        "moments": "project",
    }
    helps = field_help()
    assert set(helps) == {f.name for f in dataclasses.fields(MethodConfig)}
    assert all(helps.values()), "every field carries help text"


def test_one_setup_for_every_command():
    """pretrain (setup), finetune (build_optimizer) and memory build the same optimizer."""
    import torch

    from galorekit.memory import TrainingSetup
    from galorekit.memory.model import build_optimizer as memory_optimizer
    from galorekit.methods import setup
    from galorekit.models import build_model

    model = build_model("llama_tiny", vocab_size=64, seed=0, dtype=torch.float32)
    built = setup(model, MethodConfig(method="galore_adamw", rank=4), total_steps=4)
    other = memory_optimizer(model, TrainingSetup(method="galore_adamw", rank=4, precision="fp32"))
    assert type(built.optimizer) is type(other)
    shapes = [[tuple(p.shape) for p in g["params"]] for g in built.optimizer.param_groups]
    assert shapes == [[tuple(p.shape) for p in g["params"]] for g in other.param_groups]
    (galore,) = [g for g in built.optimizer.param_groups if "rank" in g]
    assert galore["update_proj_gap"] == names.GALORE_DEFAULTS["update_proj_gap"]
    assert galore["scale"] == names.GALORE_DEFAULTS["scale"]


def test_moments_and_state_dtype_flags_reach_the_optimizer() -> None:
    """``galore pretrain --moments reset --state-dtype float32`` builds its optimizer so."""
    from galorekit.methods import setup
    from galorekit.models import build_model
    from galorekit.train.pretrain_config import build_config

    cfg = build_config({"moments": "reset", "state_dtype": "float32", "rank": 8})
    model = build_model("llama_tiny", vocab_size=64)
    optimizer = setup(model, cfg.method, total_steps=10).optimizer
    galore = [g for g in optimizer.param_groups if "rank" in g]
    assert galore and all(g["moments"] == "reset" for g in galore)
    assert all(g["state_dtype"] == "float32" for g in optimizer.param_groups)
    with pytest.raises(ValueError, match="unknown moments policy 'rotate'"):
        MethodConfig(moments="rotate")
