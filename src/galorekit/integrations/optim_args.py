"""``TrainingArguments.optim_args`` for GaLore: galore-torch's keys plus galorekit's, parsed and
checked before anything is built."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from galorekit.names import MOMENT_POLICIES, PROJ_TYPES, STATE_DTYPES, SVD_METHOD_NAMES


def _bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise ValueError("expected true or false")


def _dtype(text: str) -> str | None:
    return None if text.lower() == "none" else text


#: key → (parser, what it is): galore-torch's four keys (what transformers passes it) first
OPTIM_ARG_KEYS: dict[str, tuple[Callable[[str], Any], str]] = {
    "rank": (int, "the projection rank (default 128)"),
    "update_proj_gap": (int, "steps between subspace refreshes (default 200)"),
    "scale": (float, "the update's scale α (default 0.25)"),
    "proj_type": (str, f"one of {', '.join(PROJ_TYPES)} (default std)"),
    "svd": (str, f"the refresh method: {', '.join(SVD_METHOD_NAMES)} (default warm)"),
    "moments": (str, f"what a refresh does with the moments: {', '.join(MOMENT_POLICIES)}"),
    "state_dtype": (
        _dtype,
        f"the moments' dtype: none (the parameter's), {', '.join(STATE_DTYPES)}",
    ),
    "stagger": (_bool, "spread the matrices' refreshes over the gap (true/false)"),
}


def parse_optim_args(optim_args: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """``"rank=64, update_proj_gap=100, scale=0.25, proj_type=std"`` (transformers' format) or a
    dict, as typed values. Raises ``ValueError`` naming the valid keys for an unknown key, and the
    key for a value of the wrong type; the values' ranges are checked by the optimizers."""
    if not optim_args:
        return {}
    if isinstance(optim_args, Mapping):
        items = [(str(k), v) for k, v in optim_args.items()]
    else:
        items = []
        for entry in str(optim_args).replace(" ", "").split(","):
            if not entry:
                continue
            key, sep, value = entry.partition("=")
            if not sep or not key:
                raise ValueError(
                    f"optim_args: {entry!r} is not key=value (e.g. 'rank=64, update_proj_gap=100')"
                )
            items.append((key, value))
    parsed: dict[str, Any] = {}
    for key, value in items:
        if key not in OPTIM_ARG_KEYS:
            valid = "; ".join(f"{k}: {what}" for k, (_, what) in OPTIM_ARG_KEYS.items())
            raise ValueError(f"optim_args: unknown key {key!r} for GaLore. Valid keys — {valid}")
        parse, what = OPTIM_ARG_KEYS[key]
        try:
            parsed[key] = parse(value) if isinstance(value, str) else value
        except ValueError:
            raise ValueError(f"optim_args: {key}={value!r} is not valid ({key}: {what})") from None
    return parsed
