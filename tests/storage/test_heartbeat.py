"""One heartbeat interval per study (storage/heartbeat.py): each process judges another's trial
stale by its own interval, so a run with ``--heartbeat 2`` beside workers beating every 10 s
failed their live trials after 6 s, and those workers died telling a FAIL trial (seen in the
compose stack's test). The run that makes a study records its interval; every later process
uses it. (A real SQLite file; the CLI as real subprocesses.)"""

from __future__ import annotations

from pathlib import Path

import optuna

from conftest import hpsearch
from hpsearch.storage import optuna_private
from hpsearch.storage.heartbeat import agree_heartbeat, recorded_heartbeat
from hpsearch.storage.urls import open_storage

TINY = ["--set", "data.max_per_class=20", "--set", "data.val_max_per_class=10"]
ONE_EPOCH = [*TINY, "--set", "train.epochs=1"]


def backend(study: optuna.Study) -> optuna.storages.RDBStorage:
    b = optuna_private.study_backend(study)
    assert isinstance(b, optuna.storages.RDBStorage)
    return b


def test_the_first_run_records_its_interval_and_later_ones_take_it(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'h.db'}"
    study = optuna.create_study(study_name="s", storage=open_storage(url, 2))
    assert recorded_heartbeat(study) is None  # plain Optuna, or made before
    assert agree_heartbeat(study, 2, record=True) == (2, "")
    assert recorded_heartbeat(study) == 2

    later = optuna.load_study(study_name="s", storage=open_storage(url, 10))
    interval, note = agree_heartbeat(later, 10, record=True)
    assert interval == 2 and "--heartbeat 10 is not used" in note and "every 2 s" in note
    assert recorded_heartbeat(later) == 2  # not overwritten
    assert (backend(later).heartbeat_interval, backend(later).grace_period) == (2, 6)

    worker = optuna.load_study(study_name="s", storage=open_storage(url, 10))
    assert agree_heartbeat(worker, None, record=False) == (2, "")  # no flag: no note
    assert backend(worker).grace_period == 6


def test_a_worker_never_records_one(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'h.db'}"
    study = optuna.create_study(study_name="s", storage=open_storage(url, 10))
    assert agree_heartbeat(study, None, record=False) == (10, "")
    assert recorded_heartbeat(study) is None


def test_a_second_run_with_another_heartbeat_uses_the_studys_and_says_so(workdir: Path) -> None:
    first = ["run", "--study", "smoke", "--trials", "1", "--heartbeat", "3", *ONE_EPOCH]
    r = hpsearch(first, workdir)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "not used" not in r.stdout
    second = ["run", "--study", "smoke", "--trials", "1", "--heartbeat", "20", *ONE_EPOCH]
    r = hpsearch(second, workdir)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (
        "note: study 'smoke' beats every 3 s, as the run that made it recorded; "
        "--heartbeat 20 is not used" in r.stdout
    ), r.stdout
    study = optuna.load_study(study_name="smoke", storage=f"sqlite:///{workdir / 'hpsearch.db'}")
    assert recorded_heartbeat(study) == 3
