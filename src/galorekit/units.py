"""Byte sizes, the one place galorekit parses and formats them: a budget ("24GB", "24GiB",
"24000MB", "24G") and byte counts in an explicit unit (``galore memory --unit``) or one chosen
for the size (:func:`auto_unit`, decimal: the paper's GB). torch-free."""

from __future__ import annotations

import re

#: decimal (SI) units as disk and GPU vendors print them, binary units as ``free``/``nvidia-smi``
#: compute them; a bare letter (``24G``) is binary, as in docker, ``ls -h`` and ``numfmt --from=iec``
_UNITS: dict[str, int] = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
    "k": 2**10,
    "m": 2**20,
    "g": 2**30,
    "t": 2**40,
}

#: units accepted by :func:`format_bytes` (and the CLI's ``--unit``)
DISPLAY_UNITS: dict[str, int] = {
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "KiB": 2**10,
    "MiB": 2**20,
    "GiB": 2**30,
}

_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([a-zA-Z]*)\s*$")

SIZE_FORMATS = (
    "a number with an optional unit: 24GB, 24 GB, 24000MB, 1.5TB (decimal: kB, MB, GB, TB), "
    "24GiB, 512MiB (binary: KiB, MiB, GiB, TiB), 24G, 512M (a bare letter is binary), "
    "or a plain byte count"
)


def parse_size(text: str) -> int:
    """Bytes in ``text``: ``"24GB"`` → 24·10⁹, ``"24GiB"`` and ``"24G"`` → 24·2³⁰.

    Raises ``ValueError`` naming the accepted formats when ``text`` is not a positive size.
    """
    if not isinstance(text, str):
        raise ValueError(f"a size must be a string such as '24GB', got {text!r}")
    match = _SIZE.match(text)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise ValueError(f"cannot parse the size {text!r}; expected {SIZE_FORMATS}")
    value = float(match.group(1)) * _UNITS[unit]
    if value < 1:
        raise ValueError(f"the size {text!r} is not positive; expected {SIZE_FORMATS}")
    return int(value)


def format_bytes(n: int | float, unit: str = "GB", digits: int = 2) -> str:
    """``n`` bytes in ``unit`` (one of ``DISPLAY_UNITS``), e.g. ``"13.48 GB"``."""
    if unit not in DISPLAY_UNITS:
        raise ValueError(f"unknown unit {unit!r}; valid: {', '.join(DISPLAY_UNITS)}")
    if unit == "B":
        return f"{int(n):,} B"
    return f"{n / DISPLAY_UNITS[unit]:.{digits}f} {unit}"


def in_unit(n: int | float, unit: str) -> float:
    """``n`` bytes expressed in ``unit`` as a float."""
    if unit not in DISPLAY_UNITS:
        raise ValueError(f"unknown unit {unit!r}; valid: {', '.join(DISPLAY_UNITS)}")
    return n / DISPLAY_UNITS[unit]


def auto_unit(nbytes: int | float) -> str:
    """GB for sizes of a gigabyte and more, MB from a megabyte, KB below (decimal units)."""
    if nbytes >= 10**9:
        return "GB"
    if nbytes >= 10**6:
        return "MB"
    return "KB"
