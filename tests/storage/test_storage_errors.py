"""Storage errors that waiting will not cure are one line at once; only a lost connection is
retried. A read-only SQLite database (file or file system) and an in-memory SQLite URL."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import sqlalchemy.exc

from conftest import hpsearch
from hpsearch.storage.resilience import is_disconnect

TINY = ["--set", "data.max_per_class=60", "--set", "data.val_max_per_class=30"]


def one_line(r: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stderr.startswith("hpsearch: error: "), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr  # no "retrying" warning either
    assert "Traceback" not in r.stdout + r.stderr
    for n in needles:
        assert n in r.stderr, r.stderr


@pytest.mark.parametrize(
    "url", ["sqlite://", "sqlite:///:memory:", "sqlite:///file:mem?mode=memory&uri=true"]
)
@pytest.mark.parametrize("command", ["run", "status"])
def test_in_memory_sqlite_is_refused_at_once(workdir: Path, url: str, command: str) -> None:
    extra = ["--trials", "1", *TINY] if command == "run" else []
    r = hpsearch([command, "--study", "smoke", "--storage", url, *extra], workdir)
    one_line(r, "in-memory SQLite database", "nothing would be kept")
    assert not list(workdir.iterdir())  # no file of any name


def _smoke_db(dst: Path) -> Path:
    """A small real SQLite file holding a smoke study with one finished trial."""
    db = dst / "hpsearch.db"
    study = optuna.create_study(storage=f"sqlite:///{db}", study_name="smoke", direction="maximize")
    t = study.ask()
    t.suggest_float("lr", 1e-4, 1e-2, log=True)
    study.tell(t, 0.6)
    study.set_user_attr("target_trials", 1)
    return db


@pytest.fixture(params=["read-only file system", "read-only file"])
def read_only_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    if request.param == "read-only file":
        if os.geteuid() == 0:
            pytest.skip("root writes a read-only file anyway (the file-system case runs)")
        db = _smoke_db(tmp_path)
        db.chmod(0o444)
        tmp_path.chmod(0o555)  # nor may SQLite create its journal beside it
        try:
            yield db
        finally:
            tmp_path.chmod(0o755)
        return
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "ro"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        shutil.copy(_smoke_db(tmp_path), mnt / "hpsearch.db")
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        yield mnt / "hpsearch.db"
    finally:
        subprocess.run(["umount", "--lazy", str(mnt)], check=False)


@pytest.mark.slow
def test_read_only_database_is_one_line_at_once(workdir: Path, read_only_db: Path) -> None:
    url = f"sqlite:///{read_only_db}"
    before = read_only_db.read_bytes()
    for args in (["run", "--trials", "1", *TINY], ["worker"]):
        r = hpsearch([args[0], "--study", "smoke", "--storage", url, *args[1:]], workdir)
        one_line(r, f"database {url} is read-only", "is the file or its directory read-only?")
        assert "during" not in r.stderr, r.stderr  # not Optuna's internal step (create_new_study)
    assert read_only_db.read_bytes() == before
    # reading it still works
    r = hpsearch(["status", "--study", "smoke", "--storage", url], workdir)
    assert r.returncode == 0, r.stderr
    assert "1 complete" in r.stdout


def _operational(orig: BaseException) -> sqlalchemy.exc.OperationalError:
    return sqlalchemy.exc.OperationalError("SELECT 1", {}, orig)


class _PgError(Exception):
    def __init__(self, sqlstate: str | None) -> None:
        super().__init__(f"sqlstate {sqlstate}")
        self.sqlstate = sqlstate


def test_only_a_lost_connection_or_a_busy_file_is_retried() -> None:
    import sqlite3

    assert not is_disconnect(
        _operational(sqlite3.OperationalError("attempt to write a readonly database"))
    )
    assert not is_disconnect(_operational(sqlite3.OperationalError("no such table: studies")))
    assert is_disconnect(_operational(sqlite3.OperationalError("database is locked")))
    assert is_disconnect(_operational(_PgError(None)))  # could not connect, connection closed
    assert is_disconnect(_operational(_PgError("08006")))  # connection failure
    assert is_disconnect(_operational(_PgError("57P01")))  # admin shutdown (a restart)
    assert not is_disconnect(_operational(_PgError("53100")))  # disk full
    wrapped = optuna.exceptions.StorageInternalError("commit failed")
    wrapped.__cause__ = _operational(_PgError("57P03"))  # Optuna wraps commit errors
    assert is_disconnect(wrapped)
