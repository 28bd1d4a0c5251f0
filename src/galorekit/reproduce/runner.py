"""Execute a plan: worker processes, dependencies on the LR grids, a result cache per run.

- The output directory holds ``plan.json``; a directory holding another plan's results is refused
  (``PlanMismatchError``, naming the differing settings) unless ``overwrite``, which removes what
  ``galore reproduce`` wrote there (``OUTPUT_NAMES``) and nothing else. A plan that only adds
  runs (``extends``: new sections, successors, the LR's neighbours) is not another plan: it
  continues from the cached runs.
- A finished run's result is ``runs/<key>.json``; a run whose result is there (with the same
  identity) is never run again, so an interrupted reproduce continues where it stopped (a run that
  was cut short starts again from its beginning).
- ``jobs`` worker processes (``spawn``ed, one thread each) run the runs; a run starts once the LR
  grid it takes its learning rate from has finished. Among the runs ready to start, grid runs go
  first (those whose LR most runs wait for first), then the longest runs.
- ``jobs=1`` runs everything in this process.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import multiprocessing
import sys
import time
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from galorekit.atomic import atomic_write_json, present_outputs, replace_outputs
from galorekit.data import build_tokenizer, load_pretraining_data
from galorekit.reproduce import worker
from galorekit.reproduce.configs import SHARED_SETTINGS, Job, data_config
from galorekit.reproduce.plan import Plan, RunSpec
from galorekit.reproduce.results import (
    OUTPUT_NAMES,
    RunResult,
    load_result,
    run_dir,
    save_result,
)
from galorekit.reproduce.tuning import TuningError, ready, resolve

PLAN_FILE = "plan.json"
PLAN_FORMAT = 1

Executor = Callable[[Job], dict[str, Any]]


class PlanMismatchError(FileExistsError):
    """The output directory holds the results of another plan."""


@dataclass
class RunSummary:
    """What a ``run_plan`` call did: runs executed here, reused from the cache, failed (key →
    error), and those that could not start because a run they need failed."""

    executed: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    blocked: dict[str, str] = field(default_factory=dict)
    results: dict[str, RunResult] = field(default_factory=dict)
    interrupted: bool = False

    @property
    def ok(self) -> bool:
        return not (self.failed or self.blocked or self.interrupted)


# ------------------------------------------------------------------------ output directory
def _plan_record(plan: Plan) -> dict[str, Any]:
    return {"format": PLAN_FORMAT, "config": plan.config.to_dict()}


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    keys = list(dict.fromkeys([*old, *new]))
    diffs = []
    for k in keys:
        if old.get(k) != new.get(k):
            a, b = json.dumps(old.get(k)), json.dumps(new.get(k))
            if len(a) + len(b) > 120:
                a, b = "…", "(changed)"
            diffs.append(f"{k}: {a} there, {b} now")
    return diffs


def check_output_dir(plan: Plan, out: Path, *, overwrite: bool) -> list[str]:
    """The names of our files already in ``out``; raises ``PlanMismatchError`` when they belong to
    another plan and ``overwrite`` is off. Changes nothing."""
    # an empty folder (a ``runs/`` left by a cleaned-up checkout) holds no results to protect
    present = present_outputs(out, OUTPUT_NAMES, empty_dirs=False)
    if not present or overwrite:
        return present
    record_path = out / PLAN_FILE
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PlanMismatchError(
            f"{out} holds {', '.join(present)} but no {PLAN_FILE}: not a galore reproduce "
            "directory of this plan; pass --overwrite to replace those, or another --output-dir"
        ) from None
    except (OSError, ValueError) as err:
        raise PlanMismatchError(
            f"{record_path} is unreadable ({err}); pass --overwrite to start again"
        ) from None
    # a setting missing from the record (added to PlanConfig later) counts as None
    diffs = _differences(record.get("config") or {}, plan.config.to_dict())
    if record.get("format") != PLAN_FORMAT or (diffs and not extends(record, plan)):
        raise PlanMismatchError(
            f"{out} holds the results of another plan ({'; '.join(diffs) or 'another format'}); "
            "pass --overwrite to replace them, or another --output-dir"
        )
    return present


def extends(record: dict[str, Any], plan: Plan) -> bool:
    """Whether ``plan`` only adds runs to the recorded plan: the same shared settings (every
    run's identity) and table length, and every recorded run in it with the same spec. Its
    cached results are then reused (each still checked against its identity)."""
    old = record.get("config") or {}
    new = plan.config.to_dict()
    if any(old.get(k) != new.get(k) for k in (*SHARED_SETTINGS, "steps")):
        return False
    runs = record.get("runs")
    if not isinstance(runs, dict):
        return False
    mine = {k: json.loads(json.dumps(s.to_dict())) for k, s in plan.runs.items()}
    return all(mine.get(key) == spec for key, spec in runs.items())


def prepare_output_dir(plan: Plan, out: Path, *, overwrite: bool) -> None:
    """Check ``out`` (see ``check_output_dir``), clear our files when overwriting, write
    ``plan.json``."""
    present = check_output_dir(plan, out, overwrite=overwrite)
    replace_outputs(out, present if overwrite else ())
    record = {**_plan_record(plan), "runs": {k: s.to_dict() for k, s in plan.runs.items()}}
    atomic_write_json(out / PLAN_FILE, record)


def cached_results(plan: Plan, out: Path, specs: list[RunSpec]) -> dict[str, RunResult]:
    """Results in ``out`` that are still valid: a fixed-LR run's identity must match; a tuned
    run's is checked once its LR is known (``run_plan``)."""
    found: dict[str, RunResult] = {}
    for spec in specs:
        result = load_result(out, spec.key)
        if result is not None:
            found[spec.key] = result
    return found


def warm_data_cache(plan: Plan) -> None:
    """Build the tokenizer and token cache once, here, before the workers read them."""
    data_cfg = data_config(plan.config)
    load_pretraining_data(data_cfg, build_tokenizer(data_cfg))


# ---------------------------------------------------------------------------------- running
class _InlineExecutor:
    """``submit`` runs the call at once, in this process (``jobs=1``)."""

    def submit(self, fn: Callable[..., Any], *args: Any) -> cf.Future:
        future: cf.Future = cf.Future()
        try:
            future.set_result(fn(*args))
        except Exception as err:
            future.set_exception(err)
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        pass


def _priority(plan: Plan, spec: RunSpec) -> tuple[int, int, int]:
    """Sort key among ready runs: grid runs first (by how many runs wait for their group), then
    the longest runs first (so that the last minutes are not one long run alone)."""
    if spec.key in {k for group in plan.grid for k in plan.tuning_keys(group)}:
        group = spec.method
        waiting = sum(1 for s in plan.runs.values() if s.lr_group == group)
        return (0, -waiting, 0)
    return (1, -spec.steps, 0)


def default_log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_plan(
    plan: Plan,
    specs: list[RunSpec],
    out: Path,
    *,
    jobs: int = 2,
    execute: Executor | None = None,
    log: Callable[[str], None] = default_log,
) -> RunSummary:
    """Run ``specs`` (``plan.select(...)``'s) into ``out`` (already prepared), reusing cached
    results; see the module docstring."""
    execute = execute or worker.execute  # looked up at call time: tests replace it
    summary = RunSummary()
    results = cached_results(plan, out, specs)
    pending: list[RunSpec] = []
    for spec in specs:
        if spec.key in results and _valid(plan, spec, results):
            summary.cached.append(spec.key)
        else:
            results.pop(spec.key, None)
            pending.append(spec)
    summary.results = results
    if not pending:
        return summary
    total = len(pending)
    repeats = sum(plan.repeats_grid(s) for s in pending)
    log(
        f"{len(summary.cached)} runs cached, {total - repeats} to run with {jobs} worker(s)"
        + (f" ({repeats} table rows will be their grid's winning run)" if repeats else "")
    )
    if jobs > 1:
        pool: Any = cf.ProcessPoolExecutor(
            max_workers=jobs,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=worker.init_worker,
        )
    else:
        pool = _InlineExecutor()
    running: dict[cf.Future, RunSpec] = {}
    started = time.perf_counter()
    try:
        while pending or running:
            # start what can start (a tuned run once its grid is done)
            startable = [s for s in pending if ready(plan, s, results)]
            startable.sort(key=lambda s: _priority(plan, s))
            reused = False
            for spec in startable:
                if len(running) >= jobs or summary.interrupted:
                    break
                pending.remove(spec)
                try:
                    lr, ratio = resolve(plan, spec, results)
                except TuningError as err:
                    summary.blocked[spec.key] = str(err)
                    continue
                cached = load_result(out, spec.key)  # a tuned run's LRs are known only now
                if cached is not None and not _same_identity(cached, plan, spec, lr, ratio):
                    cached = None
                twin = _tuning_twin(plan, spec, lr, ratio, results)
                if cached is None and twin is not None:
                    # the winning tuning run is this row (full-length grids): stored under the
                    # row's key too, so that the report and the next invocation find it there
                    cached = replace(results[twin], key=spec.key)
                    save_result(out, cached)
                if cached is not None:
                    results[spec.key] = cached
                    summary.cached.append(spec.key)
                    reused = True
                    continue
                job = Job(
                    spec=spec,
                    lr=lr,
                    config=plan.config,
                    run_dir=str(run_dir(out, spec.key)),
                    ratio=ratio,
                )
                running[pool.submit(execute, job)] = spec
            if summary.interrupted and not running:
                break
            if not running:
                if reused:  # a reused result may complete a grid: look again
                    continue
                for spec in pending:  # waiting on a grid run that failed
                    summary.blocked[spec.key] = f"its LR grid ({spec.lr_group}) did not finish"
                break
            done, _ = cf.wait(list(running), return_when=cf.FIRST_COMPLETED)
            for future in done:
                spec = running.pop(future)
                try:
                    result = RunResult.from_dict(future.result())
                except worker.RunInterrupted:
                    summary.interrupted = True
                    continue
                except BrokenProcessPool as err:  # a worker died (out of memory?)
                    summary.failed[spec.key] = f"worker process died: {err}"
                    log(f"FAILED {spec.key}: worker process died ({err})")
                    summary.interrupted = True
                    continue
                except Exception as err:  # a broken run: reported, not cached, the rest go on
                    summary.failed[spec.key] = f"{type(err).__name__}: {err}"
                    log(f"FAILED {spec.key}: {type(err).__name__}: {err}")
                    continue
                save_result(out, result)
                results[spec.key] = result
                summary.executed.append(spec.key)
                log(_progress_line(len(summary.executed), total, result, started))
    except KeyboardInterrupt:
        summary.interrupted = True
        log("interrupted: stopping the running runs at the end of their step …")
        pool.shutdown(wait=True, cancel_futures=True)
        return summary
    pool.shutdown(wait=True)
    return summary


def _valid(plan: Plan, spec: RunSpec, results: dict[str, RunResult]) -> bool:
    """A cached result is reused when its identity is the one the run would have now (its LRs
    resolved from the cached grids)."""
    if not ready(plan, spec, results):
        return False
    try:
        lr, ratio = resolve(plan, spec, results)
    except TuningError:
        return False
    return _same_identity(results[spec.key], plan, spec, lr, ratio)


def _identity(plan: Plan, spec: RunSpec, lr: float, ratio: float) -> Any:
    job = Job(spec=spec, lr=lr, config=plan.config, run_dir="", ratio=ratio)
    return json.loads(json.dumps(job.identity))


def _same_identity(
    result: RunResult, plan: Plan, spec: RunSpec, lr: float, ratio: float = 1.0
) -> bool:
    return result.status in ("ok", "diverged") and result.identity == _identity(
        plan, spec, lr, ratio
    )


def _tuning_twin(
    plan: Plan, spec: RunSpec, lr: float, ratio: float, results: dict[str, RunResult]
) -> str | None:
    """The finished tuning run of ``spec``'s group that ``spec`` at ``lr``, ``ratio`` would
    repeat exactly, or None."""
    if spec.lr_group is None:
        return None
    wanted = _identity(plan, spec, lr, ratio)
    for key in plan.tuning_keys(spec.lr_group):
        if key != spec.key and key in results and results[key].identity == wanted:
            return key
    return None


def _progress_line(n: int, total: int, result: RunResult, started: float) -> str:
    elapsed = time.perf_counter() - started
    if result.ok:
        outcome = f"ppl {result.eval_ppl:.2f}"
    else:
        outcome = f"{result.status}: {result.error or ''}"
    return (
        f"[{n}/{total}] {result.key}: {outcome} (lr {result.lr:g}, {result.wall_seconds:.0f} s; "
        f"{elapsed / 60:.1f} min elapsed)"
    )
