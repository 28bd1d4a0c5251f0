"""DeepSpeed: what GaLore cannot run under is refused with the reason (ZeRO ≥ 1 flattens the
matrices, an optimizer section replaces GaLore, layer-wise conflicts with the engine's backward);
ZeRO stage 0 with the Trainer's client optimizer trains with GaLore on the weight matrices."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from galorekit.integrations.deepspeed import check_deepspeed, deepspeed_refusal

TESTS = Path(__file__).parent


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_zero_stages_that_flatten_parameters_are_refused(stage):
    why = deepspeed_refusal({"zero_optimization": {"stage": stage}})
    assert why is not None and f"ZeRO stage {stage}" in why and "FSDP2" in why
    with pytest.raises(ValueError, match="GaLore cannot run under this DeepSpeed configuration"):
        check_deepspeed({"zero_optimization": {"stage": stage}})


def test_stage_zero_runs_and_the_other_refusals():
    assert deepspeed_refusal({"zero_optimization": {"stage": 0}, "bf16": {"enabled": True}}) is None
    assert deepspeed_refusal({}) is None
    assert "'optimizer' section" in deepspeed_refusal({"optimizer": {"type": "AdamW"}})
    assert "inside backward" in deepspeed_refusal({}, layerwise=True)


SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    sys.path.insert(0, {tests!r})
    from _integration_fixtures import TokenDataset, tiny_llama, training_args
    from galorekit.integrations.transformers import GaLoreTrainer

    ds = {{"zero_optimization": {{"stage": {stage}}}, "train_micro_batch_size_per_gpu": "auto",
           "gradient_accumulation_steps": "auto", "train_batch_size": "auto"}}
    args = training_args({out!r}, deepspeed=ds, optim={optim!r}, use_cpu=False,
                         num_train_epochs=1)
    trainer = GaLoreTrainer(model=tiny_llama(), args=args, train_dataset=TokenDataset())
    try:
        trainer.train()
    except ValueError as err:
        print(json.dumps({{"refused": str(err)}}))
    else:
        opt = trainer.optimizer
        while not hasattr(opt, "_update_param"):
            opt = opt.optimizer
        shapes = [list(p.shape) for g in opt.param_groups if "rank" in g for p in g["params"]]
        print(json.dumps({{"shapes": shapes}}))
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _trainer_under_deepspeed(tmp_path, stage: int, optim: str) -> dict:
    pytest.importorskip("deepspeed")
    env = dict(
        os.environ,
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(_free_port()),
        RANK="0",
        LOCAL_RANK="0",
        WORLD_SIZE="1",
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS="1",
    )
    code = SCRIPT.format(tests=str(TESTS), stage=stage, optim=optim, out=str(tmp_path / "run"))
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_trainer_refuses_zero_2_with_the_explanation(tmp_path):
    result = _trainer_under_deepspeed(tmp_path, 2, "galore_adamw")
    assert "ZeRO stage 2" in result["refused"] and "FSDP2" in result["refused"]


@pytest.mark.slow
def test_trainer_runs_galore_under_zero_0(tmp_path):
    result = _trainer_under_deepspeed(tmp_path, 0, "galore_adamw")
    # GaLore's group still holds the 2-D attention and MLP weights (ZeRO ≥ 1 would flatten them)
    assert len(result["shapes"]) == 14 and all(len(s) == 2 for s in result["shapes"])
