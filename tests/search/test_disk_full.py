"""A full disk while writing the image cache or a checkpoint: a clear message, no partial file."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import hpsearch

pytestmark = pytest.mark.slow


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MiB tmpfs: too small for the smoke study's cache (1.8 MB) or a checkpoint."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=False)
    if r.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_full_disk_while_building_the_cache(workdir: Path, full_disk: Path) -> None:
    r = hpsearch(
        ["train", "--study", "smoke", "--trial", "baseline"],
        workdir,
        env={"HPSEARCH_CACHE": str(full_disk)},
    )
    assert r.returncode != 0
    assert "cannot write the image cache" in r.stderr and "is it full?" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "Traceback" not in r.stderr
    left = [p.name for p in full_disk.rglob("*") if p.is_file()]
    assert not [n for n in left if n.endswith(".pt") or ".tmp" in n], left  # nothing to trust


def test_full_disk_while_writing_a_checkpoint(workdir: Path, full_disk: Path) -> None:
    art = full_disk / "artifacts"
    r = hpsearch(
        ["run", "--study", "smoke", "--trials", "1", "--pruner", "none", "--artifacts", str(art)],
        workdir,
    )
    assert r.returncode == 0, r.stderr  # the search itself goes on
    assert "checkpoint not saved" in r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    assert not [p for p in art.rglob("*") if p.is_file()]  # no partial checkpoint left
    best = hpsearch(["best", "--study", "smoke", "--artifacts", str(art)], workdir)
    assert best.returncode == 0 and "has no checkpoint" in best.stdout
