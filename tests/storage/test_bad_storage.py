"""Storage that cannot be used: one line naming the problem, no password, a bounded wait."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import optuna
import pytest

from conftest import PG_ADMIN, hpsearch
from hpsearch.storage.urls import mask_secrets

SECRET = "s3cret-Pa55"


def _one_line_no_secret(out: str, err: str) -> None:
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in out + err
    assert SECRET not in out + err


def test_unreachable_postgres_with_password_is_one_masked_line(workdir: Path) -> None:
    url = f"postgresql://hpsearch:{SECRET}@127.0.0.1:1/hpsearch"
    t0 = time.monotonic()
    r = hpsearch(["run", "--study", "smoke", "--trials", "1", "--storage", url], workdir)
    assert time.monotonic() - t0 < 60  # a bounded wait, not a hang
    assert r.returncode != 0
    assert "cannot open storage postgresql://hpsearch:***@127.0.0.1:1/hpsearch" in r.stderr
    _one_line_no_secret(r.stdout, r.stderr)


def test_mistyped_storage_is_reported_before_the_data(workdir: Path) -> None:
    """The photos are missing too, and reading them comes later: the storage is said first."""
    url = f"sqlite:///{workdir / 'typo' / 'hpsearch.db'}"
    args = ["run", "--study", "smoke", "--trials", "1", "--storage", url]
    r = hpsearch([*args, "--set", f"data.root={workdir / 'no-photos'}"], workdir)
    assert r.returncode == 1
    assert f"cannot open storage {url}: {workdir / 'typo'} does not exist" in r.stderr
    assert "no-photos" not in r.stderr and r.stdout == ""
    _one_line_no_secret(r.stdout, r.stderr)
    assert not list(workdir.iterdir())


def test_missing_postgres_database_is_one_line(workdir: Path) -> None:
    base = PG_ADMIN.rsplit("/", 1)[0]
    url = f"{base}/hpsearch_no_such_database"
    r = hpsearch(["run", "--study", "smoke", "--trials", "1", "--storage", url], workdir)
    assert r.returncode != 0
    assert 'database "hpsearch_no_such_database" does not exist' in r.stderr
    _one_line_no_secret(r.stdout, r.stderr)


def test_database_of_another_schema_version_is_refused_and_kept(workdir: Path) -> None:
    db = workdir / "old.db"
    url = f"sqlite:///{db}"
    optuna.create_study(study_name="kept", storage=url)
    with sqlite3.connect(db) as con:
        con.execute("UPDATE alembic_version SET version_num = 'v9.9.9.z'")
    before = db.read_bytes()
    r = hpsearch(["run", "--study", "smoke", "--trials", "1", "--storage", url], workdir)
    assert r.returncode != 0
    assert "cannot open storage" in r.stderr and "schema" in r.stderr
    _one_line_no_secret(r.stdout, r.stderr)
    assert db.read_bytes() == before  # nothing recorded is touched


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--set", "train.epochs=-1"], "train.epochs"),
        (["--set", "train.epochs=0"], "train.epochs"),
        (["--set", "search.space.lr={low: 1e-2, high: 1e-4}"], "search.space.lr"),
        (["--set", "search.pruner.name=patient"], "search.pruner"),
        (["--set", "no.such.key=1"], "no"),
    ],
)
def test_bad_values_on_the_command_line(workdir: Path, args: list[str], needle: str) -> None:
    r = hpsearch(["run", "--study", "smoke", "--trials", "1", *args], workdir)
    assert r.returncode == 2, r.stderr
    assert needle in r.stderr and "--set" in r.stderr
    _one_line_no_secret(r.stdout, r.stderr)
    assert not (workdir / "hpsearch.db").exists()  # rejected before any storage is opened


def test_study_file_that_is_not_yaml(workdir: Path) -> None:
    bad = workdir / "broken.yaml"
    bad.write_text("data: {image_size: 32\ntrain: [\n")
    r = hpsearch(["run", "--study", str(bad), "--trials", "1"], workdir)
    assert r.returncode == 2
    assert str(bad) in r.stderr and "not valid YAML" in r.stderr
    _one_line_no_secret(r.stdout, r.stderr)


def test_password_in_the_storage_url_is_never_recorded_or_printed(
    workdir: Path, pg_url: str
) -> None:
    # The local server trusts 127.0.0.1, so any password connects: it must still go nowhere.
    url = pg_url.replace("postgresql://postgres@", f"postgresql://postgres:{SECRET}@", 1)
    args = ["run", "--study", "smoke", "--trials", "1", "--storage", url]
    r = hpsearch(
        [*args, "--set", "data.max_per_class=40", "--set", "data.val_max_per_class=20"], workdir
    )
    assert r.returncode == 0, r.stderr
    assert SECRET not in r.stdout + r.stderr
    assert "postgres:***@" in r.stdout
    (trial,) = optuna.load_study(study_name="smoke", storage=pg_url).trials
    assert "postgres:***@" in trial.user_attrs["command"]
    assert SECRET not in repr(trial.user_attrs) + repr(trial.system_attrs)


def test_mask_secrets_masks_every_url_password() -> None:
    text = "run --storage postgresql://u:p@ss@h:5432/db --x https://a:b@c/ sqlite:///x.db"
    assert mask_secrets(text) == (
        "run --storage postgresql://u:***@h:5432/db --x https://a:***@c/ sqlite:///x.db"
    )
