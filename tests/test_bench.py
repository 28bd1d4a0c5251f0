"""``galore bench`` / benchmarks/optimizer_step.py on tiny shapes: the fields, the arithmetic of the
report and the CLI."""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
from pathlib import Path

import pytest
import torch

from galorekit import bench

TINY = dict(model="tiny", rank=8, steady_steps=2, cycles=1, T=50, quality_layers=1)


@pytest.fixture(scope="module")
def result() -> dict:
    # without galore-torch: importing it (and bitsandbytes with it) takes longer than the run
    return bench.run_benchmark(bench.BenchConfig(**TINY, reference=False))


def test_result_fields(result: dict) -> None:
    names = [row["optimizer"] for row in result["results"]]
    assert names == [
        bench.ADAMW,
        "galorekit (svd=exact)",
        "galorekit (svd=randomized)",
        "galorekit (svd=warm)",
        "galorekit (svd=power)",
    ]
    assert result["config"]["rank"] == 8 and result["config"]["layers"] == 2
    assert result["shapes"] == {"matrices": 14, "weights": 2 * (4 * 64 * 64 + 3 * 176 * 64)}
    assert result["machine"]["torch_threads"] >= 1
    for row in result["results"]:
        assert len(row["steady_samples"]) == 1 * 2 + (1 if row["optimizer"] == bench.ADAMW else 0)
        assert row["steady_s"] == pytest.approx(statistics.median(row["steady_samples"]))
        assert row["steady_s"] > 0 and row["state_bytes"] > 0
        if row["optimizer"] == bench.ADAMW:
            assert row["refresh_s"] is None and row["amortized_s"] == row["steady_s"]
            assert row["quality"] is None
            continue
        assert len(row["refresh_samples"]) == 1
        expected = (row["refresh_s"] + 49 * row["steady_s"]) / 50
        assert row["amortized_s"] == pytest.approx(expected)
        assert row["refresh_overhead_s"] == pytest.approx(row["refresh_s"] - row["steady_s"])
        q = row["quality"]
        assert q["matrices"] == 7
        assert 0 < q["captured"] <= 1 and 0.9 < q["vs_exact_min"] <= q["vs_exact_mean"] <= 1 + 1e-5


def test_state_bytes_are_what_each_optimizer_keeps(result: dict) -> None:
    rows = {row["optimizer"]: row for row in result["results"]}
    weights = result["shapes"]["weights"]
    # AdamW: two float32 moments per weight (+ a scalar float32 step tensor per matrix)
    assert rows[bench.ADAMW]["state_bytes"] == 2 * 4 * weights + 14 * 4
    # GaLore: the projector (smaller side × r) and two moments of the projected size r × larger side
    shapes = [s for _, s in bench.model_shapes("tiny")]
    galore = sum(4 * (min(m, n) * 8 + 2 * max(m, n) * 8) for m, n in shapes)
    for svd in ("exact", "randomized", "warm", "power"):
        assert rows[f"galorekit (svd={svd})"]["state_bytes"] == galore


def test_exact_has_exact_quality(result: dict) -> None:
    quality = {row["optimizer"]: row["quality"] for row in result["results"]}
    exact = quality["galorekit (svd=exact)"]
    assert exact["vs_exact_min"] == pytest.approx(1.0, abs=1e-4)
    assert exact["captured"] == pytest.approx(result["exact_captured"], rel=1e-4)


def _timing(row: dict) -> bench.Timing:
    return bench.Timing(
        refreshes=row["refresh_s"] is not None, steps={(c, k): t for c, k, t in row["steps"]}
    )


def test_ratios_are_paired(result: dict) -> None:
    """steady: median over back-to-back steady steps of ours / AdamW; amortized: median over
    cycles of the per-cycle amortized ratio."""
    rows = {row["optimizer"]: row for row in result["results"]}
    adamw = _timing(rows[bench.ADAMW])
    assert set(result["ratios"]) == {
        f"galorekit (svd={s})" for s in ("exact", "randomized", "warm", "power")
    }
    for name, r in result["ratios"].items():
        assert set(r) == {"steady_vs_adamw", "amortized_vs_adamw"}
        ours = _timing(rows[name])
        steady = [ours.steps[(1, k)] / adamw.steps[(1, k)] for k in (1, 2)]
        assert r["steady_vs_adamw"] == pytest.approx(statistics.median(steady))
        amortized = ours.steps[(1, 0)] + 49 * statistics.median(ours.steps[(1, k)] for k in (1, 2))
        amortized /= 50 * statistics.median(adamw.steps[(1, k)] for k in (0, 1, 2))
        assert r["amortized_vs_adamw"] == pytest.approx(amortized)


def test_paired_ratios_cancel_a_load_change() -> None:
    """The machine gets twice as slow in cycle 2: paired ratios still say 'half as fast'."""
    base = bench.Timing(refreshes=True)
    ours = bench.Timing(refreshes=True)
    for cycle, slow in ((1, 1.0), (2, 2.0), (3, 2.0)):
        base.steps.update({(cycle, 0): 10.0 * slow, (cycle, 1): 1.0 * slow, (cycle, 2): slow})
        ours.steps.update({(cycle, 0): 4.0 * slow, (cycle, 1): 2.0 * slow, (cycle, 2): 2 * slow})
    r = bench.paired_ratios(ours, base, T=10)
    assert r["steady"] == pytest.approx(2.0)
    assert r["refresh_speedup"] == pytest.approx(2.5)
    assert r["refresh_overhead_speedup"] == pytest.approx(9.0 / 2.0)
    assert r["amortized"] == pytest.approx((4 + 9 * 2) / (10 + 9 * 1))


@pytest.mark.slow
def test_against_galore_torch() -> None:
    """With galore-torch (a dev dependency): its row, the same state size, exact quality, and the
    ratios against it."""
    result = bench.run_benchmark(bench.BenchConfig(**TINY, svd=("exact", "warm")))
    rows = {row["optimizer"]: row for row in result["results"]}
    ref = rows[bench.REFERENCE]
    assert list(rows)[:2] == [bench.ADAMW, bench.REFERENCE]
    assert ref["state_bytes"] == rows["galorekit (svd=exact)"]["state_bytes"]
    assert ref["quality"]["vs_exact_min"] == pytest.approx(1.0, abs=1e-4)
    ref_t = _timing(ref)
    for name in ("galorekit (svd=exact)", "galorekit (svd=warm)"):
        r, ours = result["ratios"][name], _timing(rows[name])
        assert set(r) == {
            "steady_vs_reference",
            "amortized_vs_reference",
            "refresh_speedup_vs_reference",
            "refresh_overhead_speedup_vs_reference",
            "steady_vs_adamw",
            "amortized_vs_adamw",
        }
        assert r["refresh_speedup_vs_reference"] == pytest.approx(
            ref_t.steps[(1, 0)] / ours.steps[(1, 0)]
        )
        assert r["amortized_vs_reference"] == pytest.approx(
            ours.amortized_in(1, 50) / ref_t.amortized_in(1, 50)
        )
        overhead = (ref_t.steps[(1, 0)] - ref_t.steady_in(1)) / (
            ours.steps[(1, 0)] - ours.steady_in(1)
        )
        assert r["refresh_overhead_speedup_vs_reference"] == pytest.approx(overhead)


def test_reports(result: dict) -> None:
    table = bench.format_table(result)
    assert table.count("\n") == 1 + len(result["results"])
    markdown = bench.format_markdown(result, "galore bench --model tiny")
    assert "    galore bench --model tiny" in markdown and table in markdown
    json.loads(json.dumps(result))  # JSON-ready


def test_synthetic_gradients_are_low_rank_plus_noise_and_drift() -> None:
    gen = torch.Generator().manual_seed(0)
    a, b = bench.synthetic_gradient_pair((60, 40), 5, noise=0.1, drift=0.3, gen=gen)
    assert a.shape == b.shape == (60, 40)
    # signal in 2·rank = 10 directions, then a noise floor
    s = torch.linalg.svdvals(a)
    assert float(s[:10].square().sum() / s.square().sum()) > 0.97
    assert float(s[9] / s[0]) == pytest.approx(0.1, rel=0.3)  # σ_i ∝ 1/i
    # the second gradient drifted: related but not equal
    cos = float((a * b).sum() / (a.norm() * b.norm()))
    assert 0.3 < cos < 0.99


def test_model_shapes() -> None:
    shapes = bench.model_shapes("130m")
    assert len(shapes) == 12 * 7
    assert shapes[:7] == [
        ("layers.0.q_proj", (768, 768)),
        ("layers.0.k_proj", (768, 768)),
        ("layers.0.v_proj", (768, 768)),
        ("layers.0.o_proj", (768, 768)),
        ("layers.0.gate_proj", (2048, 768)),
        ("layers.0.up_proj", (2048, 768)),
        ("layers.0.down_proj", (768, 2048)),
    ]
    assert sum(m * n for _, (m, n) in shapes) == 12 * (4 * 768 * 768 + 3 * 2048 * 768)
    assert len(bench.model_shapes("1b", layers=2)) == 14
    assert bench.model_shapes("1b", layers=1)[4][1] == (5461, 2048)


def test_config_validation() -> None:
    assert bench.BenchConfig(model="LLaMA-60M").model == "60m"
    assert bench.BenchConfig(model="1b").effective_rank == 512
    assert bench.BenchConfig(model="tiny").effective_rank == 16
    with pytest.raises(ValueError, match=r"unknown model 'x'.*60m"):
        bench.BenchConfig(model="x")
    with pytest.raises(ValueError, match=r"unknown svd method.*exact"):
        bench.BenchConfig(svd=("fast",))
    with pytest.raises(ValueError, match="cycles"):
        bench.BenchConfig(cycles=0)


def test_too_big_for_memory_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """The free-memory check is galorekit.memory's, with bench's advice."""
    import galorekit.memory.measure as measure

    monkeypatch.setattr(measure, "available_memory", lambda device: 2**30)
    with pytest.raises(measure.InsufficientMemoryError, match=r"LLaMA-1b with 24 layers.*--layers"):
        bench.run_benchmark(bench.BenchConfig(model="1b"))


def test_cli_writes_json_and_markdown(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    out, md = tmp_path / "r.json", tmp_path / "r.md"
    args = parser.parse_args(
        [
            "--model", "tiny", "--layers", "1", "--rank", "4", "--steady-steps", "1",
            "--cycles", "1", "--svd", "warm", "--no-reference", "--quality-layers", "0",
            "--json", str(out), "--md", str(md),
        ]
    )  # fmt: skip
    assert bench.run(args) == 0
    data = json.loads(out.read_text())
    assert [row["optimizer"] for row in data["results"]] == [bench.ADAMW, "galorekit (svd=warm)"]
    assert data["exact_captured"] is None
    assert math.isfinite(data["ratios"]["galorekit (svd=warm)"]["amortized_vs_adamw"])
    assert "galorekit (svd=warm)" in md.read_text()
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600
    assert "| torch AdamW (foreach)" in capsys.readouterr().out


def test_cli_rejects_bad_input(capsys: pytest.CaptureFixture) -> None:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    assert bench.run(parser.parse_args(["--svd", "exact,nope"])) == 2
    assert "valid: exact, randomized, warm" in capsys.readouterr().err


def test_shapes_and_ranks_come_from_the_model_registry() -> None:
    from galorekit.models.registry import NAMED_SHAPES

    assert set(bench.llama_shapes()) == {n.removeprefix("llama_") for n in NAMED_SHAPES}
    for name, shape in NAMED_SHAPES.items():
        short = name.removeprefix("llama_")
        shapes = bench.model_shapes(short)
        assert len(shapes) == 7 * shape.num_hidden_layers
        assert shapes[4][1] == (shape.intermediate_size, shape.hidden_size)
        expected = bench.PAPER_RANKS.get(name, shape.hidden_size // 4)
        assert bench.BenchConfig(model=short).effective_rank == bench.paper_rank(name) == expected
    assert bench.paper_rank("7b") == 1024 and bench.paper_rank("350m") == 256


def test_parser_imports_neither_torch_nor_transformers() -> None:
    """``galore --help`` builds this parser: it must stay light."""
    import subprocess
    import sys

    code = (
        "import argparse, sys; import galorekit.bench as b; "
        "b.add_arguments(argparse.ArgumentParser()); "
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
