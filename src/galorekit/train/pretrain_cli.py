"""``galore pretrain``: flags → PretrainConfig → pretrain().

With ``--nproc-per-node N`` (N > 1) the command checks the configuration, then relaunches itself as
N torchrun workers (``python -m torch.distributed.run --standalone``); ``torchrun --nproc_per_node N
-m galorekit pretrain ...`` runs the same job directly.
"""

from __future__ import annotations

import argparse
import sys

from galorekit.names import PROJ_TYPES, SVD_METHOD_NAMES

GALORE_HELP = "GaLore options (galore_* methods)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from galorekit.names import ALL_METHODS, DEFAULT_LR, DISTRIBUTED_STRATEGIES

    p.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    m = p.add_argument_group("model and method")
    m.add_argument(
        "--model",
        default="llama_9m",
        help="named config (llama_tiny, llama_9m, llama_20m, llama_60m, llama_130m, llama_350m, "
        "llama_1b, llama_3b, llama_7b), a JSON config file, or a Hugging Face config name/path",
    )
    m.add_argument(
        "--method",
        "--optimizer",
        dest="method",
        default="galore_adamw",
        choices=ALL_METHODS,
        metavar="METHOD",
        help=f"one of: {', '.join(ALL_METHODS)}",
    )
    m.add_argument(
        "--layerwise",
        action="store_true",
        help="update each parameter during backward and free its gradient (optimizer methods)",
    )
    m.add_argument(
        "--lr",
        type=float,
        default=None,
        help="peak learning rate (default per method: "
        + ", ".join(f"{k} {v:g}" for k, v in DEFAULT_LR.items())
        + ")",
    )
    m.add_argument("--weight-decay", type=float, default=0.0)
    m.add_argument(
        "--grad-clip",
        type=float,
        default=1.0,
        help="global gradient-norm clip (0: off); layer-wise runs clip by the previous step's norm",
    )
    g = p.add_argument_group(GALORE_HELP)
    g.add_argument(
        "--rank",
        type=int,
        default=None,
        help="projection rank (GaLore) or adapter rank (LoRA, ReLoRA, Low-Rank); "
        "default hidden_size // 4 as in the paper",
    )
    g.add_argument("--update-proj-gap", type=int, default=200, help="T: steps between refreshes")
    g.add_argument("--scale", type=float, default=0.25, help="alpha: scale of the update")
    g.add_argument("--proj-type", default="std", choices=PROJ_TYPES)
    g.add_argument(
        "--svd",
        default=None,
        help=f"subspace refresh method: {', '.join(SVD_METHOD_NAMES)}, or a name registered in "
        "galorekit.projection.SVD_METHODS (default: galorekit's, warm)",
    )
    b = p.add_argument_group("baselines (lora, relora, low_rank)")
    b.add_argument("--lora-alpha", type=float, default=32.0)
    b.add_argument("--lora-dropout", type=float, default=0.0)
    b.add_argument(
        "--relora-reset-every",
        type=int,
        default=None,
        help="ReLoRA: steps between merge-and-reinit (default max_steps // 4)",
    )
    b.add_argument(
        "--relora-prune",
        type=float,
        default=0.99,
        help="ReLoRA: fraction of the adapters' optimizer states pruned at each reset",
    )
    d = p.add_argument_group("data")
    d.add_argument(
        "--dataset",
        default="default",
        help="default (KJV + Shakespeare, offline), kjv, shakespeare, or a Hugging Face dataset "
        "name such as allenai/c4 (streamed; needs internet)",
    )
    d.add_argument("--dataset-config", default=None, help="e.g. 'en' for allenai/c4")
    d.add_argument(
        "--data-files", nargs="+", default=None, help="local .txt/.jsonl/.parquet files (globs)"
    )
    d.add_argument("--text-column", default="text")
    d.add_argument(
        "--tokenizer",
        default="default",
        help="default (byte-level BPE trained on the corpus, cached), mistral (LLaMA-style "
        "32000-token sentencepiece), or any Hugging Face tokenizer name/path (the paper: t5-base)",
    )
    d.add_argument("--vocab-size", type=int, default=8192, help="vocabulary of the trained BPE")
    d.add_argument("--seq-len", type=int, default=256)
    d.add_argument("--val-sequences", type=int, default=64, help="held-out validation sequences")
    d.add_argument(
        "--streaming",
        choices=("auto", "yes", "no"),
        default="auto",
        help="stream documents (auto: hub datasets stream, local files are tokenised and cached)",
    )
    d.add_argument("--cache-dir", default=None, help="tokenizer/token cache (~/.cache/galorekit)")
    t = p.add_argument_group("loop")
    t.add_argument("--max-steps", type=int, default=200)
    t.add_argument("--batch-size", type=int, default=8, help="sequences per micro-batch")
    t.add_argument(
        "--total-batch-size",
        type=int,
        default=None,
        help="sequences per optimizer step (gradient accumulation = total / batch)",
    )
    t.add_argument("--warmup-ratio", type=float, default=0.1)
    t.add_argument("--min-lr-ratio", type=float, default=0.1, help="cosine decays to this x peak")
    t.add_argument("--eval-every", type=int, default=50, help="0: only at the end")
    t.add_argument("--eval-batch-size", type=int, default=None)
    t.add_argument("--save-every", type=int, default=1000, help="0: only at the end")
    t.add_argument("--keep-checkpoints", type=int, default=2)
    t.add_argument("--log-every", type=int, default=10)
    t.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        default="float32",
        help="autocast dtype (bfloat16 is for GPUs; slow on most CPUs)",
    )
    t.add_argument("--activation-checkpointing", action="store_true")
    t.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, …")
    t.add_argument("--seed", type=int, default=0)
    dp = p.add_argument_group("data parallelism (torch.distributed)")
    dp.add_argument(
        "--nproc-per-node",
        type=int,
        default=None,
        help="processes on this machine, launched through torchrun (gloo on CPU, NCCL on CUDA, "
        "one GPU each); --batch-size is then per process and --total-batch-size global",
    )
    dp.add_argument(
        "--distributed",
        default="ddp",
        choices=DISTRIBUTED_STRATEGIES,
        help="data-parallel strategy: ddp (DistributedDataParallel; --layerwise reduces in its "
        "hooks instead) or fsdp (FSDP2 fully_shard: parameters, gradients and optimizer states "
        "sharded by rows; GaLore projects on the right and refreshes from all-reduced sketches; "
        "methods adamw, adamw8bit, galore_adamw, galore_adamw8bit, with --layerwise too)",
    )
    dp.add_argument(
        "--lowrank-comm",
        action="store_true",
        help="GaLore methods: between subspace refreshes all-reduce each projected gradient "
        "(r×n) instead of the full one (m×n); full gradients only at refresh steps",
    )
    o = p.add_argument_group("output")
    o.add_argument("--output-dir", default=None, help="default runs/pretrain-MODEL-METHOD-TIME")
    o.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        default=None,
        metavar="CHECKPOINT",
        help="continue the run in --output-dir from its latest checkpoint (or from CHECKPOINT)",
    )
    o.add_argument("--overwrite", action="store_true", help="replace a run in --output-dir")
    o.add_argument("--no-progress", action="store_true", help="no progress bar")
    o.add_argument("--no-tensorboard", action="store_true", help="no TensorBoard event files")
    o.add_argument("--no-plot", action="store_true", help="no curves.png at the end")


def config_from_args(args: argparse.Namespace):
    from galorekit.data import DataConfig
    from galorekit.train.methods import MethodConfig
    from galorekit.train.pretrain import PretrainConfig

    streaming = {"auto": None, "yes": True, "no": False}[args.streaming]
    data = DataConfig(
        dataset=args.dataset,
        dataset_config=args.dataset_config,
        data_files=args.data_files,
        text_column=args.text_column,
        tokenizer=args.tokenizer,
        vocab_size=args.vocab_size,
        seq_len=args.seq_len,
        val_sequences=args.val_sequences,
        seed=args.seed,
        streaming=streaming,
        cache_dir=args.cache_dir,
    )
    method = MethodConfig(
        method=args.method,
        lr=args.lr,
        weight_decay=args.weight_decay,
        rank=args.rank,
        update_proj_gap=args.update_proj_gap,
        scale=args.scale,
        proj_type=args.proj_type,
        svd=args.svd,
        layerwise=args.layerwise,
        max_grad_norm=args.grad_clip if args.grad_clip and args.grad_clip > 0 else None,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        relora_reset_every=args.relora_reset_every,
        relora_prune=args.relora_prune,
    )
    return PretrainConfig(
        model=args.model,
        data=data,
        method=method,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        total_batch_size=args.total_batch_size,
        warmup_ratio=args.warmup_ratio,
        min_lr_ratio=args.min_lr_ratio,
        eval_every=args.eval_every,
        eval_batch_size=args.eval_batch_size,
        save_every=args.save_every,
        keep_checkpoints=args.keep_checkpoints,
        log_every=args.log_every,
        output_dir=args.output_dir,
        resume=args.resume,
        overwrite=args.overwrite,
        dtype=args.dtype,
        activation_checkpointing=args.activation_checkpointing,
        device=args.device,
        seed=args.seed,
        progress=not args.no_progress,
        tensorboard=not args.no_tensorboard,
        plot=not args.no_plot,
        nproc_per_node=args.nproc_per_node or 1,
        distributed=args.distributed,
        lowrank_comm=args.lowrank_comm,
    )


def _relaunch(args: argparse.Namespace, cfg) -> int:
    """Check everything a worker would refuse, then run the job through torchrun."""
    from pathlib import Path

    from galorekit.distributed.launch import check_nproc, launch, namespace_to_argv
    from galorekit.train.pretrain import check_output_dir, default_output_dir, resolve_device

    check_nproc(cfg.nproc_per_node, resolve_device(cfg.device).type)
    if args.output_dir is None:  # one name for every rank, and printed here
        args.output_dir = str(default_output_dir(cfg))
    check_output_dir(cfg, Path(args.output_dir))
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    worker_argv = namespace_to_argv(parser, args)
    i = worker_argv.index("--nproc-per-node")
    del worker_argv[i : i + 2]
    print(
        f"galore pretrain: launching {cfg.nproc_per_node} processes through torchrun "
        f"(output: {args.output_dir})",
        file=sys.stderr,
    )
    return launch(cfg.nproc_per_node, ["galorekit", "pretrain", *worker_argv])


def run(args: argparse.Namespace) -> int:
    from galorekit.distributed.context import env_world_size, inside_torchrun
    from galorekit.train.checkpoint import CheckpointError
    from galorekit.train.pretrain import pretrain

    try:
        if inside_torchrun() and args.nproc_per_node not in (None, env_world_size()):
            raise ValueError(
                f"--nproc-per-node {args.nproc_per_node} inside a torchrun job of "
                f"{env_world_size()} processes: drop the flag (torchrun decides the process count)"
            )
        if inside_torchrun():
            args.nproc_per_node = None
        cfg = config_from_args(args)
        if cfg.nproc_per_node > 1:
            return _relaunch(args, cfg)
        result = pretrain(cfg)
    except (ValueError, FileExistsError, FileNotFoundError, CheckpointError) as err:
        print(f"galore pretrain: error: {err}", file=sys.stderr)
        return 2
    if not result.summary:  # not rank 0 of a torchrun job: rank 0 reports
        return 0
    print(result.summary)
    where = f"\nmetrics: {result.output_dir / 'metrics.jsonl'}"
    if cfg.plot:  # --no-plot writes none
        where += f"   plot: {result.output_dir / 'curves.png'}"
    print(where)
    return 0
