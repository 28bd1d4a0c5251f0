"""``galore reproduce``: the successors section, the matrix LR's neighbour search used by every
per-group run, the theory and long runs under per-group LRs, and a plan that only adds runs
continuing from the cache (issue 19's last items). Fake runs (``test_reproduce.Recorder``)."""

from __future__ import annotations

import json
import math

import pytest

from galorekit.reproduce import cli
from galorekit.reproduce.configs import Job, method_config
from galorekit.reproduce.plan import SECTIONS, build_plan, full_plan_config
from galorekit.reproduce.report import write_report
from galorekit.reproduce.results import load_results
from galorekit.reproduce.runner import PlanMismatchError, prepare_output_dir, run_plan
from test_reproduce import TINY_TABLE, Recorder, fresh, parse, tiny_config

# the fake's best LR is 0.005; this grid straddles it, so the grid picks 0.01 (the tie's first
# point) and the neighbour search ÷ 2 finds 0.005
PER_GROUP = {
    "lr_grid": (0.01, 0.0025),
    "grid_fraction": 1.0,
    "lr_other_ratios": (1.0, 4.0),
    "batch_factors": (2,),
}


def quiet(message: str) -> None:
    pass


def test_full_plan_successors_section_and_its_search():
    plan = build_plan(full_plan_config())
    assert "successors" in SECTIONS and plan.config.lr_neighbour_factor == 2.0
    methods = [m for m, _ in plan.successors]
    assert (
        methods
        == [m for m, _ in plan.successors_tuned]
        == [
            "fira_adamw",
            "apollo_adamw",
            "apollo_mini",
            "q_galore_adamw8bit",
            "golore_adamw",
        ]
    )
    for method, key in [*plan.successors, *plan.successors_tuned]:
        spec = plan.runs[key]
        # each its own search: LR grid, ratio grid, neighbours (no GaLore grid shared)
        assert spec.lr_group == method and spec.lr is None
        assert len(plan.grid[method]) == 4 and len(plan.neighbours[method]) == 2
        assert spec.rank == (1 if method == "apollo_mini" else 32)
    # the section reports the table's AdamW and GaLore d/4 rows: the same runs, not new ones
    keys = plan.section_keys("successors")
    table = {(r.method, r.rank_divisor, k) for r, k in [*plan.table, *plan.table_tuned]}
    wanted = {("adamw", None), ("galore_adamw", 4), ("galore_adamw8bit", 4)}
    reference = [k for m, d, k in table if (m, d) in wanted]
    assert len(reference) == 6 and set(reference) <= set(keys) and len(keys) == 6 + 10
    # the per-group theory and 4x-longer runs
    assert plan.runs[plan.theory_tuned].ratio is None
    assert plan.runs[plan.theory_tuned].kind == "theory"
    (_, short), (_, long) = plan.long_tuned
    assert (plan.runs[long].rank, plan.runs[long].steps, plan.runs[long].ratio) == (16, 1600, None)
    assert short == dict((d, k) for d, k in plan.ranks_tuned)[2]


def test_successors_keep_their_own_alpha_and_rank():
    cfg = full_plan_config()
    plan = build_plan(cfg)
    scale = {
        m: method_config(plan.runs[k], 0.01, cfg).scale
        for m, k in [*plan.successors, *plan.reference_rows(plan.table)]
    }
    assert scale["galore_adamw"] == scale["fira_adamw"] == cfg.scale == 0.25
    assert scale["apollo_adamw"] == 1.0 and scale["apollo_mini"] == pytest.approx(math.sqrt(128))


def test_every_per_group_run_trains_at_the_re_searched_lr(tmp_path):
    plan = build_plan(tiny_config(**PER_GROUP, lr_neighbour_factor=2.0, successors=("fira_adamw",)))
    out = fresh(plan, tmp_path / "out")
    recorder = Recorder()
    summary = run_plan(plan, plan.select(SECTIONS), out, jobs=1, execute=recorder, log=quiet)
    assert summary.ok
    results = load_results(out)
    jobs = {j.spec.key: j for j in recorder.jobs}
    for group in ("adamw", "galore_adamw", "lora", "fira_adamw"):
        assert [lr for lr, _ in plan.grid[group]] == [0.01, 0.0025]
        down = dict(plan.neighbours[group])[-1]
        assert math.isclose(results[down].lr, 0.005)  # the neighbour won
    tuned = [k for k, s in plan.runs.items() if s.ratio is None and not s.lr_step]
    assert len(tuned) > 10  # rows, ablations, batch, long, theory, successor
    for key in tuned:
        result = results[key]
        assert math.isclose(result.lr, 0.005), key
        # AdamW's other parameters want 4x in the fake, the rest 1x
        assert result.lr_other_ratio == (4.0 if plan.runs[key].method == "adamw" else 1.0)
    # a run trained with the final pair is the winning neighbour run, or a new run at that pair
    assert all(math.isclose(jobs[k].lr, 0.005) for k in tuned if k in jobs)

    report = write_report(plan, out, sections=SECTIONS, env={})
    fair = report.data["per_group"]
    assert fair["tuned"]["galore_adamw"] == [0.005, 1.0]
    edges = {(r["group"], r["step"]) for r in fair["neighbours"] if r["at_edge"]}
    assert ("galore_adamw", -1) in edges and ("adamw", -1) in edges
    claims = {c["claim"]: c for c in fair["claims"]}
    assert "gradients become low-rank during training" in claims
    long = claims["a small rank trained 4× longer beats a large rank"]
    long_ppl = results[plan.long_tuned[1][1]].eval_ppl
    short_ppl = results[plan.long_tuned[0][1]].eval_ppl
    assert long["ours"] == f"{long_ppl:.2f} vs {short_ppl:.2f}"
    assert (
        fair["theory"]["table_galore_ppl"]
        == results[dict(plan.table_tuned)[plan.table[1][0]]].eval_ppl
    )
    md = report.markdown
    assert "trains at this final pair" in md and "not searched again" not in md
    assert "## The matrix LR searched again at the chosen ratio" in md
    assert "## Low-rank gradients, observed — per-group-tuned LRs" in md


def test_successors_report_both_protocols_with_state_bytes_and_papers(tmp_path):
    plan = build_plan(tiny_config(**PER_GROUP, successors=("fira_adamw", "apollo_mini")))
    out = fresh(plan, tmp_path / "out")
    recorder = Recorder()
    assert run_plan(plan, plan.select(["successors"]), out, jobs=1, execute=recorder, log=quiet).ok
    # the section needs AdamW's and GaLore's searches and the successors' own, nothing else
    groups = {j.spec.lr_group or j.spec.method for j in recorder.jobs}
    assert {j.spec.method for j in recorder.jobs} == {
        "adamw", "galore_adamw", "fira_adamw", "apollo_mini"
    }  # fmt: skip
    assert groups <= {"adamw", "galore_adamw", "fira_adamw", "apollo_mini"}
    report = write_report(plan, out, sections=("successors",), env={})
    data = report.data["successors"]
    results = load_results(out)
    for protocol, table in (("paper_protocol", plan.table), ("per_group", plan.table_tuned)):
        rows = {r["method"]: r for r in data[protocol]}
        assert list(rows) == ["adamw", "galore_adamw", "fira_adamw", "apollo_mini"]
        galore_key = dict(((r.method, r.rank_divisor), k) for r, k in table)["galore_adamw", 4]
        galore = results[galore_key].eval_ppl
        assert rows["galore_adamw"]["eval_ppl"] == galore
        assert rows["fira_adamw"]["vs_galore"] == pytest.approx(
            rows["fira_adamw"]["eval_ppl"] / galore
        )
        # state bytes: the held state after a step; APOLLO-Mini's rank-1 matrices hold the least
        held = {m: r["state_bytes"] for m, r in rows.items()}
        assert held["apollo_mini"] < held["galore_adamw"] < held["adamw"]
        matrices = {m: r["matrix_state_bytes_estimate"] for m, r in rows.items()}
        assert matrices["apollo_mini"] < matrices["fira_adamw"] < matrices["adamw"]
        assert rows["fira_adamw"]["paper_60m_ppl"] == 31.06
        assert rows["fira_adamw"]["paper_vs_galore"] == pytest.approx(31.06 / 34.88)
        assert rows["apollo_mini"]["paper_60m_ppl"] is None
    # the paper's protocol's rows are the ratio-1 runs; the per-group ones their search's winners
    paper = {r["method"]: r for r in data["paper_protocol"]}
    assert paper["adamw"]["lr_other_ratio"] == 1.0
    assert {r["method"]: r["lr_other_ratio"] for r in data["per_group"]}["adamw"] == 4.0
    assert "## GaLore's successors" in report.markdown
    assert "| fira_adamw |" in report.markdown and "31.06" in report.markdown


def test_a_plan_that_only_adds_runs_continues_from_the_cache(tmp_path):
    base = tiny_config(**PER_GROUP, lr_neighbour_factor=None)
    plan = build_plan(base)
    out = fresh(plan, tmp_path / "out")
    first = Recorder()
    assert run_plan(plan, plan.select(["table"]), out, jobs=1, execute=first, log=quiet).ok
    # the neighbours and the successors: more runs, the recorded ones unchanged
    wider = build_plan(tiny_config(**PER_GROUP, successors=("golore_adamw",)))
    prepare_output_dir(wider, out, overwrite=False)
    assert json.loads((out / "plan.json").read_text())["config"]["successors"] == ["golore_adamw"]
    second = Recorder()
    assert run_plan(wider, wider.select(SECTIONS), out, jobs=1, execute=second, log=quiet).ok
    # the LR grids and ratio grids are not trained again
    tuning = {k for g in plan.grid for k in plan.tuning_keys(g)}
    assert tuning and not tuning & set(second.keys)
    assert set(second.keys) <= set(wider.runs) - set(first.keys) | {
        k
        for k, s in plan.runs.items()
        if s.ratio is None  # the per-group rows: a new pair
    }
    # a plan dropping a recorded run, or changing what every run depends on, is another plan
    for other in (
        tiny_config(**PER_GROUP, table=plan.config.table[:2]),
        tiny_config(**PER_GROUP, seed=5),
    ):
        with pytest.raises(PlanMismatchError, match="another plan"):
            prepare_output_dir(build_plan(other), out, overwrite=False)


def test_quick_plan_has_no_successors_section(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(
        cli, "plan_config_from_args", lambda args: tiny_config(grid_fraction=0.0, name="quick")
    )
    rc = cli.run(parse("--quick", "--only", "successors", "--output-dir", str(tmp_path / "o")))
    err = capsys.readouterr().err
    assert rc == 2 and "galore reproduce: error: the quick plan has no successors section" in err
    assert not (tmp_path / "o").exists()


def test_job_identity_of_a_successor_names_its_method():
    plan = build_plan(full_plan_config())
    spec = plan.runs[dict(plan.successors)["apollo_mini"]]
    run = Job(spec, 0.005, plan.config, "").identity["run"]
    assert (run["method"], run["rank"], run["lr"]) == ("apollo_mini", 1, 0.005)


@pytest.mark.slow
def test_real_successor_and_per_group_theory_runs(pretrain_corpus, tmp_path):
    """For real on llama_tiny: the successors train through the plan (APOLLO-Mini at its own
    rank and α), and the per-group theory run trains exactly like its table twin (the ratio
    reaches the instrumented loop)."""
    from galorekit.reproduce.runner import warm_data_cache

    cfg = tiny_config(
        pretrain_corpus,
        steps=4,
        table=TINY_TABLE[:2],
        lr_grid=(0.01,),
        grid_fraction=1.0,
        lr_other_ratios=(1.0, 4.0),
        lr_neighbour_factor=2.0,
        ablation_gaps=(),
        ablation_rank_divisors=(),
        long_rank_divisor=None,
        theory_points=2,
        successors=("apollo_mini", "fira_adamw"),
    )
    plan = build_plan(cfg)
    out = fresh(plan, tmp_path / "out")
    warm_data_cache(plan)
    specs = plan.select(["theory", "successors"])
    summary = run_plan(plan, specs, out, jobs=1, log=quiet)
    assert summary.ok
    results = load_results(out)
    assert all(results[s.key].ok for s in specs)
    theory = results[plan.theory_tuned]
    twin = results[
        dict(((r.method, r.rank_divisor), k) for r, k in plan.table_tuned)["galore_adamw", 4]
    ]
    assert theory.lr_other_ratio == twin.lr_other_ratio and theory.lr == twin.lr
    assert theory.eval_ppl == pytest.approx(twin.eval_ppl, rel=1e-6)
    # its row is its grid's run (the one LR of this grid): that run's config
    mini_run = out / "runs" / plan.grid["apollo_mini"][0][1] / "config.json"
    mini = json.loads(mini_run.read_text())
    assert mini["rank"] == 1 and mini["scale"] == pytest.approx(128**0.5)
