"""Learning-rate tuning: a method's LR is the grid point with the lowest validation perplexity."""

from __future__ import annotations

from typing import Any

from galorekit.reproduce.plan import Plan, RunSpec
from galorekit.reproduce.results import RunResult


class TuningError(RuntimeError):
    """A grid cannot pick an LR (every point diverged)."""


def grid_done(plan: Plan, group: str, results: dict[str, RunResult]) -> bool:
    """Whether every grid run of ``group`` has finished (trained or diverged)."""
    return all(key in results for _, key in plan.grid.get(group, []))


def best_lr(plan: Plan, group: str, results: dict[str, RunResult]) -> float:
    """The LR of ``group``'s grid run with the lowest validation perplexity (ties: the larger LR,
    which the grid lists first). Raises ``TuningError`` when every point diverged, ``KeyError``
    when a point has not finished."""
    points = plan.grid[group]
    scored = [(results[key].eval_ppl, lr) for lr, key in points if results[key].ok]
    if not scored:
        lrs = ", ".join(f"{lr:g}" for lr, _ in points)
        raise TuningError(
            f"every learning rate of {group}'s grid ({lrs}) diverged; the runs that use its LR "
            "cannot be run (add smaller LRs to the plan's lr_grid)"
        )
    best = min(scored, key=lambda pair: pair[0])
    return best[1]


def resolve_lr(plan: Plan, spec: RunSpec, results: dict[str, RunResult]) -> float:
    """The learning rate ``spec`` trains with."""
    if spec.lr is not None:
        return spec.lr
    assert spec.lr_group is not None
    return best_lr(plan, spec.lr_group, results)


def ready(plan: Plan, spec: RunSpec, results: dict[str, RunResult]) -> bool:
    """Whether ``spec`` can start: a fixed LR, or its grid is complete."""
    return spec.lr is not None or grid_done(plan, spec.lr_group or "", results)


def grid_report(plan: Plan, results: dict[str, RunResult]) -> list[dict[str, Any]]:
    """Every grid point: group, lr, status, perplexity, and whether it was chosen."""
    rows = []
    for group, points in plan.grid.items():
        try:
            chosen = best_lr(plan, group, results) if grid_done(plan, group, results) else None
        except TuningError:
            chosen = None
        for lr, key in points:
            result = results.get(key)
            rows.append(
                {
                    "group": group,
                    "lr": lr,
                    "steps": plan.runs[key].steps,
                    "status": result.status if result else "not run",
                    "eval_ppl": result.eval_ppl if result else None,
                    "chosen": chosen == lr,
                    "at_grid_edge": chosen == lr and lr in (points[0][0], points[-1][0]),
                    "key": key,
                }
            )
    return rows
