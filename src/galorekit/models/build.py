"""Build a causal LM from random init, on any device (``"meta"`` included) and dtype."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from torch import nn

from galorekit.extras import import_extra
from galorekit.models.cnn import CNNConfig, SmallCNN
from galorekit.models.config import ModelSpec, model_config, transformers

if TYPE_CHECKING:
    from transformers import PreTrainedModel

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def resolve_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """``torch.float32`` or one of ``float32/fp32/bfloat16/bf16/float16/fp16``."""
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating-point dtype, got {dtype}")
        return dtype
    if isinstance(dtype, str) and dtype.lower() in _DTYPES:
        return _DTYPES[dtype.lower()]
    raise ValueError(f"unknown dtype {dtype!r}; valid: {', '.join(_DTYPES)} or a torch.dtype")


@contextlib.contextmanager
def _seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Seed the init without disturbing the caller's RNG streams."""
    if seed is None:
        yield
        return
    cuda = []
    if device.type == "cuda":
        cuda = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=cuda, device_type="cuda"):
        torch.manual_seed(seed)
        yield


def build_model(
    name_or_path_or_config: ModelSpec,
    *,
    vocab_size: int | None = None,
    max_position_embeddings: int | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str = torch.float32,
    seed: int | None = None,
    trust_remote_code: bool = False,
) -> PreTrainedModel:
    """A randomly initialised causal LM (``LlamaForCausalLM`` for the named LLaMA configs,
    ``GPT2LMHeadModel`` for ``gpt2_*``), image classifier (``ViTForImageClassification`` for
    ``vit_*``, any config without a causal LM) or :class:`~galorekit.models.cnn.SmallCNN`.

    The spec is anything :func:`galorekit.models.model_config` accepts. The parameters are
    created directly on ``device`` (default CPU) in ``dtype``: ``device="meta"`` allocates nothing,
    which is how memory estimates build a 7B model. ``seed`` makes the init reproducible (for a
    given device type) without changing the global RNG state; ``None`` draws from the global RNG.
    The model is returned in training mode. A model whose config names its own code
    (``auto_map``) is refused unless ``trust_remote_code``.
    """
    config = model_config(
        name_or_path_or_config,
        vocab_size=vocab_size,
        max_position_embeddings=max_position_embeddings,
        trust_remote_code=trust_remote_code,
    )
    torch_dtype = resolve_dtype(dtype)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    with _seeded(seed, dev), torch.device(dev):
        if isinstance(config, CNNConfig):
            model = SmallCNN(config).to(torch_dtype)
        else:
            model = _auto_class(config).from_config(
                config, dtype=torch_dtype, trust_remote_code=trust_remote_code
            )
    model.train()
    return model


def _auto_class(config: object) -> type:
    """The transformers auto class for ``config``: a causal LM, or for a model type that has
    none (ViT) an image classifier."""
    tf = transformers()
    auto = import_extra("transformers.models.auto.modeling_auto", "train")

    model_type = config.model_type
    if model_type in auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or getattr(config, "auto_map", None):
        return tf.AutoModelForCausalLM
    if model_type in auto.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES:
        return tf.AutoModelForImageClassification
    raise ValueError(
        f"cannot build a causal LM or an image classifier from a {type(config).__name__} "
        f"(model_type={model_type!r})"
    )


def count_parameters(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of parameters (tied weights once; ``trainable_only``: those with requires_grad)."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total


def enable_activation_checkpointing(model: nn.Module, *, reentrant: bool = False) -> None:
    """Checkpoint every decoder layer through transformers' current API
    (``activation_checkpointing_enable``; ``gradient_checkpointing_enable`` before it, now
    deprecated with a FutureWarning). ``reentrant=True``: the recomputation goes through
    saved-tensor hooks (what ``galorekit.memory`` measures activations with)."""
    kwargs = {"use_reentrant": reentrant}
    enable = getattr(model, "activation_checkpointing_enable", None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        if enable is not None:
            enable(activation_checkpointing_kwargs=kwargs)
        else:  # transformers before the rename
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
