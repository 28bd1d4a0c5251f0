"""``galore bench``'s command line: the parser (torch-free: ``galore --help`` builds it) and
``run``, which loads the benchmark only when it runs."""

from __future__ import annotations

import argparse
import sys

from galorekit.atomic import atomic_write_text, write_json_output
from galorekit.bench.config import PAPER_RANKS, BenchConfig
from galorekit.bench.report import format_markdown
from galorekit.extras import report_missing_extra
from galorekit.names import GALORE_DEFAULTS, SVD_METHOD_NAMES


class _Renamed(argparse.Action):
    """A flag that was renamed: refused with a one-line pointer to its new spelling."""

    def __init__(self, option_strings, dest, new: str, **kwargs) -> None:
        super().__init__(option_strings, dest, nargs="?", help=argparse.SUPPRESS, **kwargs)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        parser.error(f"{option_string} is now {self.new}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default="130m",
        help="LLaMA size: a named model of galorekit.models without its llama_ prefix, e.g. 60m, "
        "130m, 1b (default 130m; an unknown name lists them all)",
    )
    parser.add_argument(
        "--layers",
        type=int,
        default=None,
        help="time only this many layers (default: all); 350m/1b need it on small machines",
    )
    parser.add_argument(
        "--rank",
        type=int,
        default=None,
        help="GaLore rank (default: the paper's, "
        + ", ".join(f"{r} for {m.removeprefix('llama_')}" for m, r in PAPER_RANKS.items())
        + "; hidden/4 for other sizes)",
    )
    parser.add_argument(
        "--update-proj-gap",
        dest="T",
        type=int,
        default=GALORE_DEFAULTS["update_proj_gap"],
        metavar="T",
        help="T, the refresh period of GaLore, for the amortized step (refresh + (T-1)·steady) / T "
        "(default %(default)s)",
    )
    parser.add_argument("--T", action=_Renamed, new="--update-proj-gap")
    parser.add_argument(
        "--svd",
        default=",".join(SVD_METHOD_NAMES),
        help="comma-separated galorekit refresh methods to time (default: the built-in ones, "
        f"{','.join(SVD_METHOD_NAMES)}; names registered in galorekit.projection.SVD_METHODS too)",
    )
    parser.add_argument(
        "--steady-steps", type=int, default=4, help="steady steps between refreshes (default 4)"
    )
    parser.add_argument(
        "--cycles",
        type=int,
        default=3,
        help="measured refresh cycles per optimizer, after one warm-up cycle (default 3)",
    )
    parser.add_argument("--no-reference", action="store_true", help="skip galore-torch")
    parser.add_argument("--no-adamw", action="store_true", help="skip torch AdamW")
    parser.add_argument(
        "--noise",
        type=float,
        default=0.5,
        help="gradient noise, Frobenius norm relative to the low-rank signal (default 0.5)",
    )
    parser.add_argument(
        "--drift",
        type=float,
        default=0.3,
        help="relative perturbation of the gradient's singular vectors between refreshes",
    )
    parser.add_argument(
        "--quality-layers",
        type=int,
        default=1,
        help="layers whose matrices the subspace quality is measured on (default 1; 0: skip)",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the synthetic gradients and weights (0)"
    )
    parser.add_argument(
        "--real-grads",
        action="store_true",
        help="also measure quality on real gradients of a small LLaMA trained on KJV bytes",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also run one more refresh step of each optimizer under torch.profiler and report "
        "where its time goes (matmuls, QR, eigh, SVD, copies and casts, the rest)",
    )
    parser.add_argument(
        "--foreach",
        action="store_true",
        help="also time each galorekit method with foreach=True (the moment updates batched over "
        "the tensors; the optimizer's default only when every parameter is on a GPU)",
    )
    parser.add_argument(
        "--json",
        nargs="?",
        const="-",
        default=None,
        metavar="PATH",
        help="write the result as JSON to PATH (to stdout without one, or with -)",
    )
    parser.add_argument("--md", metavar="FILE", default=None, help="write a markdown report")


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    return BenchConfig(
        model=args.model,
        layers=args.layers,
        rank=args.rank,
        T=args.T,
        svd=tuple(s.strip() for s in args.svd.split(",") if s.strip()),
        steady_steps=args.steady_steps,
        cycles=args.cycles,
        reference=not args.no_reference,
        adamw=not args.no_adamw,
        noise=args.noise,
        drift=args.drift,
        quality_layers=args.quality_layers,
        threads=args.threads,
        seed=args.seed,
        real_grads=args.real_grads,
        profile=args.profile,
        foreach=args.foreach,
    )


def run(args: argparse.Namespace) -> int:
    """Run ``galore bench``; returns the exit status (0 ok, 2 bad input, too big, or a missing
    extra)."""
    return report_missing_extra("bench", lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    try:
        cfg = config_from_args(args)
    except ValueError as err:
        print(f"galore bench: error: {err}", file=sys.stderr)
        return 2
    # torch loads here, not when ``galore --help`` builds the parser
    from galorekit.bench.benchmark import run_benchmark
    from galorekit.bench.timing import reference_available
    from galorekit.memory.measure import InsufficientMemoryError

    if cfg.reference and not reference_available():
        print("galore bench: galore-torch is not installed; timing without it", file=sys.stderr)

    try:
        result = run_benchmark(cfg, progress=lambda msg: print(f"[bench] {msg}", file=sys.stderr))
    except InsufficientMemoryError as err:
        print(f"galore bench: {err}", file=sys.stderr)
        return 2
    command = getattr(args, "command_line", None) or "galore " + " ".join(sys.argv[1:])
    if args.json != "-":  # JSON on stdout replaces the table there
        print(format_markdown(result, command))
    if args.json:
        write_json_output(args.json, result)
    if args.md:
        atomic_write_text(args.md, format_markdown(result, command) + "\n")
    return 0
