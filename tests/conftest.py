"""Shared test fixtures. Keep this file small: fixtures used by several test files only."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

# The tests use small tensors, for which one intra-op thread is fastest; on a loaded machine torch's
# default thread pool makes them up to ~20x slower (threads spin waiting for each other).
torch.set_num_threads(1)


@pytest.fixture
def gen() -> torch.Generator:
    """A CPU generator seeded with 0, so that a test's random tensors never depend on test order."""
    return torch.Generator().manual_seed(0)


@pytest.fixture
def make_tiny_llama() -> Callable[..., nn.Module]:
    """Builds a tiny randomly initialised ``LlamaForCausalLM`` (hidden 32, 2 layers, 2 heads,
    vocab 64, intermediate 64) — no hub access; ``tie_word_embeddings`` is configurable."""

    def build(tie_word_embeddings: bool = False, seed: int = 0) -> nn.Module:
        from transformers import LlamaConfig, LlamaForCausalLM

        config = LlamaConfig(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=32,
            tie_word_embeddings=tie_word_embeddings,
        )
        torch.manual_seed(seed)
        return LlamaForCausalLM(config)

    return build


@pytest.fixture(scope="session")
def pretrain_corpus(tmp_path_factory) -> dict[str, str]:
    """A small local corpus (real KJV text) and a private cache, shared by the pretrain tests so
    that its tokenizer is trained once."""
    from galorekit.data.corpora import kjv_documents

    root = tmp_path_factory.mktemp("pretrain-corpus")
    path = root / "kjv.txt"
    path.write_text("\n\n".join(kjv_documents()[:80]), encoding="utf-8")
    return {"file": str(path), "cache": str(root / "cache")}
