"""Several real worker processes against a real PostgreSQL server."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from conftest import hpsearch, popen

pytestmark = pytest.mark.slow

TINY = ["--set", "data.max_per_class=60", "--set", "data.val_max_per_class=30"]


def states(study: optuna.Study) -> list[TrialState]:
    return [t.state for t in study.trials]


def finished(study: optuna.Study) -> int:
    return sum(s in (TrialState.COMPLETE, TrialState.PRUNED) for s in states(study))


def read_until(
    proc: subprocess.Popen[str], stop: Callable[[str, dict[str, int]], bool]
) -> tuple[dict[str, int], list[str]]:
    """Read a launcher's output until ``stop(line, pids)``; the workers' pids by name (w0, w1)
    from its "[wN] started pid P" lines, and the lines read."""
    assert proc.stdout is not None
    pids: dict[str, int] = {}
    lines: list[str] = []
    for line in proc.stdout:
        lines.append(line)
        m = re.match(r"\[(w\d)\] started pid (\d+)", line)
        if m:
            pids[m[1]] = int(m[2])
        if stop(line, pids):
            break
    return pids, lines


def test_three_workers_run_exactly_eight_overlapping_trials(workdir: Path, pg_url: str) -> None:
    r = hpsearch(
        [
            "run",
            "--study",
            "smoke",
            "--trials",
            "8",
            "--workers",
            "3",
            "--storage",
            pg_url,
            "--set",
            "train.epochs=3",
            *TINY,
        ],
        workdir,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert {f"[w{i}] started pid" in r.stdout for i in range(3)} == {True}
    study = optuna.load_study(study_name="smoke", storage=pg_url)
    assert finished(study) == 8 and len(study.trials) == 8  # exact: no extra trial at all
    assert TrialState.RUNNING not in states(study)
    spans = [(t.datetime_start, t.datetime_complete) for t in study.trials]
    overlaps = sum(
        1 for i, a in enumerate(spans) for b in spans[i + 1 :] if a[0] < b[1] and b[0] < a[1]
    )
    assert overlaps >= 2
    workers = {
        line.split("]")[0]
        for line in r.stdout.splitlines()
        if "finished:" in line or "pruned" in line
    }
    assert len(workers) >= 2  # more than one process ran trials


def test_sigkill_of_a_worker_mid_trial_keeps_the_count_exact(workdir: Path, pg_url: str) -> None:
    proc = popen(
        [
            "run",
            "--study",
            "smoke",
            "--trials",
            "6",
            "--workers",
            "2",
            "--study-name",
            "killed",
            "--storage",
            pg_url,
            "--heartbeat",
            "1",
            "--set",
            "train.epochs=5",
            "--set",
            "search.pruner=none",
            *TINY,
        ],
        workdir,
    )
    pids, lines = read_until(proc, lambda line, _: line.startswith("[w1]") and "epoch 2/5" in line)
    os.kill(pids["w1"], signal.SIGKILL)  # mid-trial, no chance to clean up
    rest, _ = proc.communicate(timeout=300)
    out = "".join(lines) + rest
    assert "[w1] ended with signal 9" in out
    assert proc.returncode == 0, out
    study = optuna.load_study(study_name="killed", storage=pg_url)
    assert finished(study) == 6
    assert TrialState.RUNNING not in states(study)
    assert states(study).count(TrialState.FAIL) == 1
    retried = [t for t in study.trials if "failed_trial" in t.system_attrs]
    assert len(retried) == 1 and retried[0].state == TrialState.COMPLETE


def test_every_worker_killed_after_a_trial_is_a_failed_run(workdir: Path, pg_url: str) -> None:
    """Both workers die once a trial has finished: the run gives the unstarted trials back,
    which lowers the study's target to what finished; it must still exit 1, saying so (it said
    nothing but '[wN] ended with signal 9' and exited 0, as if the budget had been reached)."""
    proc = popen(
        ["run", "--study", "smoke", "--trials", "12", "--workers", "2", "--study-name", "dead",
         "--storage", pg_url, "--set", "train.epochs=3", "--set", "search.pruner=none", *TINY],
        workdir,
    )  # fmt: skip
    pids, lines = read_until(
        proc, lambda line, pids: "finished: val_acc" in line and len(pids) == 2
    )
    for pid in pids.values():
        os.kill(pid, signal.SIGKILL)
    rest, _ = proc.communicate(timeout=300)
    out = "".join(lines) + rest
    assert proc.returncode == 1, out
    assert "[w0] ended with signal 9" in out and "[w1] ended with signal 9" in out
    err = [x for x in out.splitlines() if x.startswith("hpsearch: error:")]
    assert len(err) == 1, out
    assert "the budget of 12 finished trials was not reached (2 workers failed" in err[0], out
    assert "Traceback" not in out
    study = optuna.load_study(study_name="dead", storage=pg_url)
    assert 1 <= finished(study) < 12


def test_a_second_worker_joins_and_respects_the_budget(workdir: Path, pg_url: str) -> None:
    args = ["--study", "smoke", "--storage", pg_url, "--set", "train.epochs=3", *TINY]
    early = hpsearch(["worker", *args], workdir)
    # an empty database: the worker says so and creates nothing there (issue 11)
    assert early.returncode != 0 and "no Optuna tables" in early.stdout + early.stderr
    import sqlalchemy

    engine = sqlalchemy.create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://"))
    assert sqlalchemy.inspect(engine).get_table_names() == []
    engine.dispose()
    run = popen(["run", "--trials", "8", *args], workdir)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if optuna.load_study(study_name="smoke", storage=pg_url).user_attrs.get(
                "target_trials"
            ):
                break
        except KeyError:
            pass
        time.sleep(0.5)
    joined = popen(["worker", *args], workdir)
    out_joined, _ = joined.communicate(timeout=300)
    out_run, _ = run.communicate(timeout=300)
    assert run.returncode == 0, out_run
    assert joined.returncode == 0, out_joined
    assert "worker joined study 'smoke'" in out_joined
    assert "finished:" in out_joined or "pruned" in out_joined  # it ran trials
    study = optuna.load_study(study_name="smoke", storage=pg_url)
    assert finished(study) == 8 and len(study.trials) == 8


def test_grid_with_several_workers_runs_each_point_once(workdir: Path, pg_url: str) -> None:
    r = hpsearch(
        [
            "run",
            "--study",
            "smoke",
            "--trials",
            "10",
            "--workers",
            "3",
            "--sampler",
            "grid",
            "--storage",
            pg_url,
            "--set",
            "train.epochs=1",
            *TINY,
        ],
        workdir,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    study = optuna.load_study(study_name="smoke", storage=pg_url)
    points = [(t.params["lr"], t.params["kernel_size"]) for t in study.trials]
    assert sorted(points) == sorted({(lr, k) for lr in (1e-3, 3e-3) for k in (3, 5)})
    assert "the grid is exhausted" in r.stdout


def test_sqlite_takes_at_most_four_local_workers(workdir: Path) -> None:
    # --workers 8 on the default SQLite file: one line says why 4 run and what to use instead,
    # and the 4 (the most the suite runs on one file) finish exactly the budget between them
    r = hpsearch(
        [
            "run",
            "--study",
            "smoke",
            "--trials",
            "9",
            "--workers",
            "8",
            "--set",
            "train.epochs=1",
            *TINY,
        ],
        workdir,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    notes = [line for line in r.stdout.splitlines() if line.startswith("note: running")]
    assert len(notes) == 1, r.stdout
    assert "running 4 of 8 workers" in notes[0]
    assert "SQLite" in notes[0] and "PostgreSQL" in notes[0]
    started = re.findall(r"^\[w(\d)\] started pid", r.stdout, re.M)
    assert sorted(started) == ["0", "1", "2", "3"], r.stdout
    study = optuna.load_study(study_name="smoke", storage=f"sqlite:///{workdir / 'hpsearch.db'}")
    assert finished(study) == 9 and len(study.trials) == 9
    assert TrialState.RUNNING not in states(study)


def test_claim_lock_excludes_other_processes(workdir: Path, pg_url: str) -> None:
    import psycopg
    from filelock import FileLock, Timeout

    from hpsearch.storage.claims import PgAdvisoryLock, claim_lock
    from hpsearch.storage.urls import open_storage

    lite = optuna.create_study(storage=open_storage(f"sqlite:///{workdir / 'l.db'}"))
    beside = claim_lock(lite._storage, lite.study_name)  # a file lock beside the SQLite file
    beside.acquire()
    with pytest.raises(Timeout):  # another holder of that file must wait
        FileLock(str(workdir / "l.db.claims.lock")).acquire(timeout=0)
    beside.release()
    FileLock(str(workdir / "l.db.claims.lock")).acquire(timeout=0)
    study = optuna.create_study(storage=open_storage(pg_url), study_name="locked")
    lock = claim_lock(study._storage, "locked")  # the study's storage is Optuna's cache wrapper
    assert isinstance(lock, PgAdvisoryLock)
    admin = pg_url.replace("postgresql://", "postgresql://", 1)
    with psycopg.connect(admin, autocommit=True) as other:
        probe = "SELECT pg_try_advisory_lock(%s)"
        lock.acquire()
        assert other.execute(probe, (lock.key,)).fetchone() == (False,)
        lock.release()
        assert other.execute(probe, (lock.key,)).fetchone() == (True,)
        other.execute("SELECT pg_advisory_unlock(%s)", (lock.key,))


def test_ctrl_c_on_the_launcher_stops_every_worker_and_the_study_resumes(
    workdir: Path, pg_url: str
) -> None:
    args = ["run", "--study", "smoke", "--workers", "2", "--storage", pg_url, *TINY]
    proc = popen([*args, "--trials", "6", "--set", "train.epochs=40"], workdir)
    assert proc.stdout is not None
    pids: list[int] = []
    for line in proc.stdout:
        m = re.match(r"\[w\d\] started pid (\d+)", line)
        if m:
            pids.append(int(m[1]))
        if "epoch 2/40" in line:  # both workers are mid-trial by now or about to be
            break
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert time.monotonic() - t0 < 15  # every process is gone within the grace period
    assert proc.returncode == 130, out
    assert "Traceback" not in out
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    study = optuna.load_study(study_name="smoke", storage=pg_url)
    assert TrialState.RUNNING not in states(study)
    assert TrialState.FAIL in states(study)  # the interrupted trials, marked failed
    # The same command (a smaller budget, so the test stays short) continues the study.
    r = hpsearch([*args, "--trials", "2", "--set", "train.epochs=1"], workdir)
    assert r.returncode == 0, r.stdout + r.stderr
    study = optuna.load_study(study_name="smoke", storage=pg_url)
    assert finished(study) == 2 and TrialState.RUNNING not in states(study)


def test_a_worker_waiting_for_its_study_says_what_it_waits_for(workdir: Path) -> None:
    """``worker --wait`` before any run (a container started first): one line says what it waits
    for and for how long, instead of silence; when the wait ends, the reason is the error."""
    r = hpsearch(["worker", "--study", "smoke", "--wait", "3"], workdir)
    assert r.returncode == 1
    said = r.stdout.splitlines()
    assert len(said) == 1 and said[0].startswith("waiting (up to 3 s in all) for hpsearch run: "), (
        r.stdout
    )
    assert "hpsearch.db does not exist" in said[0]
    assert r.stderr.strip().splitlines()[-1].startswith("hpsearch: error: no database at ")


def test_a_worker_started_by_hand_takes_the_runs_settings(workdir: Path) -> None:
    """A run's --set reached its own workers only: a worker started by hand (another host, a
    compose or Kubernetes worker) trained with the study file's settings, mixing two
    configurations in one study. The run records them; a worker with no --set of its own takes
    them and says so; one with other --set is told they differ."""
    settings = ["train.epochs=1", "data.max_per_class=20", "data.val_max_per_class=10"]
    run = ["run", "--study", "smoke", "--trials", "1"]
    for s in settings:
        run += ["--set", s]
    r = hpsearch(run, workdir)
    assert r.returncode == 0, r.stdout + r.stderr
    url = f"sqlite:///{workdir / 'hpsearch.db'}"
    study = optuna.load_study(study_name="smoke", storage=url)
    assert study.user_attrs["run_settings"] == settings
    study.set_user_attr("target_trials", 2)  # one more trial, for a worker

    r = hpsearch(["worker", "--study", "smoke"], workdir)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (
        "the run's settings: --set train.epochs=1 --set data.max_per_class=20 "
        "--set data.val_max_per_class=10" in r.stdout
    ), r.stdout
    trials = optuna.load_study(study_name="smoke", storage=url).get_trials()
    assert len(trials) == 2 and trials[1].state == optuna.trial.TrialState.COMPLETE
    assert trials[1].user_attrs["config"]["train"]["epochs"] == 1  # the file says 2
    assert trials[1].user_attrs["epochs_run"] == 1

    study.set_user_attr("target_trials", 3)
    own = ["--set", "train.epochs=1", "--set", "data.max_per_class=20"]
    r = hpsearch(["worker", "--study", "smoke", *own], workdir)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "note: this worker's --set differ from those of the last run on the study" in r.stdout


def test_recorded_settings_that_do_not_apply_are_one_line_naming_where_they_came_from(
    workdir: Path,
) -> None:
    """Settings in the study that the worker's study file cannot take (set by hand, or by a run
    of another file): one line that names the study's attribute, not a --set the user never
    passed."""
    url = f"sqlite:///{workdir / 'hpsearch.db'}"
    study = optuna.create_study(study_name="smoke", storage=url, direction="maximize")
    study.set_user_attr("target_trials", 1)
    study.set_user_attr("run_settings", ["train.no_such_key=1"])
    r = hpsearch(["worker", "--study", "smoke"], workdir)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith(
        "hpsearch: error: the settings the last run recorded in study 'smoke' (user attribute "
        "'run_settings': ['train.no_such_key=1']) do not apply to smoke: "
    ), line
    assert optuna.load_study(study_name="smoke", storage=url).get_trials() == []
