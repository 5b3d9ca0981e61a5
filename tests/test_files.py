"""The write-to-a-temporary-then-rename helper every command that writes a file goes through."""

from __future__ import annotations

import os
import stat
import threading
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


def test_a_symlink_is_followed_and_kept(tmp_path: Path) -> None:
    real = tmp_path / "data" / "results.csv"
    real.parent.mkdir()
    real.write_text("old")
    link = tmp_path / "latest.csv"
    link.symlink_to(real)
    with atomic_write(link) as tmp:
        tmp.write_text("new")
    assert link.is_symlink() and link.resolve() == real
    assert real.read_text() == "new"


def test_a_device_is_written_in_place_not_replaced(tmp_path: Path) -> None:
    dev = Path("/dev/null")
    before = os.stat(dev)
    with atomic_write(dev) as tmp, open(tmp, "w") as f:
        assert tmp == dev
        f.write("discarded")
    after = os.stat(dev)
    assert stat.S_ISCHR(after.st_mode) and after.st_ino == before.st_ino


def test_a_fifo_is_written_in_place(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()))
    reader.start()
    with atomic_write(fifo) as tmp:
        tmp.write_text("through the pipe")
    reader.join(timeout=10)
    assert got == ["through the pipe"]
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


def test_a_private_file_stays_private_and_a_new_one_follows_the_umask(tmp_path: Path) -> None:
    private = tmp_path / "private.csv"
    private.write_text("old")
    private.chmod(0o600)
    with atomic_write(private) as tmp:
        tmp.write_text("new")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    fresh = tmp_path / "fresh.csv"
    old = os.umask(0o027)
    try:
        with atomic_write(fresh) as tmp:
            tmp.write_text("new")
    finally:
        os.umask(old)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o640


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a file to another owner")
def test_another_owners_file_keeps_its_owner(tmp_path: Path) -> None:
    theirs = tmp_path / "theirs.csv"
    theirs.write_text("old")
    os.chown(theirs, 4321, 4321)
    with atomic_write(theirs) as tmp:
        tmp.write_text("new")
    st = theirs.stat()
    assert (st.st_uid, st.st_gid) == (4321, 4321) and theirs.read_text() == "new"


def test_the_temporary_name_cannot_be_guessed(tmp_path: Path) -> None:
    target = tmp_path / "out.csv"
    names = []
    for _ in range(2):
        with atomic_write(target) as tmp:
            names.append(tmp.name)
            assert tmp.exists() and stat.S_IMODE(tmp.stat().st_mode) == 0o600  # made, private
            tmp.write_text("x")
    assert names[0] != names[1]
    assert all(str(os.getpid()) not in n.split(".tmp")[-1] for n in names)
