"""Tiny models, data and Trainer runs shared by the integration tests (offline, CPU, seconds)."""

from __future__ import annotations

import torch

VOCAB, SEQ = 64, 8


def tiny_llama(seed: int = 0):
    """A 2-layer LLaMA (hidden 32) made from a config: no hub access."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


class TokenDataset(torch.utils.data.Dataset):
    """``n`` random token sequences, labels = inputs (causal LM)."""

    def __init__(self, n: int = 10, seed: int = 1) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, VOCAB, (n, SEQ), generator=g)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def training_args(output_dir, config_cls=None, **overrides):
    """A ``TrainingArguments`` (or ``config_cls``, e.g. TRL's ``SFTConfig``) for a tiny GaLore run:
    batch 2, accumulation 2, 2 epochs, rank 4, no clipping, no saving, CPU."""
    from transformers import TrainingArguments

    settings = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        num_train_epochs=2,
        learning_rate=1e-2,
        weight_decay=0.01,
        lr_scheduler_type="linear",
        warmup_steps=1,
        max_grad_norm=0.0,
        optim="galore_adamw",
        optim_target_modules=["self_attn", "mlp"],
        optim_args="rank=4, update_proj_gap=2, scale=0.25, proj_type=std",
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    settings.update(overrides)
    return (config_cls or TrainingArguments)(**settings)


def params(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[n] - b[n]).abs().max()) for n in a)


def word_tokenizer():
    """A word-level tokenizer of VOCAB tokens built in memory (no hub): pad, unk, bos, eos and
    the words w0 … w59."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<s>", "</s>"]
    vocab = {tok: i for i, tok in enumerate(specials + [f"w{i}" for i in range(VOCAB - 4)])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
    )


def text_dataset(n: int = 10, seed: int = 1):
    """``n`` short texts of random words (a ``datasets.Dataset`` with a "text" column)."""
    from datasets import Dataset

    g = torch.Generator().manual_seed(seed)
    words = torch.randint(0, VOCAB - 4, (n, SEQ - 2), generator=g)
    return Dataset.from_dict({"text": [" ".join(f"w{int(w)}" for w in row) for row in words]})
