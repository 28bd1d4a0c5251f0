"""Tokenizers: a BPE trained on the offline corpus, mistral-common's sentencepiece, or any HF one.

``build_tokenizer(cfg)`` always returns a ``transformers`` tokenizer with ``eos_token`` (and a
``pad_token``, falling back to EOS) set. Trained and converted tokenizers are cached under
``<cache>/tokenizers/`` and published atomically, so later runs load them in milliseconds.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import importlib.util
import logging
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from galorekit.atomic import publish_directory
from galorekit.data import corpora
from galorekit.data.config import OFFLINE_TOKENIZERS, DataConfig, content_key

# the [train] packages are imported in the functions that use them, through needs_extra: they
# take seconds to import, and the core install and `galore --help` import this module
from galorekit.extras import needs_extra
from galorekit.names import REMOTE_CODE_HINT

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

logger = logging.getLogger(__name__)

BOS, EOS, PAD = "<s>", "</s>", "<pad>"
# Bump when the BPE recipe below changes (invalidates cached tokenizers).
_BPE_RECIPE = 1
_MISTRAL_MODEL = "tokenizer.model.v1"  # Mistral-7B-v0.1's LLaMA-style 32000-piece model


def train_bpe_tokenizer(documents: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE (GPT-2 style) on ``documents``; deterministic for a given input.

    Ids 0, 1, 2 are ``<s>``, ``</s>``, ``<pad>``; every byte is in the alphabet, so no text is
    ever unknown. ``vocab_size`` is an upper bound: a small corpus may yield fewer merges.
    """
    with needs_extra("train"):
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
        from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[BOS, EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(documents, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=BOS, eos_token=EOS, pad_token=PAD
    )


def build_tokenizer(cfg: DataConfig) -> PreTrainedTokenizerBase:
    """The tokenizer named by ``cfg.tokenizer`` (see :data:`OFFLINE_TOKENIZERS`)."""
    if cfg.tokenizer == "default":
        tok = _default_bpe(cfg)
    elif cfg.tokenizer == "mistral":
        tok = _mistral(cfg.resolved_cache_dir())
    else:
        tok = _auto_tokenizer(cfg.tokenizer, cfg.trust_remote_code)
    return _ensure_special_tokens(tok, cfg.tokenizer)


def tokenizer_fingerprint(tok: PreTrainedTokenizerBase) -> str:
    """A key that changes whenever the text → ids mapping (or the EOS id) changes."""
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None:
        blob = backend.to_str()
    else:  # slow (python) tokenizer: the vocabulary is the best available proxy
        blob = repr(sorted(tok.get_vocab().items()))
    digest = hashlib.sha256(blob.encode()).hexdigest()
    return content_key(type(tok).__name__, digest, tok.eos_token_id, len(tok))


# ----------------------------------------------------------------------------- internals
def _default_bpe(cfg: DataConfig) -> PreTrainedTokenizerFast:
    with needs_extra("train"):
        from transformers import PreTrainedTokenizerFast

    cache = cfg.resolved_cache_dir()
    corpus = corpora.offline_corpus("default", cache)
    path = cache / "tokenizers" / f"bpe{cfg.vocab_size}-{content_key(_BPE_RECIPE, corpus.key)}"
    if not (path / "tokenizer.json").is_file():
        logger.warning(
            "training a %d-token byte-level BPE on the %s corpus (once) ...",
            cfg.vocab_size,
            corpus.name,
        )
        tok = train_bpe_tokenizer(corpus.load_documents(), cfg.vocab_size)
        with publish_directory(path) as tmp:
            tok.save_pretrained(tmp)
    return PreTrainedTokenizerFast.from_pretrained(str(path))


def _mistral(cache: Path) -> PreTrainedTokenizerFast:
    with needs_extra("train"):
        from transformers import LlamaTokenizer, PreTrainedTokenizerFast

    if importlib.util.find_spec("mistral_common") is None:
        raise ImportError(
            "tokenizer='mistral' needs the mistral-common package: pip install mistral-common"
        )
    model = importlib.resources.files("mistral_common") / "data" / _MISTRAL_MODEL
    if not model.is_file():
        raise FileNotFoundError(
            f"mistral-common no longer ships data/{_MISTRAL_MODEL}; found {model}"
        )
    blob = model.read_bytes()
    path = cache / "tokenizers" / f"mistral-v1-{hashlib.sha256(blob).hexdigest()[:16]}"
    if not (path / "tokenizer.json").is_file():
        # transformers converts the sentencepiece model (needs sentencepiece + protobuf) into a
        # fast tokenizer; that takes seconds, so the converted tokenizer.json is cached.
        logger.warning("converting mistral-common's sentencepiece model (once) ...")
        work = Path(tempfile.mkdtemp(prefix="galorekit-mistral-"))
        try:
            (work / "tokenizer.model").write_bytes(blob)
            tok = LlamaTokenizer.from_pretrained(str(work))
            with publish_directory(path) as tmp:
                tok.save_pretrained(tmp)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return PreTrainedTokenizerFast.from_pretrained(str(path))


def _auto_tokenizer(name: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    with needs_extra("train"):
        from transformers import AutoTokenizer

    path = Path(name).expanduser()
    looks_like_path = name.startswith((".", "/", "~")) or path.exists()
    if looks_like_path and not path.exists():
        raise FileNotFoundError(f"tokenizer path {name!r} does not exist")
    try:
        # trust_remote_code always explicit: left unset, transformers asks in a terminal and
        # runs the repository's code on "y"
        return AutoTokenizer.from_pretrained(
            str(path) if looks_like_path else name, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError) as e:
        if not trust_remote_code and "trust_remote_code" in str(e):
            raise ValueError(f"tokenizer {name!r} {REMOTE_CODE_HINT}") from None
        choices = ", ".join(f"{k!r} ({v})" for k, v in OFFLINE_TOKENIZERS.items())
        raise ValueError(
            f"unknown tokenizer {name!r}: {e}. Offline choices: {choices}; any Hugging Face Hub "
            "tokenizer name (e.g. 't5-base', the paper's) works when online, and so does a local "
            "directory saved with save_pretrained."
        ) from e


def _ensure_special_tokens(tok: PreTrainedTokenizerBase, name: str) -> PreTrainedTokenizerBase:
    """Packing separates documents with EOS, so a tokenizer without one cannot be used as is."""
    if tok.eos_token is None:
        if tok.sep_token is None:
            raise ValueError(
                f"tokenizer {name!r} has neither an eos_token nor a sep_token to separate documents"
            )
        tok.eos_token = tok.sep_token
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token  # never used for packed data; set for the model's config
    return tok
