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
        subprocess.run(["umount", "--lazy", str(mnt)], check=False)


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
    assert "No space left on device" in r.stderr and "enforce fail" not in r.stderr, r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    assert not [p for p in art.rglob("*") if p.is_file()]  # no partial checkpoint left
    best = hpsearch(["best", "--study", "smoke", "--artifacts", str(art)], workdir)
    assert best.returncode == 0 and "has no checkpoint" in best.stdout


def test_full_disk_under_the_database_mid_search_is_one_line(
    workdir: Path, full_disk: Path
) -> None:
    """The database's disk fills while trials run: only hpsearch's one line, not Optuna's
    "Trial N failed" warning and its traceback before it; what was recorded stays."""
    tiny = ["--set", "data.max_per_class=20", "--set", "data.val_max_per_class=10"]
    first = ["run", "--study", "smoke", "--pruner", "none", "--artifacts", str(workdir / "a")]
    r = hpsearch([*first, "--trials", "1", "--set", "train.epochs=1", *tiny], full_disk)
    assert r.returncode == 0, r.stderr
    free = os.statvfs(full_disk).f_bavail * os.statvfs(full_disk).f_frsize
    (full_disk / "filler").write_bytes(b"\0" * max(0, free - 40 * 1024))  # 40 KiB left
    r = hpsearch([*first, "--trials", "20", "--set", "train.epochs=3", *tiny], full_disk)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hpsearch: error: "), r.stderr
    assert "full" in lines[0]
    assert "Traceback" not in r.stdout + r.stderr and "failed with" not in r.stdout + r.stderr
    import optuna

    study = optuna.load_study(study_name="smoke", storage=f"sqlite:///{full_disk / 'hpsearch.db'}")
    assert study.trials[0].state == optuna.trial.TrialState.COMPLETE  # recorded before: kept


def test_full_disk_while_confirm_keeps_a_model_says_no_space(full_disk: Path) -> None:
    """confirm keeps its runs' models with save_blob: a full disk is "No space left on device",
    not torch's "[enforce fail at inline_container.cc:672]", and leaves no partial file."""
    import torch

    from hpsearch.storage.artifacts import CheckpointError
    from hpsearch.storage.checkpoint import save_blob

    with pytest.raises(CheckpointError, match="No space left on device") as e:
        save_blob(full_disk / "a", {"weights": torch.zeros(1_000_000)}, "run.pt")
    assert "enforce fail" not in str(e.value)
    assert not [p for p in full_disk.rglob("*") if p.is_file()]
