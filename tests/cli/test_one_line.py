"""Issue 11: one line instead of a traceback, and no file written on error. Each case as a
user meets it: the real CLI (in this process where no subprocess is needed), real photos, a
real SQLite file, a real PostgreSQL server, a real read-only filesystem."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from conftest import DATA, popen, small_imagefolder
from hpsearch.cli.main import main

TINY_DATA = [
    *("--set", "data.max_per_class=20", "--set", "data.val_max_per_class=10"),
    *("--set", "train.epochs=1", "--set", "data.image_size=16"),
    *("--set", "search.space.n_blocks=2"),
]
TINY = [*TINY_DATA, "--pruner", "none"]


@pytest.fixture(autouse=True)
def _signals() -> Iterator[None]:
    """main() installs hpsearch's SIGINT/SIGTERM handlers; give pytest its own back."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for s, handler in saved.items():
        signal.signal(s, handler)


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``hpsearch ARGS`` run in this process."""
    try:
        code = main(list(args))
    except SystemExit as e:  # argparse's usage errors
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def one_line(code: int, err: str, *needles: str) -> None:
    assert code != 0
    assert err.startswith("hpsearch") and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    for n in needles:
        assert n in err, err


def db_files(where: Path) -> list[str]:
    return sorted(p.name for p in where.iterdir() if ".db" in p.name)


def plain_optuna_study(where: Path, attrs: dict[str, object] | None = None) -> optuna.Study:
    """A study made with Optuna alone (no hpsearch): three finished trials."""
    study = optuna.create_study(
        study_name="smoke", storage=f"sqlite:///{where / 'hpsearch.db'}", direction="maximize"
    )
    for value in (0.9, 0.8, 0.1):
        study.add_trial(
            create_trial(
                params={"lr": 1e-3},
                distributions={"lr": FloatDistribution(1e-4, 1e-1, log=True)},
                value=value,
                user_attrs=attrs or {},
            )
        )
    return study


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[Path]:
    """A real read-only filesystem (as root, a chmod'ed directory is still writable)."""
    mnt = tmp_path / "ro"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mnt)])
    if r.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "--lazy", str(mnt)], check=False)


# --- sizes -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "how",
    [
        ["--set", "data.image_size=100000"],
        ["--study", "big.yaml"],  # a 20-digit number in the study file
        # every photo at 4096px: 750 GiB decoded, more than any machine this runs on
        ["--set", "data.image_size=4096", "--set", "data.max_per_class=null"],
    ],
)
def test_an_impossible_image_size_is_one_line_and_writes_nothing(
    here: Path, capsys: pytest.CaptureFixture[str], how: list[str]
) -> None:
    (here / "big.yaml").write_text("data:\n  image_size: 12345678901234567890\n")
    study = ["--study", "smoke"] if "--study" not in how else []
    code, _, err = cli(capsys, "run", *study, "--trials", "1", *how)
    one_line(code, err)
    assert "image_size" in err or "GiB" in err
    assert db_files(here) == []


# --- dashboard -------------------------------------------------------------------------------


@pytest.mark.parametrize("port", ["70000", "-1", "0"])
def test_a_port_out_of_range_is_a_usage_error(
    here: Path, capsys: pytest.CaptureFixture[str], port: str
) -> None:
    plain_optuna_study(here)
    code, _, err = cli(capsys, "dashboard", f"--port={port}")
    assert code == 2
    one_line(code, err, f"expected a port number from 1 to 65535, got '{port}'")


def test_serve_refuses_a_port_out_of_range_rather_than_wrapping_it(
    here: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plain_optuna_study(here)
    code, _, err = cli(capsys, "serve", "--study", "smoke", "--port", "70000")  # was port 4464
    assert code == 2
    one_line(code, err, "expected a port number from 0 to 65535, got '70000'")


def test_a_busy_port_is_one_line_and_nothing_is_announced(
    here: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plain_optuna_study(here)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out, err = cli(capsys, "dashboard", "--port", str(port))
    one_line(code, err, f"127.0.0.1:{port}: Address already in use")
    assert out == ""  # neither "optuna-dashboard for ... at http://..." nor "Listening on"


# --- files written into a read-only directory ------------------------------------------------


@pytest.mark.parametrize("command", [["trials", "--csv"], ["report", "--output"]])
def test_a_read_only_directory_is_named_not_hidden_by_the_cleanup(
    here: Path, capsys: pytest.CaptureFixture[str], read_only: Path, command: list[str]
) -> None:
    plain_optuna_study(here)
    target = read_only / "out.csv" if command[0] == "trials" else read_only
    code, _, err = cli(capsys, command[0], "--study", "smoke", command[1], str(target))
    one_line(code, err, "Read-only file system")
    assert not list(read_only.iterdir())


@pytest.mark.parametrize(("value", "problem"), [("", "expected a file name"), (".", "directory")])
def test_csv_needs_a_file_name(
    here: Path, capsys: pytest.CaptureFixture[str], value: str, problem: str
) -> None:
    plain_optuna_study(here)
    code, _, err = cli(capsys, "trials", "--study", "smoke", "--csv", value)
    one_line(code, err, problem)


# --- databases are never created by reading, nor by a run that fails validation --------------


@pytest.mark.parametrize(
    "command",
    [
        # --port of a busy socket: before the fix the file was created, then bind failed
        ["dashboard", "--port", "BUSY"],
        ["status", "--study", "smoke"],
        ["best", "--study", "smoke"],
        ["trials", "--study", "smoke", "--csv", "-"],
        ["train", "--study", "smoke", "--trial", "best"],
        ["worker", "--study", "smoke"],
    ],
)
def test_reading_a_missing_sqlite_file_does_not_create_it(
    here: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        args = [str(busy.getsockname()[1]) if a == "BUSY" else a for a in command]
        code, _, err = cli(capsys, *args)
    one_line(code, err, "no database at sqlite:///hpsearch.db")
    assert db_files(here) == []


def public_tables(url: str) -> int:
    import psycopg

    with psycopg.connect(url) as con:
        row = con.execute(
            "select count(*) from information_schema.tables where table_schema = 'public'"
        ).fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.parametrize(
    "command",
    [
        ["status", "--study", "smoke"],
        ["best", "--study", "smoke"],
        ["report", "--study", "smoke", "--output", "report"],
        ["train", "--study", "smoke", "--trial", "best"],
        ["worker", "--study", "smoke"],
    ],
)
def test_reading_an_empty_postgresql_database_creates_no_tables(
    here: Path, capsys: pytest.CaptureFixture[str], pg_url: str, command: list[str]
) -> None:
    code, _, err = cli(capsys, *command, "--storage", pg_url)
    one_line(code, err, "no studies in ", "no Optuna tables")
    assert public_tables(pg_url) == 0


def test_a_600_character_study_name_on_postgresql_is_one_line(
    here: Path, capsys: pytest.CaptureFixture[str], pg_url: str
) -> None:
    name = "x" * 600
    code, _, err = cli(capsys, "run", "--study", "smoke", "--trials", "1", "--storage", pg_url,
                       "--study-name", name, *TINY)  # fmt: skip
    one_line(code, err, "--study-name: at most 512 characters", "got 600")
    assert public_tables(pg_url) == 0


@pytest.mark.parametrize(
    ("how", "problem"),
    [
        (["--set", "data.root=NOVAL"], "noval/val does not exist"),
        (["--set", "search.sampler={name: tpe, bogus: 1}"], "bogus"),
        (["--set", "search.pruner={name: median, n_startup_trials: -1}"], "search.pruner"),
        (["--set", "search.pruner=percentile"], "the share of trials kept at each epoch"),
    ],
)
def test_a_run_that_fails_validation_writes_no_database(
    here: Path, capsys: pytest.CaptureFixture[str], how: list[str], problem: str
) -> None:
    noval = here / "noval"
    for cls in ("cat", "dog"):
        (noval / "train" / cls).mkdir(parents=True)
        first = sorted((DATA / "train" / cls).iterdir())[0]
        (noval / "train" / cls / first.name).write_bytes(first.read_bytes())
    how = [h.replace("NOVAL", str(noval)) for h in how]
    code, _, err = cli(capsys, "run", "--study", "smoke", "--trials", "1", *TINY_DATA, *how)
    one_line(code, err, problem)
    assert db_files(here) == []


# --- messages that say what a path is --------------------------------------------------------


def test_a_file_as_data_root_and_a_device_as_study_file_are_named(
    here: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (here / "notes.txt").write_text("not a data set")
    code, _, err = cli(capsys, "train", "--study", "smoke", "--set", "data.root=notes.txt")
    one_line(code, err, "notes.txt is a file, not a directory")
    code, _, err = cli(capsys, "run", "--study", "/dev/null", "--trials", "1")
    one_line(code, err, "study file /dev/null is a device, pipe or socket, not a YAML file")
    code, _, err = cli(capsys, "run", "--study", str(here) + "/", "--trials", "1")
    one_line(code, err, "is a directory, not a YAML file")
    assert "does not exist" not in err
    assert db_files(here) == []


# --- the real photos: a symlink loop, a foreign checkpoint attribute --------------------------


@pytest.mark.slow
def test_a_symlink_loop_in_a_class_folder_is_skipped_with_one_warning(
    here: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    root = small_imagefolder(here / "photos", DATA, 20, 10)
    for split in ("train", "val"):
        os.symlink("loop.jpg", root / split / "cat" / "loop.jpg")  # ELOOP when looked at
    caplog.set_level(logging.WARNING, logger="hpsearch")
    code, out, err = cli(
        capsys, "train", "--study", "smoke", "--set", f"data.root={root}", *TINY_DATA
    )
    assert code == 0, err
    assert '"val_accuracy"' in out and "Traceback" not in err
    skipped = [r.getMessage() for r in caplog.records if "unreadable entr" in r.getMessage()]
    assert len(skipped) == 2, skipped  # once per split
    assert "cat/loop.jpg (Too many levels of symbolic links)" in skipped[0]


@pytest.mark.slow
def test_a_foreign_checkpoint_attribute_is_neither_used_nor_deleted(
    here: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plain_optuna_study(here, {"checkpoint": "/models/best.pt"})
    code, _, err = cli(capsys, "run", "--study", "smoke", "--trials", "1", *TINY,
                       "--set", "search.keep_checkpoints=1")  # fmt: skip
    assert code == 0, err
    study = optuna.load_study(study_name="smoke", storage="sqlite:///hpsearch.db")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 4  # the new one too
    assert all(t.user_attrs["checkpoint"] == "/models/best.pt" for t in study.trials[:3])
    code, _, err = cli(capsys, "export", "--study", "smoke", "--format", "torchscript",
                       "--output", "m.pt")  # fmt: skip
    one_line(code, err, "trial 0 has no hpsearch checkpoint", "'/models/best.pt'")


# --- with a real search's checkpoint (the shared smoke study) ---------------------------------


@pytest.mark.slow
def test_export_into_a_read_only_directory_names_it(
    smoke_study: Path, capsys: pytest.CaptureFixture[str], read_only: Path
) -> None:
    db = f"sqlite:///{smoke_study / 'hpsearch.db'}"
    code, _, err = cli(capsys, "export", "--study", "smoke", "--storage", db,
                       "--format", "torchscript", "--output", str(read_only / "m.pt"))  # fmt: skip
    one_line(code, err, "Read-only file system")


@pytest.mark.slow
def test_predict_a_directory_and_evaluate_a_symlink_loop(
    smoke_study: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = f"sqlite:///{smoke_study / 'hpsearch.db'}"
    code, _, err = cli(capsys, "predict", "--study", "smoke", "--storage", db, str(tmp_path))
    one_line(code, err, f"image {tmp_path} is a directory, not an image file")
    unseen = small_imagefolder(tmp_path / "unseen", DATA, 1, 10) / "val"
    os.symlink("loop.jpg", unseen / "dog" / "loop.jpg")
    code, out, err = cli(capsys, "evaluate", "--study", "smoke", "--storage", db,
                         "--data", str(unseen))  # fmt: skip
    assert code == 0, err
    assert "accuracy" in out and "on 20 images" in out


# --- Ctrl-C twice (about the process: a real subprocess) -------------------------------------


@pytest.mark.slow
def test_ctrl_c_twice_exits_130_with_one_line(tmp_path: Path) -> None:
    args = ["run", "--study", "smoke", "--trials", "2", "--set", "train.epochs=30"]
    proc = popen([*args, "--set", "data.max_per_class=60", "--set", "data.val_max_per_class=30"],
                 tmp_path, merge_stderr=False)  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    for line in proc.stdout:
        if "trial 0 epoch 1/30" in line:
            break
    proc.send_signal(signal.SIGINT)
    first = proc.stderr.readline()  # hpsearch has handled the first: it is exiting now
    proc.send_signal(signal.SIGINT)
    _, rest = proc.communicate(timeout=60)
    assert first.startswith("hpsearch: interrupted during trial 0"), first + rest
    assert proc.returncode == 130, first + rest  # not killed by the second signal
    assert rest == "", rest  # no "Exception ignored in atexit callback ... KeyboardInterrupt"
    study = optuna.load_study(study_name="smoke", storage=f"sqlite:///{tmp_path / 'hpsearch.db'}")
    assert [t.state for t in study.trials] == [TrialState.FAIL]
