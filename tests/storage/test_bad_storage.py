"""Storage that cannot be used: one line naming the problem, no password, a bounded wait."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import optuna
import pytest

from conftest import PG_ADMIN, hpsearch
from hpsearch.storage.secrets import mask_secrets, mask_url

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
    # a hint with *** in it could not be pasted: it says which URL instead
    assert "browse: hpsearch dashboard --study smoke --storage URL (the --storage given" in r.stdout
    (trial,) = optuna.load_study(study_name="smoke", storage=pg_url).trials
    assert "postgres:***@" in trial.user_attrs["command"]
    assert SECRET not in repr(trial.user_attrs) + repr(trial.system_attrs)


@pytest.mark.slow
@pytest.mark.parametrize("form", ["query", "sslpassword"])  # user:password@: the test above
def test_a_password_in_any_form_goes_nowhere(workdir: Path, pg_url: str, form: str) -> None:
    """Each credential form libpq and SQLAlchemy accept, through every place a URL is shown or
    stored: run's lines, the trial's recorded command, status, best, trials --csv, the
    dashboard's first line, serve's /model and page."""
    import signal
    import socket
    import subprocess
    import sys

    from serving import get, start

    base, db = pg_url.rsplit("/", 1)
    url = {
        "userinfo": pg_url.replace("postgresql://postgres@", f"postgresql://postgres:{SECRET}@"),
        "query": f"{base}/{db}?password={SECRET}&application_name=t",
        "sslpassword": f"{base}/{db}?sslpassword={SECRET}",
    }[form]
    tiny = ["--set", "data.max_per_class=40", "--set", "data.val_max_per_class=20"]
    seen = []
    r = hpsearch(["run", "--study", "smoke", "--trials", "1", "--storage", url, *tiny], workdir)
    assert r.returncode == 0, r.stdout + r.stderr
    seen.append(r.stdout + r.stderr)
    assert "***" in r.stdout
    (trial,) = optuna.load_study(study_name="smoke", storage=pg_url).trials
    seen.append(repr(trial.user_attrs) + repr(trial.system_attrs))
    for command in (["status"], ["best"], ["trials", "--csv", "t.csv"]):
        r = hpsearch([*command, "--study", "smoke", "--storage", url], workdir)
        assert r.returncode == 0, r.stdout + r.stderr
        seen.append(r.stdout + r.stderr)
    seen.append((workdir / "t.csv").read_text())
    log = workdir / "dashboard.log"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    with open(log, "w") as out:
        dash = subprocess.Popen(
            [sys.executable, "-m", "hpsearch.cli", "dashboard", "--study", "smoke",
             "--storage", url, "--port", port],
            cwd=workdir, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while "Ctrl-C stops it" not in log.read_text() and time.monotonic() < deadline:
            assert dash.poll() is None, log.read_text()
            time.sleep(0.2)
    finally:
        dash.send_signal(signal.SIGINT)
        dash.wait(timeout=30)
    seen.append(log.read_text())
    assert "Ctrl-C stops it" in seen[-1]
    proc, served = start(f"--study smoke --storage {url}", workdir, workdir / "serve.log")
    try:
        seen.append(repr(get(f"{served}/model")) + get(f"{served}/"))
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    seen.append((workdir / "serve.log").read_text())
    for text in seen:
        assert SECRET not in text, text


def test_mask_secrets_masks_every_url_password() -> None:
    text = "run --storage postgresql://u:p@ss@h:5432/db --x https://a:b@c/ sqlite:///x.db"
    assert mask_secrets(text) == (
        "run --storage postgresql://u:***@h:5432/db --x https://a:***@c/ sqlite:///x.db"
    )


@pytest.mark.parametrize(
    "text,shown",
    [
        ("postgresql://u:s3cret@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u:s3/cr@et@h:5432/db", "postgresql://u:***@h:5432/db"),
        (
            "postgresql://h/db?user=u&password=s3cret&sslmode=require",
            "postgresql://h/db?user=u&password=***&sslmode=require",
        ),
        ("postgresql://h/db?sslpassword=s3cret", "postgresql://h/db?sslpassword=***"),
        ("postgresql://h/db?PASSWORD=s3cret#x", "postgresql://h/db?PASSWORD=***#x"),
        ("host=h dbname=db password=s3cret user=u", "host=h dbname=db password=*** user=u"),
        ("host=h password='s3 cret' user=u", "host=h password=*** user=u"),
        (
            "postgresql://h/db?passfile=/home/u/.pgpass",
            "postgresql://h/db?passfile=/home/u/.pgpass",
        ),
        ("postgresql://u@h:5432/db", "postgresql://u@h:5432/db"),
    ],
)
def test_every_credential_form_is_masked(text: str, shown: str) -> None:
    assert mask_secrets(text) == shown
    assert mask_secrets(f"run --storage {text} --trials 3") == f"run --storage {shown} --trials 3"
    assert "s3" not in mask_url(text) or "s3" not in text


@pytest.mark.parametrize("url", ["postgresql://u:pw@127.0.0.1:abc/db", "postgresql://u:pw@[::1/db"])
def test_an_unreadable_host_or_port_is_one_line(workdir: Path, url: str) -> None:
    for command in (["status"], ["run", "--trials", "1"], ["worker"], ["serve"]):
        r = hpsearch([*command, "--study", "smoke", "--storage", url], workdir)
        assert r.returncode == 1, r.stdout + r.stderr  # a storage error, as for any bad URL
        assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
        assert "cannot read its host and port" in r.stderr and "pw" not in r.stderr
