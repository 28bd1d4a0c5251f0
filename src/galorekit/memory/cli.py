"""``galore memory``: estimate, compare, plot, measure, and fit training memory to a budget.

Examples::

    galore memory --model llama_7b --method galore_adamw8bit --layerwise --rank 1024 \\
        --batch-size 1 --seq-len 256 --precision bf16-true   # breakdown table
    galore memory --model llama_7b --compare --plot fig1.png  # every method, stacked bars
    galore memory --model llama_7b --budget 24GB              # what fits in 24 GB
    galore memory --model llama_20m --method adamw --precision fp32 --measure

This module builds the parser without torch (``galore --help`` imports it); ``run`` loads
``galorekit.memory.commands``, which does the work.
"""

from __future__ import annotations

import argparse

# torch-free: ``galore --help`` builds this parser
from galorekit.config import add_renamed
from galorekit.extras import report_missing_extra
from galorekit.memory.names import ATTN_IMPLEMENTATIONS, METHODS, PRECISION_NAMES, PROJ_TYPES
from galorekit.names import STATE_DTYPES
from galorekit.units import DISPLAY_UNITS


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = (
        "modes: a breakdown table (default), --compare (every method), --budget SIZE (what fits),"
        " --measure (run real steps here and compare).\n"
        "The estimate sums weights, weight gradients, optimizer states (projectors included) and"
        " activations (tensors saved for backward), read from the real model built on the meta"
        " device and from the optimizers' state layout."
    )
    add_renamed(p, {"--dtype": "use --precision (bf16 is now bf16-true; bfloat16 is bf16-mixed)"})
    _model_arguments(p.add_argument_group("model and method"))
    _step_arguments(p.add_argument_group("training step"))
    _output_arguments(p.add_argument_group("output and modes"))
    _measure_arguments(p.add_argument_group("measurement"))


def _model_arguments(m: argparse._ArgumentGroup) -> None:
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


def _step_arguments(t: argparse._ArgumentGroup) -> None:
    t.add_argument("--batch-size", type=int, default=1, help="sequences per micro-batch (1)")
    t.add_argument("--seq-len", type=int, default=256, help="tokens per sequence (256)")
    t.add_argument(
        "--precision",
        default="bf16-true",
        choices=PRECISION_NAMES,
        help="bf16-true/fp16-true: pure 16-bit training, weights, gradients and states in 16 bit "
        "(the paper's setting; default); fp32; bf16-mixed/fp16-mixed: float32 weights with "
        "autocast (what galore pretrain --precision bf16-mixed trains)",
    )
    t.add_argument(
        "--state-dtype",
        default=None,
        choices=STATE_DTYPES,
        help="dtype of the optimizer's moments (default: the parameters'), as the optimizers' "
        "state_dtype: float32 keeps bf16 weights' second moment decaying, at 2 more bytes each",
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


def _output_arguments(o: argparse._ArgumentGroup) -> None:
    o.add_argument(
        "--json",
        nargs="?",
        const="-",
        default=None,
        metavar="PATH",
        help="write JSON (byte counts) instead of tables: to PATH, or to stdout without one or "
        "with -",
    )
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


def _measure_arguments(x: argparse._ArgumentGroup) -> None:
    x.add_argument(
        "--measure",
        action="store_true",
        help="also run a few real training steps here and report measured memory beside the "
        "estimate (small models on CPU; refused when the estimate exceeds the free memory)",
    )
    x.add_argument("--measure-steps", type=int, default=3, help="optimizer steps measured (3)")
    x.add_argument("--device", default="auto", help="measurement device: auto, cpu, cuda, cuda:1")
    x.add_argument("--seed", type=int, default=0, help="seed of the measured run's init and data")


def run(args: argparse.Namespace) -> int:
    """Run ``galore memory``; returns the exit status (0 ok, 1 refused measurement, 2 bad input)."""
    # torch and transformers load here, not when ``galore --help`` builds the parser
    from galorekit.memory.commands import run as run_command

    return report_missing_extra("memory", lambda: run_command(args))
