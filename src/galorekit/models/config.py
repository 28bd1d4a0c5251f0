"""Resolve a model spec (named config, JSON file, HF config name/path, dict) to a config object."""

from __future__ import annotations

import copy
import difflib
import json
import logging
import os
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Union

from galorekit.extras import import_extra
from galorekit.models.cnn import CNNConfig
from galorekit.models.registry import FAMILY_CONFIGS, NAMED_SHAPES, list_models, normalise_name
from galorekit.names import REMOTE_CODE_HINT

if TYPE_CHECKING:
    from transformers import LlamaConfig, PretrainedConfig

logger = logging.getLogger(__name__)

ModelSpec = Union[str, os.PathLike, dict, "PretrainedConfig", CNNConfig]


def transformers() -> ModuleType:
    """transformers (galorekit[train]), imported when a config is built: ``galorekit.models`` and
    the memory estimator's API import without it (the core install)."""
    return import_extra("transformers", "train")


def _named_config(name: str) -> LlamaConfig:
    shape = NAMED_SHAPES[name]
    return transformers().LlamaConfig(
        vocab_size=shape.vocab_size,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_attention_heads,
        num_hidden_layers=shape.num_hidden_layers,
        max_position_embeddings=shape.max_position_embeddings,
        hidden_act="silu",
        initializer_range=0.02,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        # pre-training never decodes; a KV cache would only hold memory during training steps
        use_cache=False,
        pad_token_id=None,
    )


def _family_config(name: str) -> PretrainedConfig | CNNConfig:
    model_type, fields = FAMILY_CONFIGS[name]
    if model_type == "cnn":
        return CNNConfig(**fields)
    return transformers().AutoConfig.for_model(model_type, **fields)


def _config_from_dict(raw: dict[str, Any], source: str) -> PretrainedConfig:
    d = dict(raw)
    # GaLore's/ReLoRA's JSON configs predate `max_position_embeddings` and call it this
    if "max_sequence_length" in d:
        d.setdefault("max_position_embeddings", d.pop("max_sequence_length"))
    # those configs also write pad_token_id=-1 for "no padding token"; passed through, LLaMA would
    # make the last vocabulary row a zero, never-trained padding embedding
    if isinstance(d.get("pad_token_id"), int) and d["pad_token_id"] < 0:
        logger.warning("%s: pad_token_id=%s read as 'no padding token'", source, d["pad_token_id"])
        d["pad_token_id"] = None
    model_type = d.pop("model_type", "llama")  # this project's configs are LLaMA unless they say so
    try:
        return transformers().AutoConfig.for_model(model_type, **d)
    except ValueError as err:
        raise ValueError(f"{source}: unknown model_type {model_type!r} ({err})") from None


def _config_from_json_file(path: Path) -> PretrainedConfig:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"model config {str(path)!r} is not a readable JSON file: {err}") from None
    if not isinstance(raw, dict):
        raise ValueError(
            f"model config {str(path)!r} must hold a JSON object, got {type(raw).__name__}"
        )
    return _config_from_dict(raw, str(path))


def _unknown_model_message(name: str, reason: str | None = None) -> str:
    close = difflib.get_close_matches(normalise_name(name), list_models(), n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    why = f" ({reason})" if reason else ""
    return (
        f"unknown model {name!r}{why}. Valid named configs: {', '.join(list_models())}. "
        "A path to a JSON config file, a local model directory with a config.json, or a "
        f"Hugging Face config name (needs internet or the HF cache) also works.{hint}"
    )


def _auto_config(spec: str, trust_remote_code: bool) -> PretrainedConfig:
    """``AutoConfig.from_pretrained`` with ``trust_remote_code`` always explicit: left unset,
    transformers asks in a terminal and runs the repository's code on "y"."""
    try:
        return transformers().AutoConfig.from_pretrained(spec, trust_remote_code=trust_remote_code)
    except ValueError as err:
        if not trust_remote_code and "trust_remote_code" in str(err):
            raise ValueError(f"model {spec!r} {REMOTE_CODE_HINT}") from None
        raise


def _config_from_string(spec: str, trust_remote_code: bool = False) -> PretrainedConfig:
    key = normalise_name(spec)
    if key in NAMED_SHAPES:
        return _named_config(key)
    if key in FAMILY_CONFIGS:
        return _family_config(key)
    path = Path(spec).expanduser()
    if path.is_file():
        return _config_from_json_file(path)
    if path.is_dir():
        try:
            return _auto_config(str(path), trust_remote_code)
        except (OSError, ValueError) as err:
            if REMOTE_CODE_HINT in str(err):
                raise
            raise ValueError(
                _unknown_model_message(spec, f"directory without a usable config: {err}")
            ) from None
    # Names in our own family, or JSON paths that don't exist, are typos: fail now rather than
    # after the hub client's retries time out on an offline machine.
    if key.startswith("llama_") or spec.endswith(".json"):
        reason = "no such file" if spec.endswith(".json") else None
        raise ValueError(_unknown_model_message(spec, reason))
    try:
        return _auto_config(spec, trust_remote_code)
    except Exception as err:  # hub errors come in many types (OSError, HTTP errors, ValueError)
        if REMOTE_CODE_HINT in str(err):
            raise
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(_unknown_model_message(spec, f"AutoConfig failed: {first_line}")) from err


def _positive_int(value: int | None, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return value


def model_config(
    name_or_path: ModelSpec,
    *,
    vocab_size: int | None = None,
    max_position_embeddings: int | None = None,
    trust_remote_code: bool = False,
) -> PretrainedConfig:
    """The config for ``name_or_path``, with optional overrides.

    ``name_or_path`` is one of :func:`list_models` (case/dash-insensitive, a fresh
    ``LlamaConfig`` with vocab 32000, untied head, rms_norm_eps 1e-6, ``use_cache=False``), a
    JSON config file (``model_type`` defaults to ``"llama"``; the legacy ``max_sequence_length``
    key of the GaLore/ReLoRA configs is read as ``max_position_embeddings`` and a negative
    ``pad_token_id`` as none), a local model directory, a Hugging Face config name (hub names need
    internet or a populated HF cache), a ``dict`` of config fields, or a ``PretrainedConfig``
    (copied, never modified). Other families by name: ``gpt2_tiny``, ``gpt2_124m`` (GPT-2),
    ``vit_digits``, ``vit_base`` (ViT), ``cnn_digits`` (:class:`~galorekit.models.cnn.CNNConfig`).

    ``vocab_size`` matches the model to a tokenizer (CPU runs use a small BPE vocabulary);
    ``max_position_embeddings`` sets the longest sequence. Raises ``ValueError`` for an unknown
    name (listing the valid ones) or a malformed file, and for a config that needs its own code
    (``auto_map``) unless ``trust_remote_code``.
    """
    if isinstance(name_or_path, CNNConfig | transformers().PretrainedConfig):
        config = copy.deepcopy(name_or_path)
    elif isinstance(name_or_path, dict):
        config = _config_from_dict(name_or_path, "model config dict")
    elif isinstance(name_or_path, str | os.PathLike):
        config = _config_from_string(os.fspath(name_or_path), trust_remote_code)
    else:
        raise ValueError(
            "model must be a config name, a path, a dict or a PretrainedConfig, got "
            f"{type(name_or_path).__name__}. Valid named configs: {', '.join(list_models())}"
        )
    for key, value in (
        ("vocab_size", vocab_size),
        ("max_position_embeddings", max_position_embeddings),
    ):
        if _positive_int(value, key) is None:
            continue
        if not hasattr(config, key):  # an image model has neither
            raise ValueError(f"{key} does not apply to a {config.model_type} model")
        setattr(config, key, value)
    return config
