"""``galore memory``: estimate, compare, plot, measure, and fit training memory to a budget.

Examples::

    galore memory --model llama_7b --method galore_adamw8bit --layerwise --rank 1024 \\
        --batch-size 1 --seq-len 256 --dtype bf16          # breakdown table
    galore memory --model llama_7b --compare --plot fig1.png  # every method, stacked bars
    galore memory --model llama_7b --budget 24GB              # what fits in 24 GB
    galore memory --model llama_20m --method adamw --dtype fp32 --measure

Heavy imports (torch, transformers) happen in ``run`` so that ``galore --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

# torch-free: ``galore --help`` builds this parser
from galorekit.memory.names import ATTN_IMPLEMENTATIONS, METHODS, PRECISION_NAMES, PROJ_TYPES
from galorekit.memory.units import DISPLAY_UNITS


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = (
        "modes: a breakdown table (default), --compare (every method), --budget SIZE (what fits),"
        " --measure (run real steps here and compare).\n"
        "The estimate sums weights, weight gradients, optimizer states (projectors included) and"
        " activations (tensors saved for backward), read from the real model built on the meta"
        " device and from the optimizers' state layout."
    )
    m = p.add_argument_group("model and method")
    m.add_argument(
        "--model",
        default="llama_7b",
        help="named config (llama_tiny, llama_9m, llama_20m, llama_60m, llama_130m, llama_350m, "
        "llama_1b, llama_3b, llama_7b), a JSON config file, or a Hugging Face config name/path "
        "(default: llama_7b)",
    )
    m.add_argument(
        "--vocab-size",
        type=int,
        default=None,
        help="override the vocabulary (the named configs have 32000; galore pretrain's offline "
        "default trains an 8192-token BPE)",
    )
    m.add_argument(
        "--method",
        "--optimizer",
        dest="method",
        default=None,
        metavar="METHOD",
        help=f"one of: {', '.join(METHODS)} (default galore_adamw; with --budget: all)",
    )
    m.add_argument(
        "--layerwise",
        action="store_true",
        help="layer-wise updates: each gradient freed right after its parameter's update, so at "
        "most one exists at a time (optimizer methods)",
    )
    m.add_argument(
        "--rank",
        type=int,
        default=None,
        help="GaLore projection rank or LoRA/ReLoRA/Low-Rank rank (default hidden_size // 4, "
        "as galore pretrain)",
    )
    m.add_argument(
        "--proj-type",
        default="std",
        choices=PROJ_TYPES,
        help="GaLore projection side; decides the projector and moment shapes (default std)",
    )
    m.add_argument(
        "--target-modules",
        default=None,
        help="matrices GaLore / the baselines act on: comma-separated name substrings "
        "(q_proj,v_proj), 'all-linear', or re:REGEX (default: attention and MLP projections)",
    )
    t = p.add_argument_group("training step")
    t.add_argument("--batch-size", type=int, default=1, help="sequences per micro-batch (1)")
    t.add_argument("--seq-len", type=int, default=256, help="tokens per sequence (256)")
    t.add_argument(
        "--dtype",
        default="bf16",
        choices=PRECISION_NAMES,
        metavar="DTYPE",
        help="bf16/fp16: pure 16-bit training, weights, gradients and states in 16 bit (the "
        "paper's setting; default); fp32; bf16-mixed/fp16-mixed: float32 weights with autocast. "
        "galore pretrain's --dtype float32/bfloat16 are accepted (bfloat16 = bf16-mixed)",
    )
    t.add_argument(
        "--activation-checkpointing",
        action="store_true",
        help="checkpoint every decoder layer (keep layer inputs, recompute in backward)",
    )
    t.add_argument(
        "--attn-implementation",
        default="sdpa",
        choices=ATTN_IMPLEMENTATIONS,
        help="attention kernel whose saved tensors are counted (default sdpa)",
    )
    t.add_argument(
        "--accumulation-steps",
        type=int,
        default=1,
        help="micro-batches per optimizer step; with --layerwise the accumulated gradients are "
        "held between micro-batches (default 1)",
    )
    o = p.add_argument_group("output and modes")
    o.add_argument("--json", action="store_true", help="print JSON (byte counts) instead of tables")
    o.add_argument(
        "--detail",
        action="store_true",
        help="also list the tensors saved by one layer and the head, and the optimizer states "
        "by kind",
    )
    o.add_argument(
        "--compare", action="store_true", help="every method side by side (ordinary and layer-wise)"
    )
    o.add_argument(
        "--plot",
        metavar="FILE.png",
        default=None,
        help="write stacked bars of every method (the --compare set) like the paper's Figure 1",
    )
    o.add_argument(
        "--budget",
        default=None,
        help="fit mode: list the methods, ranks and batch sizes that fit, e.g. 24GB, 24GiB, "
        "24000MB, 24G (a bare G is GiB)",
    )
    o.add_argument(
        "--ranks",
        default=None,
        help="ranks tried in fit mode, comma-separated (default: --rank if given, else "
        "128,256,512,1024 — those below the smallest matrix dimension)",
    )
    o.add_argument(
        "--unit",
        default="auto",
        choices=("auto", *DISPLAY_UNITS),
        help="unit of the tables: GB = 10^9 bytes (the paper's), GiB = 2^30, ...; auto (default): "
        "GB, or MB/KB for small models",
    )
    x = p.add_argument_group("measurement")
    x.add_argument(
        "--measure",
        action="store_true",
        help="also run a few real training steps here and report measured memory beside the "
        "estimate (small models on CPU; refused when the estimate exceeds the free memory)",
    )
    x.add_argument("--measure-steps", type=int, default=3, help="optimizer steps measured (3)")
    x.add_argument("--device", default="auto", help="measurement device: auto, cpu, cuda, cuda:1")
    x.add_argument("--seed", type=int, default=0, help="seed of the measured run's init and data")


class _UsageError(ValueError):
    pass


def _get(args: argparse.Namespace, name: str, default: Any = None) -> Any:
    return getattr(args, name, default)


def _setup(args: argparse.Namespace, method: str):
    from galorekit.memory.setup import TrainingSetup, parse_target_modules

    return TrainingSetup(
        method=method,
        rank=_get(args, "rank"),
        layerwise=bool(_get(args, "layerwise", False)),
        batch_size=_get(args, "batch_size", 1),
        seq_len=_get(args, "seq_len", 256),
        precision=_get(args, "dtype", "bf16"),
        activation_checkpointing=bool(_get(args, "activation_checkpointing", False)),
        proj_type=_get(args, "proj_type", "std"),
        target_modules=parse_target_modules(_get(args, "target_modules")),
        attn_implementation=_get(args, "attn_implementation", "sdpa"),
        accumulation_steps=_get(args, "accumulation_steps", 1),
    )


def _check_method(method: str | None) -> None:
    from galorekit.memory.setup import check_method

    if method is not None:
        check_method(method)


def _compare_set(args: argparse.Namespace):
    """Every method, ordinary and (optimizer methods) layer-wise, at the given configuration."""
    from galorekit.memory.estimator import estimate
    from galorekit.memory.setup import BASELINE_METHODS

    out = []
    for method in METHODS:
        for layerwise in (False,) if method in BASELINE_METHODS else (False, True):
            setup = _setup(args, method).with_(layerwise=layerwise)
            out.append(estimate(args.model, setup, vocab_size=_get(args, "vocab_size")))
    return out


def _plot(args, estimates, budget: int | None) -> None:
    from galorekit.memory.plot import plot_estimates

    s = estimates[0].setup
    title = f"{args.model}: {s.precision}, batch {s.batch_size}×{s.seq_len} tokens" + (
        ", activation checkpointing" if s.activation_checkpointing else ""
    )
    unit = _unit(args, max([e.total for e in estimates] + [budget or 0]))
    path = plot_estimates(estimates, args.plot, title=title, unit=unit, budget=budget)
    print(f"wrote {path}", file=sys.stderr)


def _resolve_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise _UsageError(f"unknown device {name!r}; valid: auto, cpu, cuda, cuda:N") from None


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
    """Run ``galore memory``; returns the exit status (0 ok, 1 refused measurement, 2 bad input)."""
    try:
        return _run(args)
    except ValueError as err:  # bad input, _UsageError included: say what and what is valid
        print(f"galore memory: error: {err}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from galorekit.memory.measure import InsufficientMemoryError
    from galorekit.memory.units import parse_size

    unit = _get(args, "unit", "auto")
    if unit != "auto" and unit not in DISPLAY_UNITS:
        raise _UsageError(f"unknown unit {unit!r}; valid: auto, {', '.join(DISPLAY_UNITS)}")
    args.unit = unit
    method = _get(args, "method")
    _check_method(method)
    budget = parse_size(args.budget) if _get(args, "budget") is not None else None
    compare, measure = bool(_get(args, "compare")), bool(_get(args, "measure"))
    if measure and (compare or budget is not None):
        raise _UsageError("--measure measures one configuration: not with --compare or --budget")
    args.plot = _get(args, "plot")
    if args.plot is not None and not str(args.plot).lower().endswith(".png"):
        raise _UsageError(
            f"--plot writes a PNG: give a file name ending in .png, not {args.plot!r}"
        )

    if budget is not None and not compare:
        return _fit(args, method, budget)
    if compare:
        return _compare(args, budget)
    setup = _setup(args, method or "galore_adamw")
    if measure:
        try:
            return _measure(args, setup)
        except InsufficientMemoryError as err:
            print(f"galore memory: {err}", file=sys.stderr)
            return 1
    return _single(args, setup)


def _unit(args, nbytes: int) -> str:
    from galorekit.memory.units import auto_unit

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
    from galorekit.memory.estimator import estimate
    from galorekit.memory.report import breakdown_table, detail_tables

    est = estimate(args.model, setup, vocab_size=_get(args, "vocab_size"))
    if args.json:
        print(json.dumps(est.as_dict()))
    else:
        unit = _unit(args, est.total)
        print(breakdown_table(args.model, est, unit))
        for note in _notes(est):
            print(f"note: {note}")
        if _get(args, "detail"):
            print("\n" + detail_tables(est, unit))
    if args.plot:
        _plot(args, _compare_set(args), None)
    return 0


def _compare(args, budget: int | None) -> int:
    from galorekit.memory.report import compare_table
    from galorekit.memory.units import format_bytes

    estimates = _compare_set(args)
    if args.json:
        print(json.dumps({e.setup.label(): e.as_dict() for e in estimates}))
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
    from galorekit.memory.fit import DEFAULT_RANKS, fit_budget
    from galorekit.memory.report import fit_table

    base = _setup(args, method or "galore_adamw")
    ranks = _parse_ranks(_get(args, "ranks"))
    if ranks is None:
        ranks = (base.rank,) if base.rank is not None else DEFAULT_RANKS
    rows = fit_budget(
        args.model,
        budget,
        base,
        methods=(method,) if method else METHODS,
        ranks=ranks,
        vocab_size=_get(args, "vocab_size"),
    )
    if args.json:
        print(
            json.dumps(
                {
                    "budget": budget,
                    "seq_len": base.seq_len,
                    "precision": base.precision,
                    "configurations": [r.as_dict() for r in rows],
                }
            )
        )
    else:
        print(f"model {args.model}, precision {base.precision}")
        print(fit_table(rows, budget, base.seq_len, _unit(args, budget)))
    if args.plot:
        _plot(args, _compare_set(args), budget)
    return 0


def _measure(args, setup) -> int:
    from galorekit.memory.estimator import estimate
    from galorekit.memory.measure import measure
    from galorekit.memory.report import breakdown_table, measure_table

    vocab = _get(args, "vocab_size")
    est = estimate(args.model, setup, vocab_size=vocab)
    device = _resolve_device(_get(args, "device", "auto"))
    if device.type == "cpu" and est.setup.param_dtype != _fp32() and not args.json:
        print(
            "note: 16-bit matmuls are slow on most CPUs; --dtype fp32 measures faster",
            file=sys.stderr,
        )
    meas = measure(
        args.model,
        setup,
        vocab_size=vocab,
        steps=_get(args, "measure_steps", 3),
        device=device,
        seed=_get(args, "seed", 0),
        required=est.total,
    )
    if args.json:
        e, m = est.as_dict(), meas.as_dict()
        diff = {k: m[k] - e[k] for k in ("weights", "gradients", "optimizer_states", "activations")}
        diff["peak_minus_total"] = m["peak"] - e["total"]
        print(json.dumps({"estimate": e, "measured": m, "difference": diff}))
    else:
        unit = _unit(args, max(est.total, meas.peak))
        print(breakdown_table(args.model, est, unit))
        print()
        print(measure_table(est, meas, unit))
    if args.plot:
        _plot(args, _compare_set(args), None)
    return 0


def _fp32():
    import torch

    return torch.float32
