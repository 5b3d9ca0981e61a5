"""A study made by the code before ``src/hpsearch/`` moved into subpackages still works: the
database (rebuilt from the SQL dump in ``fixtures/premove``) and its checkpoint, read and extended
by today's CLI as real subprocesses: ``status``, ``best``, ``run`` adding a trial, ``serve``."""

from __future__ import annotations

import shutil
import signal
import sqlite3
from pathlib import Path

import pytest

from conftest import REPO, hpsearch
from serving import get, multipart, post, start, stops_cleanly

pytestmark = pytest.mark.slow

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "premove"
# the overrides the study was made with (fixtures/premove/README.md): its study-file config
SETS = [
    "data.max_per_class=40",
    "data.val_max_per_class=20",
    "train.epochs=1",
    "search.enqueue_baseline=false",
    "search.space.channels=[8]",
    "search.space.dense_units=[32]",
    "search.space.n_blocks=[2]",
    "search.keep_checkpoints=1",
]


@pytest.fixture
def old_study(tmp_path: Path) -> Path:
    """The pre-move database and checkpoint store in a fresh working directory."""
    with sqlite3.connect(tmp_path / "hpsearch.db") as con:
        con.executescript((FIXTURE / "hpsearch.sql").read_text())
    shutil.copytree(FIXTURE / "artifacts", tmp_path / "hpsearch-artifacts")
    (tmp_path / "studies").mkdir()
    shutil.copy(REPO / "studies" / "smoke.yaml", tmp_path / "studies" / "smoke.yaml")
    return tmp_path


def test_status_best_and_run_read_and_extend_it(old_study: Path) -> None:
    status = hpsearch(["status", "--study", "smoke"], old_study)
    assert status.returncode == 0, status.stderr
    assert "trials: 3 complete" in status.stdout, status.stdout
    assert "best: val_accuracy 0.5000 in trial 0" in status.stdout, status.stdout

    best = hpsearch(["best", "--study", "smoke"], old_study)
    assert best.returncode == 0, best.stderr
    assert "trial: 0\n" in best.stdout, best.stdout
    ckpt = old_study / "hpsearch-artifacts" / "e25c4d25-d5f9-40ac-852f-40c386a8ee0e"
    assert f"checkpoint: {ckpt}\n" in best.stdout, best.stdout

    sets = [a for s in SETS for a in ("--set", s)]
    run = hpsearch(["run", "--study", "smoke", "--trials", "1", *sets], old_study)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "3 finished trials so far" in run.stdout, run.stdout
    assert "the study has 4 finished" in run.stdout, run.stdout


def test_serve_labels_a_photo_with_its_checkpoint(old_study: Path, data_root: Path) -> None:
    proc, base = start("--study smoke --device cpu", old_study, old_study / "serve.log")
    try:
        model = get(f"{base}/model")
        assert model["trial"] == 0 and model["classes"] == ["cat", "dog"]
        photo = sorted((data_root / "val" / "dog").iterdir())[0]
        code, answer = post(f"{base}/predict", *multipart([(photo.name, photo.read_bytes())]))
        assert code == 200, answer
        assert answer["predictions"][0]["label"] in ("cat", "dog"), answer
    finally:
        stops_cleanly(proc, signal.SIGINT, old_study / "serve.log")
