"""Learning-rate tuning: a method's LR is the grid point with the lowest validation perplexity;
under the per-group protocol its other parameters' ratio (``--lr-other-ratio``) is then the
ratio-grid point, at that LR, with the lowest (a coordinate search: the matrix LR first, then
the ratio, then the LR × and ÷ ``lr_neighbour_factor`` at that ratio; the best of the last
two steps' runs is the group's per-group-tuned pair)."""

from __future__ import annotations

import contextlib
from typing import Any

from galorekit.reproduce.plan import Plan, RunSpec
from galorekit.reproduce.results import RunResult


class TuningError(RuntimeError):
    """A grid cannot pick an LR (every point diverged)."""


def grid_done(
    plan: Plan, group: str, results: dict[str, RunResult], *, ratios: bool = False
) -> bool:
    """Whether every run of ``group``'s LR grid (``ratios``: ratio grid) has finished (trained
    or diverged)."""
    points = (plan.ratio_grid if ratios else plan.grid).get(group, [])
    return all(key in results for _, key in points)


def _best(points: list[tuple[float, str]], results: dict[str, RunResult], what: str) -> float:
    scored = [(results[key].eval_ppl, value) for value, key in points if results[key].ok]
    if not scored:
        values = ", ".join(f"{v:g}" for v, _ in points)
        raise TuningError(
            f"every point of {what} ({values}) diverged; the runs that use it cannot be run "
            "(add smaller values to the plan)"
        )
    return min(scored, key=lambda pair: pair[0])[1]


def best_lr(plan: Plan, group: str, results: dict[str, RunResult]) -> float:
    """The LR of ``group``'s grid run with the lowest validation perplexity (ties: the larger LR,
    which the grid lists first). Raises ``TuningError`` when every point diverged, ``KeyError``
    when a point has not finished."""
    return _best(plan.grid[group], results, f"{group}'s learning-rate grid")


def best_ratio(plan: Plan, group: str, results: dict[str, RunResult]) -> float:
    """The other parameters' ratio of ``group``'s ratio-grid run with the lowest validation
    perplexity (ties: the smaller ratio, listed first); errors as ``best_lr``'s."""
    return _best(plan.ratio_grid[group], results, f"{group}'s lr_other_ratio grid")


def resolve_lr(plan: Plan, spec: RunSpec, results: dict[str, RunResult]) -> float:
    """The learning rate ``spec`` trains with."""
    if spec.lr is not None:
        return spec.lr
    assert spec.lr_group is not None
    return best_lr(plan, spec.lr_group, results)


def best_pair(plan: Plan, group: str, results: dict[str, RunResult]) -> tuple[float, float]:
    """``group``'s per-group-tuned ``(lr, ratio)``: the best of the ratio grid's winner and the
    LR's neighbours at that ratio (ties: the ratio grid's winner)."""
    ratio = best_ratio(plan, group, results)
    winner = dict(plan.ratio_grid[group])[ratio]
    keys = [winner, *(k for _, k in plan.neighbours.get(group, []))]
    scored = [(results[k].eval_ppl, i) for i, k in enumerate(keys) if results[k].ok]
    best = results[keys[min(scored)[1]]]
    return best.lr, best.lr_other_ratio


def resolve(plan: Plan, spec: RunSpec, results: dict[str, RunResult]) -> tuple[float, float]:
    """``(lr, lr_other_ratio)`` that ``spec`` trains with."""
    if spec.ratio is not None:
        return resolve_lr(plan, spec, results), spec.ratio
    group = spec.lr_group
    assert group is not None
    if spec.lr_step:
        factor = plan.config.lr_neighbour_factor or 1.0
        lr = best_lr(plan, group, results) * factor**spec.lr_step
        return lr, best_ratio(plan, group, results)
    if spec.lr is not None:
        return spec.lr, best_ratio(plan, group, results)
    return best_pair(plan, group, results)


def ready(plan: Plan, spec: RunSpec, results: dict[str, RunResult]) -> bool:
    """Whether ``spec`` can start: its LR is fixed or its grid complete, and so is its ratio
    (for a per-group-tuned run: every step of its group's search)."""
    group = spec.lr_group or ""
    lr_known = spec.lr is not None or grid_done(plan, group, results)
    if spec.ratio is not None or not lr_known:
        return lr_known
    ratio_known = grid_done(plan, group, results, ratios=True)
    if spec.lr_step or spec.lr is not None:
        return ratio_known
    return ratio_known and all(k in results for _, k in plan.neighbours.get(group, []))


def ratio_grid_report(plan: Plan, results: dict[str, RunResult]) -> list[dict[str, Any]]:
    """Every ratio-grid point: group, ratio, lr, status, perplexity, whether chosen."""
    rows = []
    for group, points in plan.ratio_grid.items():
        chosen = None
        if grid_done(plan, group, results, ratios=True):
            with contextlib.suppress(TuningError):  # every point diverged: none chosen
                chosen = best_ratio(plan, group, results)
        for ratio, key in points:
            result = results.get(key)
            rows.append(
                {
                    "group": group,
                    "ratio": ratio,
                    "lr": result.lr if result else None,
                    "status": result.status if result else "not run",
                    "eval_ppl": result.eval_ppl if result else None,
                    "chosen": chosen == ratio,
                    "at_grid_edge": chosen == ratio and ratio == points[-1][0] and ratio != 1,
                    "key": key,
                }
            )
    return rows


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
