"""The named model configs: the LLaMA shapes of the GaLore paper (and its reference repository's
configs), and a few of other families (GPT-2, ViT, a small CNN) for the memory estimate, the
benchmarks and tests. Torch-free: plain numbers, turned into configs by ``models.config``."""

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


#: other families: ``name → (model_type, config fields)``. GPT-2 (``Conv1D`` layers, tied head):
#: ``gpt2_124m`` is GPT-2 small; ``gpt2_tiny`` the benchmark's. ViT (image classification):
#: ``vit_base`` is ViT-B/16 at 224² (1000 classes); ``vit_digits`` the benchmark's, on 8×8
#: grey digits. ``cnn_digits``: :class:`galorekit.models.cnn.SmallCNN` on 8×8 grey digits.
FAMILY_CONFIGS: dict[str, tuple[str, dict[str, int | float | bool]]] = {
    "gpt2_tiny": ("gpt2", {"n_embd": 128, "n_layer": 2, "n_head": 4, "n_positions": 256}),
    "gpt2_124m": ("gpt2", {"n_embd": 768, "n_layer": 12, "n_head": 12, "n_positions": 1024}),
    "vit_digits": (
        "vit",
        {
            "hidden_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "intermediate_size": 256,
            "image_size": 8,
            "patch_size": 2,
            "num_channels": 1,
            "num_labels": 10,
        },
    ),
    "vit_base": (
        "vit",
        {
            "hidden_size": 768,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "intermediate_size": 3072,
            "image_size": 224,
            "patch_size": 16,
            "num_channels": 3,
            "num_labels": 1000,
        },
    ),
    "cnn_digits": ("cnn", {"in_channels": 1, "width": 64, "image_size": 8, "num_labels": 10}),
}


def family_hidden_size(name: str) -> int:
    """The width a default rank (``hidden_size // 4``) reads for a :data:`FAMILY_CONFIGS` name:
    GPT-2's ``n_embd``, ViT's ``hidden_size``, the CNN's ``width``."""
    fields = FAMILY_CONFIGS[name][1]
    return int(fields.get("n_embd") or fields.get("hidden_size") or fields["width"])


def list_models() -> list[str]:
    """Names accepted by :func:`galorekit.models.model_config`: the LLaMA shapes smallest first,
    then the other families."""
    return [*NAMED_SHAPES, *FAMILY_CONFIGS]


def normalise_name(name: str) -> str:
    """``"LLaMA-60M"`` → ``"llama_60m"``: names are matched case- and dash-insensitively."""
    return name.strip().lower().replace("-", "_")
