"""What ``galore sft`` feeds and measures: batches of examples (in a resumable order), the validation loss on the answer tokens, and
the accuracy of greedily generated answers to held-out questions."""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from galorekit.data.sft import IGNORE, Example, Prompt, SFTData
from galorekit.data.sources import epoch_seed

#: prompts per generate call when scoring answers
GENERATE_BATCH = 32


def collate(examples: Sequence[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded tensors of ``examples``: input_ids, labels (``IGNORE`` on padding) and either
    an attention mask or, for packed sequences, position ids (transformers then keeps the packed
    examples apart; padding becomes a segment of its own)."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    packed = examples[0].position_ids is not None
    extra = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        if packed:
            extra[i, :n] = torch.tensor(e.position_ids)
            extra[i, n:] = torch.arange(width - n)
        else:
            extra[i, :n] = 1
    key = "position_ids" if packed else "attention_mask"
    return {"input_ids": ids, "labels": labels, key: extra}


class Batches:
    """Training micro-batches as a function of their index: epoch ``i // per_epoch`` is a
    permutation seeded by ``epoch_seed(seed, epoch)`` (a resumed run draws the same ones). Rank r
    of W processes takes the global micro-batches r, r+W, …: W ranks with batch b compute what one
    process with batch b and W× the accumulation does."""

    def __init__(
        self, examples: list, batch_size: int, seed: int, pad_id: int, rank: int = 0, world: int = 1
    ) -> None:
        self.examples, self.batch_size, self.seed, self.pad_id = examples, batch_size, seed, pad_id
        self.rank, self.world = rank, world  # under torchrun rank r draws micro-batches r, r+W, …
        self.per_epoch = math.ceil(len(examples) / batch_size)
        self._order: tuple[int, list[int]] | None = None
        self.index = 0  # the next micro-batch
        self.last_tokens = 0

    def _permutation(self, epoch: int) -> list[int]:
        if self._order is None or self._order[0] != epoch:
            gen = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
            self._order = (epoch, torch.randperm(len(self.examples), generator=gen).tolist())
        return self._order[1]

    def next(self) -> dict[str, torch.Tensor]:
        epoch, k = divmod(self.index * self.world + self.rank, self.per_epoch)
        order = self._permutation(epoch)[k * self.batch_size : (k + 1) * self.batch_size]
        self.index += 1
        chosen = [self.examples[i] for i in order]
        self.last_tokens = sum(len(e.input_ids) for e in chosen)  # padding not counted
        return collate(chosen, self.pad_id)


def data_fingerprint(data: SFTData) -> str:
    """SHA-256 (16 hex) of the training tokens and labels: a resumed run trains on the same."""
    digest = hashlib.sha256()
    for e in data.train:
        digest.update(repr((e.input_ids, e.labels, e.position_ids)).encode())
    return digest.hexdigest()[:16]


def sft_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The model's cross-entropy on the labelled (answer) tokens of ``batch`` (without a KV
    cache: transformers separates packed examples only then)."""
    return model(**batch, use_cache=False).loss


@torch.no_grad()
def validation_sums(
    model: nn.Module,
    examples: Sequence[Example],
    batch_size: int,
    pad_id: int,
    device: torch.device,
    autocast: Callable[[], AbstractContextManager],
    *,
    forwards: int = 0,
    filler: Sequence[Example] = (),
) -> tuple[float, int]:
    """(token-weighted sum of the cross-entropy, tokens) over the labelled tokens of
    ``examples``: sums add over ranks.

    ``forwards`` more than the batches of ``examples`` runs that many forward passes in all, the
    extra ones on ``filler`` and not counted (a sharded model's forward is collective: every rank
    must run as many)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    for start in range(0, len(order), batch_size):
        batch = collate([examples[i] for i in order[start : start + batch_size]], pad_id)
        batch = {k: v.to(device) for k, v in batch.items()}
        with autocast():
            loss = float(sft_loss(model, batch))
        tokens = int((batch["labels"][:, 1:] != IGNORE).sum())  # the model shifts the labels
        total += loss * tokens
        count += tokens
    for _ in range(forwards - math.ceil(len(order) / batch_size)):
        batch = collate(list(filler[:batch_size]), pad_id)
        with autocast():
            model(**{k: v.to(device) for k, v in batch.items()}, use_cache=False)
    model.train(was_training)
    return total, count


@dataclass
class GenerationScore:
    """Accuracy of generated answers and a few of them."""

    accuracy: float
    n: int
    samples: list[dict[str, str]]  # question (shortened), reference, generated

    def as_event(self) -> dict[str, Any]:
        return {"accuracy": self.accuracy, "n": self.n, "samples": self.samples}


def _prompt_text(prompt: Prompt, tokenizer: Any) -> str:
    if prompt.messages is not None:
        return tokenizer.apply_chat_template(
            prompt.messages, tokenize=False, add_generation_prompt=True
        )
    return prompt.text or ""


@torch.no_grad()
def generate_answers(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[Prompt],
    device: torch.device,
    *,
    max_new_tokens: int,
    batch_size: int = GENERATE_BATCH,
    calls: int = 0,
    filler: Sequence[Prompt] = (),
    synced: bool = False,
) -> list[str]:
    """Greedy answers to ``prompts`` (left-padded batches of ``batch_size``).

    Sharded models (FSDP2) generate collectively: ``synced`` keeps a rank whose answers are
    complete running forwards until every rank's are (transformers' ``synced_gpus``), and
    ``calls`` more than this rank's batches adds generate calls on ``filler`` (a repeated prompt)
    whose answers are dropped, so that every rank makes as many."""
    was_training = model.training
    model.eval()
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # generation continues every row at the same position
    generated: list[str] = []
    batches = [prompts[i : i + batch_size] for i in range(0, len(prompts), batch_size)]
    try:
        for n, chunk in enumerate(batches + [filler] * (calls - len(batches))):
            texts = [_prompt_text(p, tokenizer) for p in chunk]
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            enc = {k: v.to(device) for k, v in enc.items()}
            out = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                **({"synced_gpus": True} if synced else {}),
            )
            if n < len(batches):  # not a filler call
                new = out[:, enc["input_ids"].shape[1] :]
                generated += tokenizer.batch_decode(new, skip_special_tokens=True)
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return generated


def score_answers(
    prompts: Sequence[Prompt], generated: Sequence[str], samples: int = 3
) -> GenerationScore:
    """``generated`` scored against the references of ``prompts``: with a closed set of answers
    (``answer_choices``) the one a generation names first, else the whole generation
    (normalized) must match; the first ``samples`` kept to show."""
    choices = answer_choices(prompts)
    correct = [parse_answer(g, choices) == normalize(p.answer) for g, p in zip(generated, prompts)]
    shown = [
        {
            "question": _shorten(p.messages[-1]["content"] if p.messages else p.text or ""),
            "reference": p.answer,
            "generated": g.strip(),
        }
        for p, g in list(zip(prompts, generated))[:samples]
    ]
    return GenerationScore(sum(correct) / max(len(correct), 1), len(correct), shown)


def generation_accuracy(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[Prompt],
    device: torch.device,
    *,
    max_new_tokens: int,
    batch_size: int = GENERATE_BATCH,
    samples: int = 3,
) -> GenerationScore:
    """Greedy answers to ``prompts`` (``generate_answers``), scored (``score_answers``)."""
    generated = generate_answers(
        model, tokenizer, prompts, device, max_new_tokens=max_new_tokens, batch_size=batch_size
    )
    return score_answers(prompts, generated, samples)


def _shorten(text: str, width: int = 90) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


# ---------------------------------------------------------------------------- scoring answers
def normalize(text: str) -> str:
    """Lower case, punctuation and surrounding space dropped, spaces collapsed."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def parse_answer(generated: str, choices: Sequence[str] | None) -> str:
    """The answer a generation gives: with a closed set of ``choices``, the one it names first
    (as whole words; "" if none), else the whole generation, normalized."""
    text = normalize(generated)
    if not choices:
        return text
    found = [
        (m.start(), c)
        for c in choices
        for m in [re.search(rf"\b{re.escape(normalize(c))}\b", text)]
        if m is not None
    ]
    return normalize(min(found)[1]) if found else ""


def answer_choices(prompts: Sequence[Prompt], limit: int = 20) -> list[str] | None:
    """The distinct reference answers when there are few (a classification-like task), else
    None (answers are compared whole)."""
    distinct = sorted({normalize(p.answer) for p in prompts})
    return distinct if 1 < len(distinct) <= limit else None
