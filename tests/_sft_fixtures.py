"""A tiny offline chat model for the SFT tests: a byte-level BPE tokenizer with a ChatML template
and a 2-layer LLaMA from a config, saved as a Hugging Face directory; generated sentiment data."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

POSITIVE = ("good", "great", "fine", "nice", "superb")
NEGATIVE = ("bad", "awful", "poor", "dull", "weak")
FILLER = ("the", "movie", "film", "plot", "was", "is", "a", "very", "quite", "story", "acting")
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
QUESTION = "Positive or negative? "


def review(rng: random.Random) -> tuple[str, str]:
    label = rng.choice(("positive", "negative"))
    words = [rng.choice(FILLER) for _ in range(rng.randint(2, 5))]
    words.insert(
        rng.randint(0, len(words)), rng.choice(POSITIVE if label == "positive" else NEGATIVE)
    )
    return " ".join(words), label


def chat_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        text, label = review(rng)
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": QUESTION + text},
                    {"role": "assistant", "content": label},
                ]
            }
        )
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def make_tokenizer(chat_template: bool = True):
    """Byte-level BPE trained on the generated vocabulary (a second), ChatML specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [" ".join(POSITIVE + NEGATIVE + FILLER), QUESTION, "user assistant system\n"] * 20
    corpus += ["### Instruction:\n### Input:\n### Response:\n positive negative"] * 20
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="<|im_end|>",
        bos_token=None,
        model_max_length=128,
    )
    if chat_template:
        fast.chat_template = CHATML
    return fast


def tiny_llama_config(tokenizer: Any) -> Any:
    """A 2-layer LLaMA (hidden 32) for ``tokenizer``: its padding and end tokens, tied head."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=True,
    )


def save_tiny_chat_model(path: Path, *, chat_template: bool = True, seed: int = 0) -> Path:
    """A random-initialised 2-layer LLaMA (hidden 32) and its tokenizer, saved to ``path``."""
    import torch
    from transformers import LlamaForCausalLM

    tokenizer = make_tokenizer(chat_template)
    config = tiny_llama_config(tokenizer)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
