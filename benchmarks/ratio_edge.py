"""Control for ``galore reproduce``'s per-group protocol: where a method's chosen ratio of the
other parameters' LR (embeddings, head, norms) to its matrix LR is the top of the grid
(``--lr-other-ratio`` 16), is a larger ratio better?

For every such group in a committed ``results.json`` this runs the same plan run (same model,
data, seed, steps, matrix LR) at twice the top ratio, two runs at a time on one thread each as
``galore reproduce`` does, and writes the comparison::

    python benchmarks/ratio_edge.py \\
        --results benchmarks/results/reproduce/results.json --out benchmarks/results/ratio_edge
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import tempfile
from pathlib import Path

from galorekit.reproduce.configs import Job
from galorekit.reproduce.plan import build_plan, full_plan_config, make_run
from galorekit.reproduce.results import RunResult
from galorekit.reproduce.worker import execute, init_worker


def edge_rows(results: dict) -> list[dict]:
    """The ratio-grid rows chosen at the grid's top."""
    return [r for r in results["per_group"]["ratio_grid"] if r["chosen"] and r["at_grid_edge"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, required=True, help="a reproduce results.json")
    parser.add_argument("--out", type=Path, required=True, help="directory for results.{json,md}")
    parser.add_argument("--factor", type=float, default=2.0, help="the ratio tried: top × this")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (one thread each)")
    args = parser.parse_args()
    results = json.loads(args.results.read_text())
    plan = build_plan(full_plan_config())
    rows = edge_rows(results)
    jobs = []
    tmp = Path(tempfile.mkdtemp(prefix="ratio-edge-"))
    for row in rows:
        ratio = row["ratio"] * args.factor
        spec = make_run(
            plan.config,
            row["group"],
            plan.config.steps,
            rank=plan.rank(4),
            lr=row["lr"],
            ratio=ratio,
        )
        jobs.append(
            (
                row,
                Job(
                    spec=spec,
                    lr=row["lr"],
                    config=plan.config,
                    run_dir=str(tmp / spec.key),
                    ratio=ratio,
                ),
            )
        )
    out_rows = []
    with cf.ProcessPoolExecutor(args.jobs, initializer=init_worker) as pool:
        futures = {pool.submit(execute, job): (row, job) for row, job in jobs}
        for future in cf.as_completed(futures):
            row, job = futures[future]
            result = RunResult.from_dict(future.result())
            out_rows.append(
                {
                    "group": row["group"],
                    "lr": row["lr"],
                    "chosen_ratio": row["ratio"],
                    "chosen_eval_ppl": row["eval_ppl"],
                    "tried_ratio": job.ratio,
                    "tried_eval_ppl": result.eval_ppl,
                    "tried_status": result.status,
                    "cpu_seconds": result.cpu_seconds,
                }
            )
    out_rows.sort(key=lambda r: r["group"])
    args.out.mkdir(parents=True, exist_ok=True)
    command = f"python benchmarks/ratio_edge.py --results {args.results} --out {args.out}" + (
        f" --factor {args.factor:g}" if args.factor != 2.0 else ""
    )
    (args.out / "results.json").write_text(
        json.dumps({"command": command, "rows": out_rows}, indent=2) + "\n"
    )
    lines = [
        "# Per-group protocol: the ratio grid's edge, checked",
        "",
        f"Command: `{command}`",
        "",
        "| group | matrix LR | chosen ratio | eval ppl | ratio tried | eval ppl | tried vs chosen |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in out_rows:
        tried = r["tried_eval_ppl"]
        delta = f"{tried / r['chosen_eval_ppl'] - 1:+.1%}" if tried else r["tried_status"]
        lines.append(
            f"| {r['group']} | {r['lr']:g} | {r['chosen_ratio']:g} | {r['chosen_eval_ppl']:.2f} "
            f"| {r['tried_ratio']:g} | {tried:.2f} | {delta} |"
            if tried
            else f"| {r['group']} | {r['lr']:g} | {r['chosen_ratio']:g} | "
            f"{r['chosen_eval_ppl']:.2f} | {r['tried_ratio']:g} | – | {delta} |"
        )
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
