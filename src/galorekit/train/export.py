"""Export a trained model as a Hugging Face directory that ``from_pretrained`` loads.

:func:`export_hf` writes ``config.json``, safetensors weights, the generation config (causal LMs)
and the tokenizer, atomically: everything goes to a temporary sibling directory, is fsynced and
renamed into place (``checkpoint.atomic_directory``), so a reader never sees half an export and a
crash leaves the previous one. An existing non-empty directory is refused unless ``overwrite``.

galorekit's adapter methods are turned back into the plain architecture:

- peft LoRA (``lora``, ``relora``): merged (``W + scale·B·A``, the default), or, with
  ``merge_adapters=False``, saved as a peft adapter (``adapter_config.json``,
  ``adapter_model.safetensors``) that ``PeftModel.from_pretrained(base, DIR)`` loads. When the
  base weights changed too (galorekit's pre-training LoRA also trains embeddings and norms) or
  cannot be found again by name, the base goes beside it in ``DIR/base``, and the adapter's
  ``base_model_name_or_path`` names that directory;
- Low-Rank factors (``low_rank``): ``W = B·A``.

The trained model is never modified: merged weights are computed into a new state dict.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from galorekit.atomic import atomic_write_json
from galorekit.extras import needs_extra
from galorekit.methods.adapters.low_rank import LowRankLinear
from galorekit.train.checkpoint import atomic_directory

#: galorekit's record of an export (what was merged, the metadata a command passed)
EXPORT_FILE = "galorekit_export.json"
#: where an adapter export keeps the base weights when they cannot be found by name
BASE_DIR = "base"


class ExportError(ValueError):
    """An export refused before anything was written (the message says why)."""


def export_hf(
    model: nn.Module,
    output_dir: str | os.PathLike[str],
    *,
    tokenizer: Any = None,
    merge_adapters: bool = True,
    dtype: torch.dtype | str | None = None,
    overwrite: bool = False,
    metadata: Mapping[str, Any] | None = None,
    state_dict: Mapping[str, torch.Tensor] | None = None,
) -> Path:
    """Write ``model`` (a transformers model, optionally wrapped by peft adapters, galorekit's
    Low-Rank factors, DDP or ``torch.compile``) to ``output_dir`` as a Hugging Face directory.

    ``tokenizer``: saved beside the weights. ``merge_adapters``: merge peft LoRA adapters into the
    base weights (True) or save them as a peft adapter (False; see the module docstring).
    ``dtype``: cast the saved floating-point weights (default: as trained). ``overwrite``: replace
    an existing non-empty ``output_dir`` (only once the new export is complete). ``metadata``:
    JSON-able facts recorded in ``galorekit_export.json`` (step, eval loss, ...).
    ``state_dict``: the weights to write instead of the model's own, under its own keys (FSDP:
    the full state dict gathered from the shards, see :func:`full_state_dict`).
    Returns the directory; raises :class:`ExportError` for a refused target or model.
    """
    out = Path(output_dir)
    check_export_target(out, overwrite)
    module = unwrap(model)
    cast = _dtype(dtype)
    peft_model = _peft_model(module)
    if state_dict is not None and peft_model is not None:
        raise ExportError("state_dict= is for plain models; peft models export their own")
    if not merge_adapters and peft_model is None:
        raise ExportError(
            f"{type(module).__name__} has no peft adapters to save unmerged; export it merged"
        )
    record: dict[str, Any] = {"merged": merge_adapters, **(metadata or {})}
    with atomic_directory(out) as tmp:
        if merge_adapters:
            base = peft_model.get_base_model() if peft_model is not None else module
            state = dict(state_dict) if state_dict is not None else merged_state_dict(module)
            _save(base, tmp, state, cast, tokenizer)
        else:
            record["base"] = _save_adapter(peft_model, tmp, out, cast, tokenizer)
        atomic_write_json(tmp / EXPORT_FILE, record, indent=2, sort_keys=True)
    return out


def check_export_target(
    out: Path, overwrite: bool, hint: str = "choose another directory or pass overwrite=True"
) -> None:
    """Refuse a target that is a file, or a non-empty directory without ``overwrite`` (a
    command checks this before it trains, so that a long run cannot end in a refused export)."""
    if out.exists() and not out.is_dir():
        raise ExportError(f"export target {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ExportError(f"export target {out} exists and is not empty; {hint}")


def unwrap(model: nn.Module) -> nn.Module:
    """The module under DDP (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None)
        if inner is None and isinstance(model, nn.parallel.DistributedDataParallel):
            inner = model.module
        if inner is None:
            return model
        model = inner


class ExportDirs:
    """``--export-dir`` of a training command: ``DIR/final`` written at the end, ``DIR/best`` at
    each evaluation the command finds better. ``check`` refuses, before training, targets that
    hold something else; a resumed or overwritten run replaces its own exports."""

    def __init__(self, root: str | os.PathLike[str], *, merge_adapters: bool = True) -> None:
        self.root = Path(root)
        self.merge_adapters = merge_adapters

    def check(self, replace: bool) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise ExportError(f"--export-dir {self.root} exists and is not a directory")
        for which in ("final", "best"):
            check_export_target(
                self.root / which,
                replace,
                "choose another --export-dir, or pass --overwrite (--resume replaces the exports "
                "of the run it continues)",
            )

    def previous(self, which: str) -> dict[str, Any] | None:
        """The record of an earlier export (a resumed run continues its best), None if none."""
        path = self.root / which / EXPORT_FILE
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

    def write(
        self,
        which: str,
        model: nn.Module,
        *,
        tokenizer: Any = None,
        state_dict: Mapping[str, torch.Tensor] | None = None,
        **metadata: Any,
    ) -> Path:
        return export_hf(
            model,
            self.root / which,
            tokenizer=tokenizer,
            merge_adapters=self.merge_adapters,
            overwrite=True,
            metadata=metadata,
            state_dict=state_dict,
        )


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor] | None:
    """An FSDP2-sharded model's full state dict on the CPU (collective: every rank calls it;
    ranks other than 0 get an empty dict); None for a model that is not sharded."""
    from torch.distributed.tensor import DTensor

    if not any(isinstance(p, DTensor) for p in model.parameters()):
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=options)


# ------------------------------------------------------------------------------ state dicts
def _peft_model(module: nn.Module) -> Any:
    """``module`` if it is a peft model (peft is imported only when it is one), else None."""
    if "peft" not in type(module).__module__:
        return None
    with needs_extra("train"):
        from peft import PeftModel

    return module if isinstance(module, PeftModel) else None


def _lora_layers(base: nn.Module) -> dict[str, Any]:
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:  # peft absent: no LoRA layers can exist
        return {}
    return {name: m for name, m in base.named_modules() if isinstance(m, LoraLayer)}


def _plain_key(key: str) -> str | None:
    """The plain architecture's name of a peft-wrapped state-dict key; None: not part of it
    (adapter matrices, the original copy of a ``modules_to_save`` module)."""
    if ".lora_" in key or ".original_module." in key:
        return None
    return key.replace(".base_layer.", ".").replace(".modules_to_save.default.", ".")


@torch.no_grad()
def merged_state_dict(model: nn.Module, *, merge: bool = True) -> dict[str, torch.Tensor]:
    """The state dict of ``model``'s plain architecture: peft LoRA merged into the base weights
    (``merge=False``: the base weights alone), Low-Rank factors multiplied out. New tensors only
    where merged: ``model`` is not changed."""
    module = unwrap(model)
    peft_model = _peft_model(module)
    base = peft_model.get_base_model() if peft_model is not None else module
    state: dict[str, torch.Tensor] = {}
    for key, value in base.state_dict().items():
        plain = _plain_key(key)
        if plain is not None:
            state[plain] = value
    for name, layer in _lora_layers(base).items():
        if merge and not layer.merged:
            weight = layer.get_base_layer().weight
            delta = sum(layer.get_delta_weight(a) for a in layer.active_adapters)
            state[f"{name}.weight"] = weight + delta.to(weight.dtype)
    for name, layer in base.named_modules():
        if isinstance(layer, LowRankLinear):
            del state[f"{name}.A"], state[f"{name}.B"]
            state[f"{name}.weight"] = layer.dense_weight()
    return state


# ------------------------------------------------------------------------------ writing
def _dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, str(dtype), None)
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise ExportError(f"unknown export dtype {dtype!r}; valid: float32, bfloat16, float16")
    return value


def _save(
    base: nn.Module,
    directory: Path,
    state: dict[str, torch.Tensor],
    dtype: torch.dtype | None,
    tokenizer: Any,
) -> None:
    """``base``'s config and generation config with the weights ``state`` (cast to ``dtype``),
    and the tokenizer, in ``directory``."""
    if not hasattr(base, "save_pretrained") or not hasattr(base, "config"):
        raise ExportError(
            f"{type(base).__name__} is not a transformers model: it has no Hugging Face format"
        )
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    saved_dtype = next((v.dtype for v in state.values() if v.is_floating_point()), None)
    previous = getattr(base.config, "dtype", None)
    # a state dict on the CPU: safetensors writes from host memory in any case
    state = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    try:
        base.save_pretrained(directory, state_dict=state, safe_serialization=True)
    finally:
        base.config.dtype = previous  # save_pretrained sets it to the model's dtype
    if saved_dtype is not None:  # what from_pretrained(dtype="auto") restores: the saved weights'
        config_path = directory / "config.json"
        config = json.loads(config_path.read_text(encoding="utf-8"))
        config["dtype"] = str(saved_dtype).removeprefix("torch.")
        atomic_write_json(config_path, config, indent=2, sort_keys=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)


def _save_adapter(
    peft_model: Any, tmp: Path, final: Path, dtype: torch.dtype | None, tokenizer: Any
) -> str:
    """The peft adapter in ``tmp``; the base beside it (``tmp/base``) unless it is unchanged and
    can be found again by its name or path. Returns what the adapter's base is."""
    peft_model.save_pretrained(tmp, safe_serialization=True)
    if dtype is not None:
        _cast_safetensors(tmp / "adapter_model.safetensors", dtype)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    base = peft_model.get_base_model()
    if not _base_needed(peft_model, base):  # peft recorded the base's name or path
        return str(getattr(base.config, "_name_or_path", ""))
    _save(base, tmp / BASE_DIR, merged_state_dict(peft_model, merge=False), dtype, tokenizer)
    where = str((final / BASE_DIR).resolve())
    config_path = tmp / "adapter_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = where
    atomic_write_json(config_path, config, indent=2, sort_keys=True)
    return where


def _base_needed(peft_model: Any, base: nn.Module) -> bool:
    """Whether the base weights must be saved with the adapter: some parameter outside the
    adapters and ``modules_to_save`` trained, or the base has no name or path to load it by."""
    name = str(getattr(base.config, "_name_or_path", "") or "")
    if not name:
        return True
    for key, p in peft_model.named_parameters():
        if p.requires_grad and ".lora_" not in key and ".modules_to_save." not in key:
            return True
    return False


def _cast_safetensors(path: Path, dtype: torch.dtype) -> None:
    with needs_extra("train"):
        from safetensors.torch import load_file, save_file

    tensors = load_file(path)
    cast = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    save_file(cast, path, metadata={"format": "pt"})
