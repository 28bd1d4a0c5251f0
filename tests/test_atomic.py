"""galorekit.atomic: complete content or the old file, ordinary modes, nothing left behind."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from galorekit.atomic import (
    atomic_path,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    output_file_error,
    publish_directory,
    temp_sibling,
)


@pytest.fixture(params=[0o022, 0o027], ids=["umask022", "umask027"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    """Run under a known umask (two, so that a hard-coded mode cannot pass)."""
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_writers_give_files_the_umask_mode_like_open(tmp_path: Path, umask: int) -> None:
    with open(tmp_path / "plain", "w") as f:  # what an ordinary write gives
        f.write("x")
    expected = 0o666 & ~umask
    assert _mode(tmp_path / "plain") == expected
    atomic_write_bytes(tmp_path / "a.bin", b"\x00\x01")
    atomic_write_text(tmp_path / "a.txt", "one\ntwo\n")
    atomic_write_json(tmp_path / "sub" / "a.json", {"b": 1, "a": [1.5, None]})
    with atomic_path(tmp_path / "b.bin") as tmp, open(tmp, "wb") as f:
        f.write(b"via path")
    for name in ("a.bin", "a.txt", "sub/a.json", "b.bin"):
        assert _mode(tmp_path / name) == expected, name
    assert _mode(tmp_path / "sub") == 0o777 & ~umask  # created parent: an ordinary directory
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "a.txt").read_bytes() == b"one\ntwo\n"  # no newline translation
    assert json.loads((tmp_path / "sub" / "a.json").read_text()) == {"b": 1, "a": [1.5, None]}
    assert (tmp_path / "sub" / "a.json").read_text().endswith("}\n")
    assert (tmp_path / "b.bin").read_bytes() == b"via path"
    assert _leftovers(tmp_path) == [] and _leftovers(tmp_path / "sub") == []


def test_json_options_reach_json_dumps(tmp_path: Path) -> None:
    atomic_write_json(tmp_path / "a.json", {"b": 1, "a": 2}, indent=None, sort_keys=True)
    assert (tmp_path / "a.json").read_text() == '{"a": 2, "b": 1}\n'
    atomic_write_json(tmp_path / "b.json", {"p": tmp_path}, default=str)
    assert json.loads((tmp_path / "b.json").read_text()) == {"p": str(tmp_path)}


def test_replaces_an_existing_file_and_keeps_it_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "result.json"
    atomic_write_text(target, "old")
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    with pytest.raises(RuntimeError, match="boom"), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert target.read_text() == "new"
    with pytest.raises(TypeError):
        atomic_write_json(target, {"x": object()})  # not serialisable: nothing written
    assert target.read_text() == "new"
    assert _leftovers(tmp_path) == []


def test_atomic_path_refuses_a_block_that_wrote_nothing(tmp_path: Path) -> None:
    with (
        pytest.raises(FileNotFoundError, match="nothing was written"),
        atomic_path(tmp_path / "x.png"),
    ):
        pass
    assert not (tmp_path / "x.png").exists() and _leftovers(tmp_path) == []


def test_temporary_is_hidden_beside_the_target_and_keeps_the_suffix(tmp_path: Path) -> None:
    tmp = temp_sibling(tmp_path / "curves.png")
    assert tmp.parent == tmp_path and tmp.name.startswith(".curves.png.")
    assert tmp.suffix == ".png"  # matplotlib's savefig reads the format from it
    assert temp_sibling(tmp_path / "curves.png") != tmp
    with atomic_path(tmp_path / "fig.png") as tmp:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt

        fig = plt.figure(figsize=(1, 1))
        fig.savefig(tmp)  # no format=: taken from the temporary's suffix
        plt.close(fig)
    assert (tmp_path / "fig.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_publish_directory_modes_publication_and_failure(tmp_path: Path, umask: int) -> None:
    target = tmp_path / "cache" / "entry"
    with publish_directory(target) as tmp:
        assert tmp.is_dir() and tmp.parent == target.parent and not target.exists()
        (tmp / "f.json").write_text("{}")
    assert (target / "f.json").read_text() == "{}"
    assert _mode(target) == 0o777 & ~umask  # not mkdtemp's 0700
    assert _mode(target / "f.json") == 0o666 & ~umask
    # a copy published first (e.g. by another rank) is kept, ours discarded
    with publish_directory(target) as tmp:
        (tmp / "f.json").write_text('{"second": true}')
    assert (target / "f.json").read_text() == "{}"
    with pytest.raises(RuntimeError, match="boom"), publish_directory(tmp_path / "x") as tmp:
        (tmp / "partial").write_text("half")
        raise RuntimeError("boom")
    assert not (tmp_path / "x").exists()
    assert _leftovers(tmp_path / "cache") == [] and _leftovers(tmp_path) == []


def test_present_and_replace_outputs(tmp_path):
    """The output-directory check every command shares: which of its outputs exist, then their
    removal (other files stay) before an overwriting run."""
    from galorekit.atomic import present_outputs, replace_outputs

    out = tmp_path / "run"
    assert present_outputs(out, ["a.json", "ckpt"]) == []
    (out / "ckpt").mkdir(parents=True)
    assert present_outputs(out, ["a.json", "ckpt"]) == ["ckpt"]
    assert present_outputs(out, ["a.json", "ckpt"], empty_dirs=False) == []
    (out / "ckpt" / "x").write_text("1")
    (out / "a.json").write_text("{}")
    (out / "mine.txt").write_text("keep")
    assert present_outputs(out, ["a.json", "ckpt"], empty_dirs=False) == ["a.json", "ckpt"]
    assert replace_outputs(out, ["a.json", "ckpt"]) == out
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]
    with pytest.raises(NotADirectoryError):
        present_outputs(out / "mine.txt", ["a.json"])


def test_fsync_path_syncs_files_and_directories(tmp_path):
    from galorekit.atomic import fsync_path, fsync_tree

    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_text("x")
    fsync_path(tmp_path / "d" / "f")
    fsync_path(tmp_path / "d")
    fsync_tree(tmp_path)
    with pytest.raises(FileNotFoundError):
        fsync_path(tmp_path / "missing")


def test_output_file_error_names_what_blocks_the_file(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_text("kept")
    assert output_file_error(str(tmp_path / "new" / "out.json"), "--json") is None  # created
    assert output_file_error("-", "--json") is None and output_file_error(None, "--md") is None
    assert "is a directory" in output_file_error(str(tmp_path / "dir"), "--json")
    blocked = output_file_error(str(tmp_path / "file" / "out.json"), "--md")
    assert blocked.startswith("--md ") and "is a file, not a directory" in blocked
    assert (tmp_path / "file").read_text() == "kept"
