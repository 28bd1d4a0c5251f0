"""Configuration in one place: typed dataclasses whose fields carry their default and help text,
and the command line, config files and ``config.json`` generated from them. Torch-free: ``galore
--help`` builds every parser from this module.

A field declared with ``option(default, "help", ...)`` becomes one flag ``--field-name`` (in the
group of its ``group``); a nested dataclass field (``data: DataConfig``) contributes its own fields
by path (``data.seq_len`` → ``--seq-len``). The flat name (``seq_len``) is also the key of that
setting in a ``--config`` file and in the run's ``config.json``, so a saved configuration reads back
as a config file. Every parser default is ``UNSET``: the values come from, lowest first, the
dataclass defaults, a saved or ``--config`` file, and the flags given on the command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any

CONFIG_FORMATS = (".toml", ".yaml", ".yml", ".json")
#: ``--precision`` of the training commands (``galorekit.train.precision``): fp32; bf16-mixed,
#: bf16 autocast over fp32 weights and states; bf16-true, bf16 weights (no fp32 master copy)
PRECISIONS = ("fp32", "bf16-mixed", "bf16-true")
#: the help text of ``--precision``, the same in every training command
PRECISION_HELP = (
    "fp32; bf16-mixed (bfloat16 autocast of forward/backward over fp32 weights and states); or "
    "bf16-true (the paper's setting: bfloat16 weights and gradients, no fp32 master copy, "
    "moments per --state-dtype). bf16 is for GPUs: slow on most CPUs"
)

#: ``--device`` of every training command (``galorekit.devices.resolve_device``)
DEVICE_DEFAULT = "auto"
DEVICE_HELP = "auto (cuda when available, else cpu), cpu, cuda, cuda:N or mps"


class ConfigFileError(ValueError):
    """A config file that cannot be read or names an unknown setting; the message says which."""


class _Unset:
    """The parser default of every generated flag: "not given on the command line"."""

    def __repr__(self) -> str:
        return "UNSET"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Unset)

    def __hash__(self) -> int:
        return 0


UNSET: Any = _Unset()


def option(
    default: Any = MISSING,
    help: str = "",
    *,
    default_factory: Callable[[], Any] | Any = MISSING,
    group: str = "",
    choices: Sequence[str] | None = None,
    metavar: str | None = None,
    flag: str | None = None,
    aliases: Sequence[str] = (),
    trajectory: bool = False,
    cli: bool = True,
    show_default: bool = True,
    key: str | None = None,
) -> Any:
    """A dataclass field with its command-line metadata.

    ``trajectory``: changing it changes what training computes (refused on ``--resume`` without
    ``--allow-config-change``); ``cli=False``: not a flag (derived or library-only);
    ``show_default=False``: the help text says what the default means itself; ``key``: the
    setting's name in config files and its flag when it differs from the field's (bench's ``T``
    is ``update_proj_gap``).
    """
    metadata = {
        "help": help,
        "group": group,
        "choices": tuple(choices) if choices is not None else None,
        "metavar": metavar,
        "flag": flag,
        "aliases": tuple(aliases),
        "trajectory": trajectory,
        "cli": cli,
        "show_default": show_default,
        "key": key,
    }
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class Flag:
    """One setting: where it lives in the configuration and how the command line spells it."""

    path: tuple[str, ...]  # e.g. ("method", "lr")
    default: Any
    help: str
    kind: str  # "int", "float", "str", "bool", "list"
    group: str = ""
    choices: tuple[str, ...] | None = None
    metavar: str | None = None
    flag: str | None = None
    aliases: tuple[str, ...] = ()
    trajectory: bool = False
    show_default: bool = True
    optional: bool = False  # None is a valid value
    key: str | None = None  # the config-file name when it is not the field's

    @property
    def name(self) -> str:
        """The config-file / config.json key (and the parser's dest)."""
        return self.key or self.path[-1]

    @property
    def option_string(self) -> str:
        if self.flag is not None:
            return self.flag
        dashed = self.name.replace("_", "-")
        return f"--no-{dashed}" if self.kind == "bool" and self.default is True else f"--{dashed}"

    def help_text(self) -> str:
        text = self.help
        if self.show_default and self.default is not None and self.kind != "bool":
            shown = " ".join(map(str, self.default)) if self.kind == "list" else self.default
            text += f" (default: {shown})"
        return text.replace("%", "%%")

    def convert(self, value: Any, where: str) -> Any:
        """``value`` from a config file, checked against this setting's type."""
        if value is None and (self.optional or self.default is None):
            return None
        expected = {"int": int, "float": (int, float), "str": str, "bool": bool, "list": list}
        ok = isinstance(value, expected[self.kind]) and not (
            self.kind in ("int", "float") and isinstance(value, bool)
        )
        if self.kind == "list" and isinstance(value, str):
            value, ok = [value], True
        if not ok:
            raise ConfigFileError(
                f"{where}: {self.name} must be {self.kind}, got {value!r} ({type(value).__name__})"
            )
        if self.choices is not None and value not in self.choices:
            raise ConfigFileError(
                f"{where}: {self.name} must be one of {', '.join(self.choices)}, got {value!r}"
            )
        return float(value) if self.kind == "float" else value


_KINDS = {"int": "int", "float": "float", "str": "str", "bool": "bool"}


def _kind(annotation: str) -> tuple[str, bool]:
    """(kind, optional) of a field annotation written as a string (``from __future__``)."""
    parts = [p.strip() for p in str(annotation).split("|")]
    optional = "None" in parts
    base = next((p for p in parts if p != "None"), "str")
    if base.startswith(("list", "tuple")):
        return "list", optional
    return _KINDS.get(base, "str"), optional


def flags_of(
    cls: type,
    *,
    path: tuple[str, ...] = (),
    nested: Mapping[str, type] | None = None,
    overlay: Mapping[str, Mapping[str, Any]] | None = None,
    skip: Iterable[str] = (),
) -> list[Flag]:
    """The flags of dataclass ``cls``: its ``option`` fields, and those of the dataclasses in
    ``nested`` (field name → class) under their path. ``overlay`` adds or replaces metadata by
    dotted path (``"data.seq_len": {"help": ...}``) for classes declared without ``option``;
    ``skip`` leaves dotted paths out."""
    nested, overlay, skip = nested or {}, overlay or {}, set(skip)
    flags: list[Flag] = []
    for f in dataclasses.fields(cls):
        where = (*path, f.name)
        dotted = ".".join(where)
        if dotted in skip:
            continue
        if f.name in nested:
            flags += flags_of(nested[f.name], path=where, overlay=overlay, skip=skip)
            continue
        meta = {**f.metadata, **overlay.get(dotted, {})}
        if not meta.get("cli", bool(meta.get("help"))):
            continue
        if f.default is not MISSING:
            default = f.default
        elif f.default_factory is not MISSING:
            default = f.default_factory()
        else:
            default = None
        kind, optional = _kind(meta.get("kind") or f.type)
        flags.append(
            Flag(
                path=where,
                default=meta.get("default", default),
                help=meta.get("help", ""),
                kind=kind,
                group=meta.get("group", ""),
                choices=meta.get("choices"),
                metavar=meta.get("metavar"),
                flag=meta.get("flag"),
                aliases=tuple(meta.get("aliases", ())),
                trajectory=meta.get("trajectory", False),
                show_default=meta.get("show_default", True),
                optional=optional,
                key=meta.get("key"),
            )
        )
    names = [fl.name for fl in flags]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:  # the flat names are the config files' keys: they must be unique
        raise ValueError(f"{cls.__name__}: settings with the same name: {', '.join(duplicated)}")
    return flags


# ------------------------------------------------------------------------------ argparse
class _Renamed(argparse.Action):
    """An old spelling: refused with a pointer to the new one (never silently accepted)."""

    def __init__(self, option_strings: list[str], dest: str, pointer: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs="?", help=argparse.SUPPRESS, **kwargs)
        self.pointer = pointer

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        parser.error(f"{self.option_strings[0]} is no longer accepted: {self.pointer}")


def add_renamed(parser: argparse.ArgumentParser, renamed: Mapping[str, str]) -> None:
    """Refuse each old flag of ``renamed`` (old → pointer, e.g. ``"use --max-grad-norm"``)."""
    for old, pointer in renamed.items():
        parser.add_argument(old, action=_Renamed, pointer=pointer, dest=f"_renamed_{old}")


def add_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    flags: Sequence[Flag],
    groups: Mapping[str, str],
) -> dict[str, Any]:
    """Add ``flags`` to ``parser`` (or an argument group) in the argument groups ``groups`` (key →
    title), every default ``UNSET`` and printed once, by the help text; returns the groups (key →
    group)."""
    made = {key: parser.add_argument_group(title) for key, title in groups.items()}
    for fl in flags:
        target = made.get(fl.group, parser)
        kwargs: dict[str, Any] = {"dest": fl.name, "default": UNSET, "help": fl.help_text()}
        if fl.kind == "bool" and fl.default is None:  # None: decided later (a preset)
            kwargs["action"] = argparse.BooleanOptionalAction
        elif fl.kind == "bool":
            kwargs["action"] = "store_false" if fl.default is True else "store_true"
        else:
            kwargs["type"] = {"int": int, "float": float}.get(fl.kind, str)
            if fl.kind == "list":
                kwargs["nargs"] = "+"
            if fl.choices is not None:
                kwargs["choices"] = fl.choices
                kwargs["metavar"] = fl.metavar or fl.name.upper()
                kwargs["help"] += " [" + ", ".join(fl.choices) + "]"
            elif fl.metavar:
                kwargs["metavar"] = fl.metavar
        target.add_argument(fl.option_string, *fl.aliases, **kwargs)
    return made


def given(args: argparse.Namespace, flags: Sequence[Flag]) -> dict[str, Any]:
    """The settings given on the command line (flat name → value)."""
    out = {}
    for fl in flags:
        value = getattr(args, fl.name, UNSET)
        if value != UNSET:
            out[fl.name] = value
    return out


def defaults(flags: Sequence[Flag]) -> dict[str, Any]:
    return {fl.name: fl.default for fl in flags}


# ------------------------------------------------------------------------------ files
def read_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping in a ``.toml``, ``.yaml``/``.yml`` or ``.json`` file."""
    path = Path(path)
    if path.suffix not in CONFIG_FORMATS:
        raise ConfigFileError(
            f"--config {path}: unknown format {path.suffix or '(none)'}; use "
            + ", ".join(CONFIG_FORMATS)
        )
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigFileError(f"--config {path}: {err.strerror or err}") from None
    try:
        if path.suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml  # PyYAML: only needed for YAML files

            data = yaml.safe_load(text)
    except ImportError:
        raise ConfigFileError(
            f"--config {path}: reading YAML needs PyYAML (pip install pyyaml)"
        ) from None
    except Exception as err:  # each parser has its own error class; the message is what counts
        raise ConfigFileError(f"--config {path}: not valid {path.suffix[1:]}: {err}") from None
    if not isinstance(data, dict):
        raise ConfigFileError(f"--config {path}: expected a mapping of settings at the top level")
    return data


def file_values(
    data: Mapping[str, Any],
    flags: Sequence[Flag],
    where: str,
    ignore: Iterable[str] = (),
    strict: bool = True,
) -> dict[str, Any]:
    """The settings of a config mapping (flat names, dashes allowed, or sections by path such as
    ``[method]``), each checked; an unknown key is refused with the closest valid name (or, not
    ``strict``, skipped: a run directory written by an older version)."""
    by_name = {fl.name: fl for fl in flags}
    sections = {fl.path[0] for fl in flags if len(fl.path) > 1}
    ignore = set(ignore)
    out: dict[str, Any] = {}

    def visit(mapping: Mapping[str, Any]) -> None:
        for raw, value in mapping.items():
            key = str(raw).replace("-", "_")
            if key in ignore:
                continue
            if key in sections and isinstance(value, Mapping):
                visit(value)
            elif key in by_name:
                out[key] = by_name[key].convert(value, where)
            elif strict:
                close = difflib.get_close_matches(key, list(by_name), n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                raise ConfigFileError(f"{where}: unknown setting {raw!r}{hint}")

    visit(data)
    return out


# ------------------------------------------------------------------------------ dataclasses
def flatten(cfg: Any, flags: Sequence[Flag]) -> dict[str, Any]:
    """Flat name → value of every flag's setting in the configuration ``cfg``."""
    out = {}
    for fl in flags:
        value = cfg
        for part in fl.path:
            value = getattr(value, part)
        out[fl.name] = list(value) if isinstance(value, tuple) else value
    return out


def differences(
    before: Mapping[str, Any], after: Mapping[str, Any], flags: Sequence[Flag]
) -> dict[str, tuple[Any, Any]]:
    """The trajectory settings whose value differs: name → (before, after)."""
    out = {}
    for fl in flags:
        if fl.trajectory and fl.name in before and before[fl.name] != after.get(fl.name):
            out[fl.name] = (before[fl.name], after.get(fl.name))
    return out


def describe(changes: Mapping[str, tuple[Any, Any]], flags: Sequence[Flag]) -> str:
    """``--lr 0.01 → 0.5, --rank 16 → 4``."""
    spelled = {fl.name: fl.flag or "--" + fl.name.replace("_", "-") for fl in flags}
    return ", ".join(f"{spelled.get(k, k)} {a} → {b}" for k, (a, b) in changes.items())


# ------------------------------------------------------------------------------ commands
def add_config_option(parser: argparse.ArgumentParser | Any, example: str = "seed = 1") -> None:
    """``--config FILE`` on ``parser`` (or an argument group): settings read by
    :func:`requested`, under the flags given on the command line."""
    parser.add_argument(
        "--config",
        default=UNSET,
        metavar="FILE",
        help=f"settings from a .toml, .yaml or .json file (keys: the flags' names, e.g. {example}); "
        "flags on the command line win",
    )


def requested(args: argparse.Namespace, flags: Sequence[Flag]) -> dict[str, Any]:
    """The settings asked for (flat name → value): a ``--config`` file's, under the flags given on
    the command line. Raises :class:`ConfigFileError` for a file that cannot be read or names an
    unknown setting."""
    values: dict[str, Any] = {}
    config = getattr(args, "config", UNSET)
    if config != UNSET:
        values = file_values(read_config_file(config), flags, f"--config {config}")
    return {**values, **given(args, flags)}
