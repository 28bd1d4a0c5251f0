"""``galore pretrain --init-from DIR``: continue training from a Hugging Face model's weights.

``DIR`` is an ``--export-dir`` export (``DIR/final``, ``DIR/best``), any ``save_pretrained``
directory, a peft adapter directory (merged into its base on load), or a Hub name (loaded through
the same ``from_pretrained``; offline machines need it in the HF cache). The architecture is the
checkpoint's: ``--model`` defaults to it, and a ``--model`` that names another architecture is
refused rather than silently replaced.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from galorekit.extras import needs_extra
from galorekit.models import model_config

#: the config fields that make two models the same architecture
ARCHITECTURE_KEYS = (
    "model_type",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
)
_ADAPTER_CONFIG = "adapter_config.json"


def _base_of_adapter(location: str) -> str | None:
    """The base model a peft adapter directory names (None: ``location`` is no adapter)."""
    path = Path(location).expanduser()
    if (path / "config.json").is_file() or not (path / _ADAPTER_CONFIG).is_file():
        return None
    config = json.loads((path / _ADAPTER_CONFIG).read_text(encoding="utf-8"))
    return str(config.get("base_model_name_or_path") or "")


def init_config(location: str, trust_remote_code: bool = False) -> Any:
    """The transformers config of the model at ``location`` (an adapter's: its base's)."""
    base = _base_of_adapter(location)
    if base == "":
        raise ValueError(f"--init-from {location}: the adapter names no base model")
    try:
        return model_config(base or location, trust_remote_code=trust_remote_code)
    except ValueError as err:
        raise ValueError(f"--init-from {location}: {err}") from None


def check_architecture(model: str, location: str, trust_remote_code: bool = False) -> None:
    """Refuse ``--model`` when it names another architecture than ``--init-from``'s."""
    found = init_config(location, trust_remote_code)  # also: does it exist
    if model == location:
        return
    wanted = model_config(model, trust_remote_code=trust_remote_code)
    diff = [
        f"{k} {getattr(wanted, k, None)} vs {getattr(found, k, None)}"
        for k in ARCHITECTURE_KEYS
        if getattr(wanted, k, None) != getattr(found, k, None)
    ]
    if diff:
        raise ValueError(
            f"--model {model} conflicts with the architecture of --init-from {location} "
            f"({', '.join(diff)}); drop --model: the architecture comes from the checkpoint"
        )


def load_init_model(
    location: str,
    *,
    vocab_size: int,
    seq_len: int,
    device: torch.device,
    trust_remote_code: bool = False,
) -> nn.Module:
    """The causal LM at ``location`` in float32 on ``device`` (``apply_precision`` casts it after),
    checked against the data: its vocabulary must cover the tokenizer's ids and its context the
    sequence length."""
    with needs_extra("train"):
        from transformers import AutoModelForCausalLM

    config = init_config(location, trust_remote_code)
    if config.vocab_size < vocab_size:
        raise ValueError(
            f"--init-from {location} has {config.vocab_size} token embeddings but the tokenizer "
            f"has {vocab_size} tokens; use the model's own tokenizer (leave --tokenizer unset)"
        )
    positions = getattr(config, "max_position_embeddings", None)
    if positions is not None and seq_len > positions:
        raise ValueError(
            f"--seq-len {seq_len} is longer than the context of --init-from {location} "
            f"({positions} positions)"
        )
    kwargs = {"dtype": torch.float32, "trust_remote_code": trust_remote_code}
    try:
        if _base_of_adapter(location) is not None:
            from peft import AutoPeftModelForCausalLM

            model = AutoPeftModelForCausalLM.from_pretrained(location, **kwargs).merge_and_unload()
        else:
            model = AutoModelForCausalLM.from_pretrained(location, **kwargs)
    except (OSError, ValueError, KeyError) as err:  # missing or unreadable weights
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"--init-from {location}: cannot load the model ({first})") from None
    model.config.use_cache = False  # training: no key/value cache
    return model.to(device).train()
