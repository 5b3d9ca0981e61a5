"""``run``/``worker --timeout``: real CLI processes on real photos, a real SQLite file and a real
PostgreSQL server. Each deadline falls inside a trial: after the trial's first epoch its process
is frozen (SIGSTOP) until the deadline has passed, then let go (SIGCONT), so that where the
deadline falls does not depend on how fast the machine is. The trial running at the deadline
finishes, none starts after it, and the study's counts add up (finished == target, nothing
RUNNING). A frozen process stays frozen for less than the 30 s after which its silent trial
would be failed as stale (3 heartbeats of 10 s)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

from conftest import hpsearch, popen

pytestmark = pytest.mark.slow

TINY = ["--set", "data.max_per_class=60", "--set", "data.val_max_per_class=30"]
# never pruned (worker takes no --pruner: the study-file key instead); 4 epochs: a trial frozen
# after its first still has 3 to train when it is let go
LONG = [*TINY, "--set", "search.pruner=none", "--set", "train.epochs=4"]
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
REACHED = re.compile(
    r"^deadline reached after [^:]+: (\d+) of the (\d+) trials finished; (\d+) unstarted "
    r"trials? given back$",
    re.M,
)


class Output:
    """A process's merged output, read by a thread (so that its pipe never fills)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self.cond = threading.Condition()
        self.at = 0
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self.cond:
                self.lines.append(line)
                self.cond.notify_all()
        with self.cond:
            self.lines.append("")  # the end
            self.cond.notify_all()

    def wait_for(self, pattern: str, timeout: float = 300, start: int = 0) -> re.Match[str] | None:
        """The first line from line ``start`` on matching ``pattern`` (its index goes to
        ``self.at``); None if the process ended without one."""
        rx = re.compile(pattern)
        end = time.monotonic() + timeout
        seen = start
        with self.cond:
            while True:
                for i, line in enumerate(self.lines[seen:], seen):
                    if line == "":
                        return None
                    m = rx.search(line)
                    if m:
                        self.at = i
                        return m
                seen = len(self.lines)
                assert self.cond.wait(max(end - time.monotonic(), 0)), self.text()

    def finish(self, timeout: float = 300) -> str:
        self.proc.wait(timeout)
        self.thread.join(30)
        return self.text()

    def text(self) -> str:
        return "".join(self.lines)


def freeze(*pids: int) -> None:
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)


def thaw(*pids: int) -> None:
    for pid in pids:
        os.kill(pid, signal.SIGCONT)


def freeze_in_trials(out: Output, pids: dict[str, int], url: str, pattern: str) -> dict[str, int]:
    """Freeze each process in ``pids`` inside a trial, after that trial's first epoch; the trial
    numbers by process. ``pattern`` matches an epoch-1 line, its groups the key into ``pids``
    and the trial's number. A line read late may come from a trial that has since finished: once
    its process is frozen, the study says whether the trial is still running; if it is not, the
    process goes on and its next trial is taken."""
    spanning: dict[str, int] = {}
    start = 0
    while len(spanning) < len(pids):
        m = out.wait_for(pattern, start=start)
        assert m, out.text()
        start = out.at + 1
        key, number = m[1], int(m[2])
        if key in spanning:
            continue
        freeze(pids[key])
        if study_at(url).get_trials(deepcopy=False)[number].state == TrialState.RUNNING:
            spanning[key] = number
        else:
            thaw(pids[key])
    return spanning


def freeze_past(pids: list[int], deadline: float) -> None:
    """Stop the processes until ``deadline`` (seconds since the epoch) has passed."""
    freeze(*pids)
    try:
        while time.time() < deadline + 0.5:
            time.sleep(0.1)
    finally:
        thaw(*pids)


def study_at(url: str) -> optuna.Study:
    return optuna.load_study(study_name="smoke", storage=url)


def run_deadline(url: str) -> float:
    """The deadline the one run going recorded in the study."""
    (text,) = study_at(url).user_attrs["deadlines"].values()
    return datetime.fromisoformat(text).timestamp()


def started(t: FrozenTrial) -> float:
    assert t.datetime_start is not None
    return t.datetime_start.timestamp()  # Optuna records local time, as this host's clock


def ended(t: FrozenTrial) -> float:
    assert t.datetime_complete is not None
    return t.datetime_complete.timestamp()


def counts_add_up(url: str) -> list[FrozenTrial]:
    study = study_at(url)
    trials = study.get_trials()
    # on failure, each trial: number, state, start, end, the run that ran it
    told = "\n".join(
        f"{t.number} {t.state.name} {t.datetime_start} {t.datetime_complete} "
        f"{t.user_attrs.get('run_id')} {t.system_attrs.get('failed_trial', '')}"
        for t in trials
    )
    assert TrialState.RUNNING not in {t.state for t in trials}, told
    assert sum(t.state in FINISHED for t in trials) == study.user_attrs["target_trials"], told
    return trials


def test_run_stops_at_its_deadline_and_the_counts_add_up(workdir: Path) -> None:
    url = f"sqlite:///{workdir / 'hpsearch.db'}"
    proc = popen(["run", "--study", "smoke", "--trials", "10", "--timeout", "15s", *LONG], workdir)
    out = Output(proc)
    # inside a trial (it writes nothing to the database while training)
    pattern = r"^(\[)[^\]]*\] trial (\d+) epoch 1/4"
    spanning = freeze_in_trials(out, {"[": proc.pid}, url, pattern)["["]
    deadline = run_deadline(url)
    status = hpsearch(["status", "--study", "smoke"], workdir)
    assert status.returncode == 0, status.stderr
    # beside the budget: "(in 9 s)", or on a slow machine "(passed 1 s ago: its running ...)"
    assert re.search(
        r"^budget: .*; deadline \d\d:\d\d:\d\d UTC \((in|passed) ", status.stdout, re.M
    )
    freeze_past([proc.pid], deadline)
    text = out.finish()
    assert proc.returncode == 0, text
    assert "Traceback" not in text and "deadline passed: no new trial starts" in text
    trials = counts_add_up(url)
    t = trials[spanning]  # running at the deadline: it finished, all its epochs
    assert t.state == TrialState.COMPLETE and started(t) < deadline < ended(t)
    assert t.user_attrs["epochs_run"] == 4
    assert all(started(t) < deadline for t in trials)  # none started after it
    reached = REACHED.search(text)
    assert reached, text
    done, asked, back = map(int, reached.groups())
    assert asked == 10 and done == len(trials) and done + back == 10
    assert study_at(url).user_attrs["deadlines"] == {}  # the run ended: its deadline with it
    status = hpsearch(["status", "--study", "smoke"], workdir)
    assert f"budget: {done} of {done} trials finished; done" in status.stdout
    assert "deadline" not in status.stdout

    # The study goes on as after a stopped run: the next run adds to what finished.
    more = ["run", "--study", "smoke", "--trials", "2", *TINY, "--set", "train.epochs=1"]
    r = hpsearch(more, workdir)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{done} finished trials so far, running 2 more" in r.stdout
    assert "deadline" not in r.stdout
    assert sum(t.state in FINISHED for t in counts_add_up(url)) == done + 2


def test_run_with_two_workers_stops_at_its_deadline(workdir: Path, pg_url: str) -> None:
    args = ["run", "--study", "smoke", "--trials", "12", "--workers", "2", "--timeout", "20s"]
    proc = popen([*args, "--storage", pg_url, *LONG], workdir)
    out = Output(proc)
    pids = {}
    for i in range(2):
        m = out.wait_for(rf"^\[w{i}\] started pid (\d+)")
        assert m, out.text()
        pids[f"w{i}"] = int(m[1])
    # both workers inside a trial, each frozen after its trial's first epoch
    pattern = r"^\[(w\d)\] .*\] trial (\d+) epoch 1/4"
    spanning = freeze_in_trials(out, pids, pg_url, pattern).values()
    deadline = run_deadline(pg_url)
    freeze_past(list(pids.values()), deadline)
    text = out.finish()
    assert proc.returncode == 0, text
    assert "Traceback" not in text and "ended with" not in text
    trials = counts_add_up(pg_url)
    for number in spanning:
        t = trials[number]
        assert t.state == TrialState.COMPLETE and started(t) < deadline < ended(t)
    assert all(started(t) < deadline for t in trials)
    reached = REACHED.search(text)
    assert reached, text
    done, _, back = map(int, reached.groups())
    assert done == len(trials) and done + back == 12


def test_a_worker_stops_at_its_own_deadline_and_leaves_the_budget(workdir: Path) -> None:
    """worker --timeout stops that worker; the run it joined finishes the whole budget."""
    url = f"sqlite:///{workdir / 'hpsearch.db'}"
    run = popen(["run", "--study", "smoke", "--trials", "6", *LONG], workdir)
    run_out = Output(run)
    assert run_out.wait_for(r"trial 0 epoch 1/4"), run_out.text()
    freeze(run.pid)  # its budget waits for the worker to join
    worker = popen(["worker", "--study", "smoke", "--timeout", "12s", *LONG], workdir)
    out = Output(worker)
    said = out.wait_for(
        r"^deadline (\d{4}-\d\d-\d\d )?(\d\d:\d\d:\d\d) UTC \(in [^)]*\): this worker starts"
    )
    assert said, out.text()
    day = said[1].strip() if said[1] else datetime.now(UTC).strftime("%Y-%m-%d")
    shown = datetime.strptime(f"{day} {said[2]}", "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
    deadline = shown.timestamp() + 1  # it was shown to the second: it is before this
    try:
        # the run stays frozen until the worker has stopped: on a fast machine a running run
        # finished the whole budget while the worker was frozen, and the worker then stopped
        # for the budget, not for its deadline
        pattern = r"^(\[)[^\]]*\] trial (\d+) epoch 1/4"
        spanning = freeze_in_trials(out, {"[": worker.pid}, url, pattern)["["]
        freeze_past([worker.pid], deadline)
        text = out.finish()
    finally:
        thaw(run.pid)  # the run goes on with the rest of the budget
    assert worker.returncode == 0, text
    assert "deadline reached: this worker starts no new trial" in text
    assert "Traceback" not in text
    run_text = run_out.finish()
    assert run.returncode == 0, run_text
    assert "deadline" not in run_text  # the run had none: the budget was the study's
    trials = counts_add_up(url)
    assert sum(t.state in FINISHED for t in trials) == 6
    mine = [t for t in trials if t.user_attrs.get("worker", "").endswith(f":{worker.pid}")]
    assert spanning in {t.number for t in mine}
    assert all(started(t) < deadline for t in mine)
    t = trials[spanning]
    assert t.state == TrialState.COMPLETE and ended(t) > deadline - 1


def test_a_worker_started_by_hand_honours_the_runs_deadline(workdir: Path, pg_url: str) -> None:
    """run --timeout with a worker from "another host" that has no deadline of its own: after
    the run's deadline the worker starts nothing; the trials running then finish, and the counts
    add up (the run keeps the slot of the worker's running trial when it gives back the rest)."""
    storage = ["--storage", pg_url]
    run = popen(
        ["run", "--study", "smoke", "--trials", "10", "--timeout", "20s", *storage, *LONG], workdir
    )
    run_out = Output(run)
    assert run_out.wait_for(r"\] trial \d+ epoch 1/4"), run_out.text()
    freeze(run.pid)  # its trial spans the deadline, and its budget waits for the worker
    deadline = run_deadline(pg_url)
    worker = popen(["worker", "--study", "smoke", *storage, *LONG], workdir)
    out = Output(worker)
    # in a trial, or (on a slow machine) already past the deadline, or gone
    out.wait_for(r"epoch 1/4|waiting: the deadline of a run")
    freeze_past([run.pid, worker.pid], deadline)
    run_text, text = run_out.finish(), out.finish()
    assert run.returncode == 0, run_text
    assert worker.returncode == 0, text
    assert REACHED.search(run_text), run_text
    assert "Traceback" not in run_text + text
    trials = counts_add_up(pg_url)
    assert all(started(t) < deadline for t in trials)
    assert study_at(pg_url).user_attrs["deadlines"] == {}
