"""Atomic checkpoints: round trip with weights_only, crash safety, corruption, discovery, pruning."""

from __future__ import annotations

import json
import os

import pytest
import torch

from galorekit.atomic import atomic_write_text
from galorekit.train import checkpoint as ck
from galorekit.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


def _state(step: int) -> dict:
    torch.manual_seed(step)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    return {
        "step": step,
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "rng": torch.get_rng_state(),
        "config": {"lr": 1e-3, "betas": (0.9, 0.999), "name": "adamw", "dtype": torch.float32},
    }


def _visible(path):
    return sorted(p.name for p in path.iterdir() if not p.name.startswith("."))


def test_round_trip_with_weights_only(tmp_path):
    state = _state(7)
    path = save_checkpoint(tmp_path / ck.checkpoint_name(7), state, metadata={"run": "x"})
    assert path.name == "step-00000007" and _visible(tmp_path) == ["step-00000007"]
    meta = json.loads((path / ck.META_FILE).read_text())
    assert meta["step"] == 7 and meta["metadata"] == {"run": "x"} and meta["format"] == ck.FORMAT
    loaded = load_checkpoint(path, map_location="cpu")
    assert loaded["step"] == 7 and loaded["config"]["dtype"] is torch.float32
    for k, v in state["model"].items():
        assert torch.equal(loaded["model"][k], v)
    assert torch.equal(
        loaded["optimizer"]["state"][0]["exp_avg"], state["optimizer"]["state"][0]["exp_avg"]
    )
    assert torch.equal(loaded["rng"], state["rng"])
    # the state file itself, and a root of checkpoints, load too
    assert load_checkpoint(path / ck.STATE_FILE)["step"] == 7
    assert load_checkpoint(tmp_path)["step"] == 7


def test_unloadable_values_are_refused_before_writing(tmp_path):
    with pytest.raises(TypeError, match=r"state\['optimizer'\] is a torch.optim.adamw.AdamW"):
        save_checkpoint(
            tmp_path / "c", {"optimizer": torch.optim.AdamW([torch.nn.Parameter(torch.ones(1))])}
        )
    assert list(tmp_path.iterdir()) == []


def test_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "latest", _state(1))

    def crash(obj, f, *args, **kwargs):
        with open(f, "wb") as fh:
            fh.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, _state(2))
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["latest"]  # no temporary left behind
    assert load_checkpoint(path)["step"] == 1
    save_checkpoint(path, _state(3))  # a later save replaces it completely
    assert load_checkpoint(path)["step"] == 3 and os.listdir(tmp_path) == ["latest"]


def test_interrupted_swap_is_recovered(tmp_path):
    path = save_checkpoint(tmp_path / "best", _state(4))
    # a crash between "move the old one aside" and "move the new one in"
    os.replace(path, tmp_path / ".best.old-1234abcd")
    assert load_checkpoint(path)["step"] == 4
    assert _visible(tmp_path) == ["best"]


def test_corrupt_files_are_detected(tmp_path):
    path = save_checkpoint(tmp_path / "c", _state(5))
    data = (path / ck.STATE_FILE).read_bytes()
    (path / ck.STATE_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"corrupt: \d+ bytes, \d+ were written"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="cannot load"):
        load_checkpoint(path, verify=False)
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    (path / ck.STATE_FILE).write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match="SHA-256 does not match"):
        load_checkpoint(path)


def test_missing_and_mismatched_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="neither a checkpoint"):
        load_checkpoint(tmp_path / "empty")
    torch.save({"x": 1}, tmp_path / "raw.pt")
    with pytest.raises(CheckpointError, match="is a file, not a galorekit checkpoint"):
        load_checkpoint(tmp_path / "raw.pt")
    path = save_checkpoint(tmp_path / "c", {"step": 1, "model": {}})
    with pytest.raises(CheckpointError, match=r"lacks 'optimizer'; it holds 'model', 'step'"):
        load_checkpoint(path, required_keys=("model", "optimizer"))
    (path / ck.META_FILE).unlink()
    with pytest.raises(CheckpointError, match=r"meta\.json is missing"):
        load_checkpoint(path)
    newer = save_checkpoint(tmp_path / "n", {"step": 1})
    meta = json.loads((newer / ck.META_FILE).read_text())
    (newer / ck.META_FILE).write_text(json.dumps({**meta, "version": ck.FORMAT_VERSION + 1}))
    with pytest.raises(CheckpointError, match="newer than this galorekit supports"):
        load_checkpoint(newer)


def test_latest_discovery_and_keep_last(tmp_path):
    assert ck.find_latest_checkpoint(tmp_path) is None
    save_checkpoint(tmp_path / "best", {"step": 2})  # named checkpoints are never pruned
    for step in (1, 2, 10, 3, 4):
        save_checkpoint(tmp_path / ck.checkpoint_name(step), {"step": step}, keep_last=2)
    assert _visible(tmp_path) == ["best", "step-00000004", "step-00000010"]
    (tmp_path / ".step-00000099.tmp-1-abc").mkdir()  # an unfinished save
    assert ck.find_latest_checkpoint(tmp_path) == tmp_path / "step-00000010"
    assert [c.step for c in ck.list_checkpoints(tmp_path)] == [2, 4, 10]
    with pytest.raises(ValueError, match="keep_last"):
        save_checkpoint(tmp_path / "x", {}, keep_last=0)


def test_atomic_directory_leaves_target_untouched_on_error(tmp_path):
    target = tmp_path / "model"
    with ck.atomic_directory(target) as tmp:
        (tmp / "weights").write_text("v1")
    with pytest.raises(RuntimeError, match="boom"), ck.atomic_directory(target) as tmp:
        (tmp / "weights").write_text("v2 partial")
        raise RuntimeError("boom")
    assert (target / "weights").read_text() == "v1" and _visible(tmp_path) == ["model"]
    atomic_write_text(tmp_path / "f.json", "{}")  # the one atomic writer (galorekit.atomic)
    assert (tmp_path / "f.json").read_text() == "{}"


def test_load_module_state_reports_every_mismatch():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    state = {"0.weight": torch.zeros(3, 5), "0.bias": torch.zeros(3), "2.weight": torch.zeros(1)}
    with pytest.raises(
        CheckpointError,
        match=r"missing 2 key\(s\): 1.weight, 1.bias; unexpected 1 key\(s\): 2.weight; 1 shape mismatch",
    ):
        ck.load_module_state(model, state, what="model")
    good = {k: v.clone() + 1 for k, v in model.state_dict().items()}
    ck.load_module_state(model, good, what="model")
    assert torch.equal(model[0].bias, good["0.bias"])
