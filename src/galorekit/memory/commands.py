"""The work of ``galore memory`` (its parser is ``galorekit.memory.cli``, torch-free): a breakdown
table, ``--compare``, ``--budget`` fit mode, ``--measure``, ``--plot``, ``--json``."""

from __future__ import annotations

import argparse
import sys

import torch

import galorekit.memory.measure as measuring
from galorekit.atomic import output_file_error, write_json_output
from galorekit.devices import resolve_device
from galorekit.memory.cli import SETUP_FLAGS, resolve
from galorekit.memory.estimator import estimate
from galorekit.memory.fit import DEFAULT_RANKS, fit_budget
from galorekit.memory.measure import InsufficientMemoryError
from galorekit.memory.names import DEFAULT_METHOD, METHODS
from galorekit.memory.plot import plot_estimates
from galorekit.memory.report import (
    breakdown_table,
    compare_table,
    detail_tables,
    fit_table,
    measure_table,
)
from galorekit.memory.setup import (
    BASELINE_METHODS,
    TrainingSetup,
    check_method,
    parse_target_modules,
)
from galorekit.units import DISPLAY_UNITS, auto_unit, format_bytes, parse_size


class _UsageError(ValueError):
    pass


def _setup(args: argparse.Namespace, method: str) -> TrainingSetup:
    """The ``TrainingSetup`` of the resolved flags (``cli.resolve``) for ``method``."""
    values = {fl.name: getattr(args, fl.name) for fl in SETUP_FLAGS}
    values["target_modules"] = parse_target_modules(values["target_modules"])
    return TrainingSetup(**{**values, "method": method})


def _check_method(method: str | None) -> None:
    if method is not None:
        check_method(method)


def _compare_set(args: argparse.Namespace):
    """Every method, ordinary and (optimizer methods) layer-wise, at the given configuration."""

    out = []
    for method in METHODS:
        for layerwise in (False,) if method in BASELINE_METHODS else (False, True):
            setup = _setup(args, method).with_(layerwise=layerwise)
            out.append(estimate(args.model, setup, vocab_size=args.vocab_size))
    return out


def _plot(args, estimates, budget: int | None) -> None:
    s = estimates[0].setup
    title = f"{args.model}: {s.precision}, batch {s.batch_size}×{s.seq_len} tokens" + (
        ", activation checkpointing" if s.activation_checkpointing else ""
    )
    unit = _unit(args, max([e.total for e in estimates] + [budget or 0]))
    path = plot_estimates(estimates, args.plot, title=title, unit=unit, budget=budget)
    print(f"wrote {path}", file=sys.stderr)


def _resolve_device(name: str) -> torch.device:
    """The training commands' ``--device`` resolver; a measurement needs an allocator it can
    read (CUDA's, or the CPU profiler's)."""
    try:
        device = resolve_device(name)
    except ValueError as err:
        raise _UsageError(str(err)) from None
    if device.type not in ("cpu", "cuda"):
        raise _UsageError(
            f"--device {name}: --measure reads the cpu or cuda allocator, not {device.type}"
        )
    return device


def _parse_ranks(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        ranks = tuple(int(r) for r in text.split(",") if r.strip())
    except ValueError:
        raise _UsageError(f"--ranks {text!r}: expected comma-separated integers") from None
    if not ranks or any(r <= 0 for r in ranks):
        raise _UsageError(f"--ranks {text!r}: expected positive integers")
    return ranks


def run(args: argparse.Namespace) -> int:
    """Run ``galore memory`` (parsed by ``galorekit.memory.cli``); returns the exit status (0 ok, 1 refused measurement, 2 bad input)."""
    try:
        return _run(args)
    except ValueError as err:  # bad input, _UsageError included: say what and what is valid
        print(f"galore memory: error: {err}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    resolve(args)  # the flags over a --config file over the defaults
    unit = args.unit
    if unit != "auto" and unit not in DISPLAY_UNITS:
        raise _UsageError(f"unknown unit {unit!r}; valid: auto, {', '.join(DISPLAY_UNITS)}")
    method = args.method
    _check_method(method)
    budget = parse_size(args.budget) if args.budget is not None else None
    compare, measure = bool(args.compare), bool(args.measure)
    if measure and (compare or budget is not None):
        raise _UsageError("--measure measures one configuration: not with --compare or --budget")
    if args.plot is not None and not str(args.plot).lower().endswith(".png"):
        raise _UsageError(
            f"--plot writes a PNG: give a file name ending in .png, not {args.plot!r}"
        )
    for flag, target in (("--json", args.json), ("--plot", args.plot)):
        if (problem := output_file_error(target, flag)) is not None:
            raise _UsageError(problem)  # before minutes of measuring, not after

    if budget is not None and not compare:
        return _fit(args, method, budget)
    if compare:
        return _compare(args, budget)
    setup = _setup(args, method or DEFAULT_METHOD)
    if measure:
        try:
            return _measure(args, setup)
        except InsufficientMemoryError as err:
            print(f"galore memory: {err}", file=sys.stderr)
            return 1
    return _single(args, setup)


def _unit(args, nbytes: int) -> str:
    return auto_unit(nbytes) if args.unit == "auto" else args.unit


def _notes(est) -> list[str]:
    notes = []
    if est.rank_note:
        notes.append(est.rank_note)
    if est.clamped_matrices:
        notes.append(
            f"rank {est.setup.rank} ≥ min(m, n) for {est.clamped_matrices} matrices: clamped, "
            "no saving on those"
        )
    return notes


def _single(args, setup) -> int:
    est = estimate(args.model, setup, vocab_size=args.vocab_size)
    if args.json:
        write_json_output(args.json, est.as_dict())
    else:
        unit = _unit(args, est.total)
        print(breakdown_table(args.model, est, unit))
        for note in _notes(est):
            print(f"note: {note}")
        if args.detail:
            print("\n" + detail_tables(est, unit))
    if args.plot:
        _plot(args, _compare_set(args), None)
    return 0


def _compare(args, budget: int | None) -> int:

    estimates = _compare_set(args)
    if args.json:
        write_json_output(args.json, {e.setup.label(): e.as_dict() for e in estimates})
    else:
        s = estimates[0].setup
        print(
            f"model {args.model}, precision {s.precision}, batch {s.batch_size} × {s.seq_len} "
            f"tokens" + (", activation checkpointing" if s.activation_checkpointing else "") + "\n"
        )
        unit = _unit(args, max(e.total for e in estimates))
        print(compare_table(estimates, unit))
        if budget is not None:
            fit = [e.setup.label() for e in estimates if e.total <= budget]
            print(
                f"\nwithin {format_bytes(budget, unit)}: "
                + (", ".join(fit) if fit else "none at this batch size")
            )
    if args.plot:
        _plot(args, estimates, budget)
    return 0


def _fit(args, method: str | None, budget: int) -> int:

    base = _setup(args, method or DEFAULT_METHOD)
    ranks = _parse_ranks(args.ranks)
    if ranks is None:
        ranks = (base.rank,) if base.rank is not None else DEFAULT_RANKS
    rows = fit_budget(
        args.model,
        budget,
        base,
        methods=(method,) if method else METHODS,
        ranks=ranks,
        vocab_size=args.vocab_size,
    )
    if args.json:
        write_json_output(
            args.json,
            {
                "budget": budget,
                "seq_len": base.seq_len,
                "precision": base.precision,
                "configurations": [r.as_dict() for r in rows],
            },
        )
    else:
        print(f"model {args.model}, precision {base.precision}")
        print(fit_table(rows, budget, base.seq_len, _unit(args, budget)))
    if args.plot:
        _plot(args, _compare_set(args), budget)
    return 0


def _measure(args, setup) -> int:

    vocab = args.vocab_size
    est = estimate(args.model, setup, vocab_size=vocab)
    device = _resolve_device(args.device)
    if device.type == "cpu" and est.setup.param_dtype != torch.float32 and not args.json:
        print(
            "note: 16-bit matmuls are slow on most CPUs; --precision fp32 measures faster",
            file=sys.stderr,
        )
    meas = measuring.measure(  # through the module: tests replace it
        args.model,
        setup,
        vocab_size=vocab,
        steps=args.measure_steps,
        device=device,
        seed=args.seed,
        required=est.total,
    )
    if args.json:
        e, m = est.as_dict(), meas.as_dict()
        diff = {k: m[k] - e[k] for k in ("weights", "gradients", "optimizer_states", "activations")}
        diff["peak_minus_total"] = m["peak"] - e["total"]
        write_json_output(args.json, {"estimate": e, "measured": m, "difference": diff})
    else:
        unit = _unit(args, max(est.total, meas.peak))
        print(breakdown_table(args.model, est, unit))
        print()
        print(measure_table(est, meas, unit))
    if args.plot:
        _plot(args, _compare_set(args), None)
    return 0


def _fp32():
    return torch.float32
