"""The named LLaMA shapes of the GaLore paper (and its reference repository's configs)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LlamaShape:
    """Shape of a LLaMA model: everything the named configs vary."""

    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_hidden_layers: int
    max_position_embeddings: int = 1024
    vocab_size: int = 32000


# 60M…7B: Table/§5 of the paper; 9M and 20M: configs/llama_{9m,20m}.json of the GaLore repository.
# max_position_embeddings follows those configs (1024, and 2048 for 7B). `llama_tiny` is ours: small
# enough for unit tests and a CPU run of a few minutes.
NAMED_SHAPES: dict[str, LlamaShape] = {
    "llama_tiny": LlamaShape(64, 176, 4, 2),
    "llama_9m": LlamaShape(128, 352, 4, 4),
    "llama_20m": LlamaShape(256, 688, 4, 4),
    "llama_60m": LlamaShape(512, 1376, 8, 8),
    "llama_130m": LlamaShape(768, 2048, 12, 12),
    "llama_350m": LlamaShape(1024, 2736, 16, 24),
    "llama_1b": LlamaShape(2048, 5461, 32, 24),
    "llama_3b": LlamaShape(2560, 6848, 32, 32),
    "llama_7b": LlamaShape(4096, 11008, 32, 32, max_position_embeddings=2048),
}


def list_models() -> list[str]:
    """Names accepted by :func:`galorekit.models.model_config`, smallest first."""
    return list(NAMED_SHAPES)


def normalise_name(name: str) -> str:
    """``"LLaMA-60M"`` → ``"llama_60m"``: names are matched case- and dash-insensitively."""
    return name.strip().lower().replace("-", "_")
