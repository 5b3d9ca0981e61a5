"""The write-to-a-temporary-then-rename helper every command that writes a file goes through."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpsearch.files import atomic_write


def test_the_file_appears_whole_and_no_temporary_is_left(tmp_path: Path) -> None:
    target = tmp_path / "out.csv"
    target.write_text("old")
    with atomic_write(target) as tmp:
        assert tmp.parent == tmp_path and tmp != target
        tmp.write_text("new")
        assert target.read_text() == "old"  # readers still see the old file mid-write
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "plot.png"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="half way"), atomic_write(target, ".png") as tmp:
        assert tmp.name.endswith(".png")
        tmp.write_text("half")
        raise RuntimeError("half way")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plot.png"]
