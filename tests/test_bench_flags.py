"""``galore bench`` flags, each through the command line on tiny shapes: every test fails if its
flag is ignored."""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

import pytest
import torch

from galorekit import bench
from galorekit.bench import benchmark as bench_run
from galorekit.bench import config as bench_config

#: one layer of llama_tiny (64×64 attention, 176×64 MLP), rank 4, one measured cycle
FAST = (
    "--model", "tiny", "--layers", "1", "--rank", "4", "--steady-steps", "1", "--cycles", "1",
    "--svd", "exact", "--no-reference",
)  # fmt: skip


def _run(tmp_path: Path, capsys: pytest.CaptureFixture, *argv: str) -> dict:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    out = tmp_path / f"r{len(list(tmp_path.iterdir()))}.json"
    args = parser.parse_args([*FAST, *argv, "--json", str(out)])
    assert bench.run(args) == 0
    capsys.readouterr()
    return json.loads(out.read_text())


def _rows(result: dict) -> dict[str, dict]:
    return {row["optimizer"]: row for row in result["results"]}


def test_update_proj_gap_sets_the_amortization_period(tmp_path, capsys):
    result = _run(tmp_path, capsys, "--update-proj-gap", "7")
    assert result["config"]["T"] == 7
    row = _rows(result)["galorekit (svd=exact)"]
    assert row["amortized_s"] == pytest.approx((row["refresh_s"] + 6 * row["steady_s"]) / 7)
    assert "T=7" in bench.format_markdown(result)


def test_old_T_flag_is_refused_with_a_pointer(capsys):
    parser = argparse.ArgumentParser(prog="galore bench")
    bench.add_arguments(parser)
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["--T", "7"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == "galore bench: error: --T is no longer accepted: use --update-proj-gap"


def test_json_dash_prints_the_json_instead_of_the_table(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args([*FAST, "--quality-layers", "0", "--json", "-"])
    assert bench.run(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["config"]["rank"] == 4 and result["results"]


def test_no_adamw_drops_the_adamw_row_and_ratios(tmp_path, capsys):
    with_adamw = _run(tmp_path, capsys, "--quality-layers", "0")
    without = _run(tmp_path, capsys, "--quality-layers", "0", "--no-adamw")
    assert bench.ADAMW in _rows(with_adamw) and bench.ADAMW not in _rows(without)
    assert list(_rows(without)) == ["galorekit (svd=exact)"]
    assert without["ratios"] == {"galorekit (svd=exact)": {}}


def test_noise_lowers_the_energy_the_top_r_directions_capture(tmp_path, capsys):
    clean = _run(tmp_path, capsys, "--noise", "0")["exact_captured"]
    noisy = _run(tmp_path, capsys, "--noise", "3")["exact_captured"]
    # noise 0: the spectrum is 1/i over 2r = 8 directions, so the top 4 hold a known share
    share = sum(1 / i**2 for i in range(1, 5)) / sum(1 / i**2 for i in range(1, 9))
    assert clean == pytest.approx(share, rel=1e-4)
    assert noisy < clean - 0.1


def test_drift_moves_the_second_gradient(tmp_path, capsys, monkeypatch):
    pairs = []
    real = bench.synthetic_gradient_pair

    @functools.wraps(real)
    def spy(shape, rank, noise, drift, gen):
        pair = real(shape, rank, noise, drift, gen)
        pairs.append((drift, *pair))
        return pair

    monkeypatch.setattr(bench_run, "synthetic_gradient_pair", spy)  # where the run calls it

    def cosines(drift: str) -> list[float]:
        pairs.clear()
        result = _run(tmp_path, capsys, "--noise", "0", "--drift", drift, "--quality-layers", "0")
        assert result["config"]["drift"] == float(drift)
        assert {d for d, _, _ in pairs} == {float(drift)}
        return [float((a * b).sum() / (a.norm() * b.norm())) for _, a, b in pairs]

    assert min(cosines("0")) == pytest.approx(1.0, abs=1e-5)  # no drift, no noise: the same
    assert max(cosines("2")) < 0.99


def test_threads_sets_torch_threads(tmp_path, capsys):
    before = torch.get_num_threads()
    try:
        result = _run(tmp_path, capsys, "--threads", "2", "--quality-layers", "0")
        assert result["config"]["threads"] == 2
        assert result["machine"]["torch_threads"] == torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert before != 2  # conftest runs the tests on one thread: the flag made the difference


def test_seed_decides_the_synthetic_gradients(tmp_path, capsys):
    a = _run(tmp_path, capsys, "--seed", "3")
    b = _run(tmp_path, capsys, "--seed", "3")
    c = _run(tmp_path, capsys, "--seed", "4")
    assert a["config"]["seed"] == 3
    assert a["exact_captured"] == b["exact_captured"] != c["exact_captured"]


def test_real_grads_adds_the_real_gradient_study(tmp_path, capsys, monkeypatch):
    # a LLaMA small enough for a test, trained for 4 steps on KJV bytes
    tiny = functools.partial(
        bench.RealGradConfig,
        hidden=32,
        intermediate=64,
        layers=1,
        heads=2,
        batch=2,
        seq_len=16,
        steps=4,
        every=2,
        train_rank=8,
        ranks=(2, 4),
    )
    monkeypatch.setattr(bench_run, "RealGradConfig", tiny)  # where the run builds it
    without = _run(tmp_path, capsys, "--quality-layers", "0")
    assert "real_gradients" not in without
    result = _run(tmp_path, capsys, "--quality-layers", "0", "--real-grads")
    real = result["real_gradients"]
    assert real["config"]["hidden"] == 32 and real["pairs"] == 7  # steps 2 → 4, 7 matrices
    assert set(real["by_rank"]) == {"2", "4"}
    for entry in real["by_rank"].values():
        exact = entry["methods"]["galorekit (svd=exact)"]
        assert exact["vs_exact_min"] == pytest.approx(1.0, abs=1e-4)
        assert 0 < entry["exact_captured"] <= 1
    assert "## Real gradients" in bench.format_markdown(result)


def test_foreach_adds_a_batched_row_per_method(tmp_path, capsys, monkeypatch):
    from galorekit.optim import galore_adamw

    built = []
    real = galore_adamw.GaLoreAdamW.__init__

    def spy(self, *args, **kwargs):
        real(self, *args, **kwargs)
        built.append(self.foreach)

    monkeypatch.setattr(galore_adamw.GaLoreAdamW, "__init__", spy)
    plain = _run(tmp_path, capsys, "--svd", "exact,warm")
    assert built == [False, False]
    built.clear()
    result = _run(tmp_path, capsys, "--svd", "exact,warm", "--foreach")
    assert built == [False, True, False, True]
    rows = _rows(result)
    assert set(rows) - set(_rows(plain)) == {
        "galorekit (svd=exact, foreach)",
        "galorekit (svd=warm, foreach)",
    }
    for svd in ("exact", "warm"):
        batched = rows[f"galorekit (svd={svd}, foreach)"]
        assert batched["quality"] == rows[f"galorekit (svd={svd})"]["quality"] is not None
        assert (
            batched["refresh_s"] > 0 and "steady_vs_adamw" in result["ratios"][batched["optimizer"]]
        )
    assert result["config"]["foreach"] is True


# ------------------------------------------------------------------ flags from BenchConfig
def _config(*argv: str) -> bench.BenchConfig:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    return bench.config_from_args(parser.parse_args(list(argv)))


def test_defaults_are_the_dataclass_defaults():
    assert {fl.name for fl in bench_config.FLAGS} >= {"model", "update_proj_gap", "svd", "seed"}
    assert _config() == bench.BenchConfig()
    assert _config("--no-reference", "--no-adamw") == bench.BenchConfig(
        reference=False, adamw=False
    )


@pytest.mark.parametrize("suffix", [".toml", ".json"])
def test_config_file_under_the_command_line(tmp_path, suffix):
    values = {"model": "tiny", "update_proj_gap": 7, "svd": "exact,warm", "reference": False}
    values |= {"noise": 1, "seed": 3}
    path = tmp_path / f"bench{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(values))
    else:
        path.write_text(
            'model = "tiny"\nupdate-proj-gap = 7\nsvd = ["exact", "warm"]\nreference = false\n'
            "noise = 1\nseed = 3\n"
        )
    cfg = _config("--config", str(path), "--seed", "5", "--svd", "warm")
    assert cfg == bench.BenchConfig(
        model="tiny", T=7, svd=("warm",), reference=False, noise=1.0, seed=5
    )
    assert _config("--config", str(path)).svd == ("exact", "warm")


@pytest.mark.parametrize("flag", ["--json", "--md"])
def test_an_output_path_that_cannot_be_written_is_refused_before_timing(tmp_path, capsys, flag):
    (tmp_path / "taken").mkdir()
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args([*FAST, flag, str(tmp_path / "taken")])
    assert bench.run(args) == 2
    captured = capsys.readouterr()
    assert (
        captured.err.startswith(f"galore bench: error: {flag} ") and "[bench]" not in captured.err
    )
    assert (tmp_path / "taken").is_dir() and not any((tmp_path / "taken").iterdir())
