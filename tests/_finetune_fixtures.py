"""Tiny offline encoders, tokenizers and generated sentiment data for the fine-tuning tests."""

from __future__ import annotations

import csv
import random
from pathlib import Path

POSITIVE = ("good", "great", "fine", "nice")
NEGATIVE = ("bad", "awful", "poor", "dull")
NEUTRAL = ("the", "movie", "film", "plot", "was", "is", "a", "very", "quite", "story", "acting")
SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
VOCAB = (*SPECIALS, *POSITIVE, *NEGATIVE, *NEUTRAL)


def make_tokenizer(*, token_types: bool):
    """A WordLevel tokenizer over ``VOCAB`` with BERT-style [CLS] a [SEP] b [SEP] templates.

    ``token_types=False`` mimics RoBERTa (no ``token_type_ids`` input).
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(VOCAB)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    names = ["input_ids", "token_type_ids", "attention_mask"] if token_types else None
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=48,
        **({"model_input_names": names} if names else {}),
    )


def save_tiny_encoder(
    path: Path, kind: str, *, num_labels: int | None = None, hidden_size: int = 32
) -> Path:
    """A random-initialised 2-layer BERT or RoBERTa (MLP width 2 x ``hidden_size``) plus its
    tokenizer, saved to ``path``.

    With ``num_labels`` it is saved as a sequence classifier (as a fine-tuned model would be);
    otherwise as a bare encoder (as a pre-trained one is).
    """
    import torch
    from transformers import (
        AutoModel,
        AutoModelForSequenceClassification,
        BertConfig,
        RobertaConfig,
    )

    torch.manual_seed(0)
    common = dict(
        vocab_size=len(VOCAB),
        hidden_size=hidden_size,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=2 * hidden_size,
        pad_token_id=0,
    )
    if kind == "bert":
        config = BertConfig(max_position_embeddings=48, **common)
    elif kind == "roberta":
        config = RobertaConfig(max_position_embeddings=50, type_vocab_size=1, **common)
    else:
        raise ValueError(kind)
    if num_labels is None:
        model = AutoModel.from_config(config)
    else:
        config.num_labels = num_labels
        model = AutoModelForSequenceClassification.from_config(config)
    model.save_pretrained(path)
    make_tokenizer(token_types=kind == "bert").save_pretrained(path)
    return path


def sentiment_rows(n: int, seed: int) -> list[dict[str, str | int]]:
    """Sentences with one sentiment word among neutral ones; label 1 iff it is positive."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = [rng.choice(NEUTRAL) for _ in range(rng.randint(3, 7))]
        label = rng.randint(0, 1)
        words.insert(rng.randint(0, len(words)), rng.choice(POSITIVE if label else NEGATIVE))
        rows.append({"sentence": " ".join(words), "label": label})
    return rows


def pair_rows(n: int, seed: int) -> list[dict[str, str | int]]:
    """Sentence pairs; label 1 iff both carry a sentiment word of the same polarity."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(0, 1), rng.randint(0, 1)
        s1 = (
            f"{rng.choice(NEUTRAL)} {rng.choice(POSITIVE if a else NEGATIVE)} {rng.choice(NEUTRAL)}"
        )
        s2 = f"{rng.choice(POSITIVE if b else NEGATIVE)} {rng.choice(NEUTRAL)}"
        rows.append({"sentence1": s1, "sentence2": s2, "label": int(a == b)})
    return rows


def write_rows(path: Path, rows: list[dict], *, delimiter: str = ",") -> Path:
    if path.suffix == ".jsonl":
        import json

        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        return path
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter=delimiter)
        writer.writeheader()
        writer.writerows(rows)
    return path


def tiny_data_files(root: Path) -> dict[str, Path]:
    """Generated sentiment (256 train, 96 validation rows) and pair-task files under ``root``."""
    return {
        "train": write_rows(root / "train.csv", sentiment_rows(256, seed=0)),
        "val": write_rows(root / "val.csv", sentiment_rows(96, seed=1)),
        "pair_train": write_rows(root / "pair_train.tsv", pair_rows(64, seed=2), delimiter="\t"),
        "pair_val": write_rows(root / "pair_val.tsv", pair_rows(32, seed=3), delimiter="\t"),
    }


def parse(*argv: str):
    """``galore finetune``'s flags parsed into a namespace."""
    import argparse

    from galorekit.train import finetune_cli

    parser = argparse.ArgumentParser()
    finetune_cli.add_arguments(parser)
    return parser.parse_args(list(argv))


def tiny_args(model: Path, files: dict[str, Path], out: Path, *extra: str) -> list[str]:
    """Flags of a fast run: the generated sentiment files, batch 16, 16 tokens, rank 4."""
    return [
        "--model", str(model),
        "--train-file", str(files["train"]),
        "--validation-file", str(files["val"]),
        "--output-dir", str(out),
        "--batch-size", "16",
        "--max-length", "16",
        "--rank", "4",
        "--warmup-ratio", "0",
        "--seed", "42",  # the seed these settings were chosen under (the default is 0)
        "--no-tensorboard",
        "--no-progress",
        *extra,
    ]  # fmt: skip
