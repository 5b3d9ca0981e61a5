"""The claim loop against a real SQLite file and a real PostgreSQL server, in this process: when
the claim lock is released, orphan RUNNING trials, and how runs add up their budgets."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial, TrialState, create_trial
from sqlalchemy import text

from hpsearch.search import workers
from hpsearch.search.workers import run_until_budget
from hpsearch.storage.budget import join, run_lease, withdraw
from hpsearch.storage.claims import claim_lock
from hpsearch.storage.resilience import ResilientRDBStorage
from hpsearch.storage.state import TARGET_ATTR, target
from hpsearch.storage.urls import open_storage

X = {"x": FloatDistribution(0, 1)}


def objective(trial: optuna.Trial) -> float:
    return trial.suggest_float("x", 0, 1)


def done(value: float = 0.5) -> FrozenTrial:
    return create_trial(value=value, params={"x": value}, distributions=X)


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'claims.db'}"
    else:
        yield request.getfixturevalue("pg_url")


def new_study(url: str, name: str = "s") -> tuple[ResilientRDBStorage, optuna.Study]:
    storage = open_storage(url, heartbeat=1)  # stale after 3 s
    assert isinstance(storage, ResilientRDBStorage)
    return storage, optuna.create_study(storage=storage, study_name=name, direction="maximize")


def finished(study: optuna.Study) -> int:
    return len(study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED)))


def test_the_claim_hook_fires_for_the_trial_ask_makes_not_for_an_added_one(tmp_path: Path) -> None:
    storage, study = new_study(f"sqlite:///{tmp_path / 'h.db'}")
    fired: list[int] = []
    storage.on_trial_created = lambda: fired.append(len(study.trials))
    study.add_trial(done())  # from a template, as the stale-trial retry adds its copy
    assert fired == []
    study.ask()
    assert fired == [2]  # after this worker's own trial was committed


class StartsOtherWorkers:
    """The claim lock, which starts other workers on the same storage the first time it is
    released, one after the other, each once the one before has made its claim decision."""

    def __init__(self, others: list[optuna.Study]) -> None:
        self.inner = threading.Lock()
        self.others = others
        self.threads: dict[threading.Thread, threading.Event] = {}

    def acquire(self) -> object:
        self.inner.acquire()
        return self

    def release(self) -> None:
        self.inner.release()
        me = threading.current_thread()
        if me in self.threads:
            self.threads[me].set()  # this worker has claimed a trial, or decided to wait
        elif not self.threads:
            for study in self.others:
                t = threading.Thread(
                    target=run_until_budget,
                    args=(study, objective, self),
                    kwargs={"poll_seconds": 0.2},
                )
                self.threads[t] = threading.Event()
                t.start()
                assert self.threads[t].wait(60)


def test_a_stale_trial_retried_inside_optimize_does_not_release_the_claim_early(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Optuna fails stale trials itself at the start of each trial and adds their retry (from a
    template) before asking for the trial it runs. Released there, the claim let the other
    workers count before this worker's trial existed: one trial too many."""
    url = f"sqlite:///{tmp_path / 'stale.db'}"
    storage, study = new_study(url)
    dead = study.ask(X)  # the trial of a worker that died: its heartbeat stopped long ago
    storage.record_heartbeat(dead._trial_id)
    with storage.engine.begin() as conn:
        conn.execute(text("UPDATE trial_heartbeats SET heartbeat = '2000-01-01 00:00:00.000000'"))
    study.set_user_attr(TARGET_ATTR, 2)
    # It goes stale just after this worker's own check under the lock (which counts it as
    # running), so that Optuna's check inside optimize is the one that finds it.
    monkeypatch.setattr(workers, "fail_stale", lambda study: [])
    others = [
        optuna.load_study(study_name="s", storage=open_storage(url, heartbeat=1)) for _ in range(2)
    ]
    lock = StartsOtherWorkers(others)
    assert run_until_budget(study, objective, lock, poll_seconds=0.2) == "budget"
    for t in lock.threads:
        t.join(60)
    assert study.trials[dead.number].state == TrialState.FAIL
    assert finished(study) == 2  # the budget, not one more


def test_an_orphan_running_trial_is_failed_and_retried_not_waited_on_forever(url: str) -> None:
    storage, study = new_study(url)
    study.add_trial(done())
    # A trial that no heartbeat thread will ever beat for, as ``optuna ask`` leaves one.
    plain = optuna.load_study(study_name="s", storage=optuna.storages.RDBStorage(storage.url))
    orphan = plain.ask()
    study.set_user_attr(TARGET_ATTR, 2)
    waits: list[tuple[list[int], set[int]]] = []
    result: list[str] = []

    def work() -> None:
        result.append(
            run_until_budget(
                study,
                objective,
                claim_lock(study._storage, "s"),
                poll_seconds=0.2,
                on_wait=lambda running, orphans: waits.append(
                    ([t.number for t in running], set(orphans))
                ),
            )
        )

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    worker.join(90)
    assert not worker.is_alive(), "the worker still waits on the orphan"
    assert result == ["budget"]
    assert waits[0] == ([orphan.number], {orphan.number})  # it said what it waited for
    trials = study.get_trials()
    assert trials[orphan.number].state == TrialState.FAIL
    assert finished(study) == 2 and TrialState.RUNNING not in {t.state for t in trials}
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == orphan.number]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE


def test_a_live_trial_is_not_taken_for_an_orphan(url: str) -> None:
    """A trial whose worker beats is never failed, although a waiting worker checks it."""
    storage, study = new_study(url)
    live = study.ask(X)
    storage.record_heartbeat(live._trial_id)
    assert workers.fail_stale(study) == []
    assert study.trials[live.number].state == TrialState.RUNNING


def test_runs_add_up_while_one_is_going_and_a_gone_one_leaves_nothing(url: str) -> None:
    storage, study = new_study(url)
    study.add_trial(done())
    a = run_lease(storage, "s")
    b = run_lease(storage, "s")
    share_a = join(study, 4, a, "a")
    assert (share_a.others, target(study)) == (False, 5)
    share_b = join(study, 1, b, "b")  # while run a is going: its 4 stay in the target
    assert (share_b.others, share_b.base, target(study)) == (True, 5, 6)
    lock = claim_lock(study._storage, "s")
    # Run a stops (Ctrl-C) with one trial finished since it joined: its other 3 are taken
    # back, run b's one is left.
    study.add_trial(done())
    assert withdraw(study, share_a, lock) == 3
    assert target(study) == 3
    a.release()
    b.release()  # run b was killed: a later run does not inherit its unfinished trial
    c = run_lease(storage, "s")
    share_c = join(study, 2, c, "c")
    assert (share_c.others, target(study)) == (False, 4)  # 2 finished + 2
    c.release()


def test_withdraw_leaves_a_finished_share_alone(tmp_path: Path) -> None:
    storage, study = new_study(f"sqlite:///{tmp_path / 'w.db'}")
    lease = run_lease(storage, "s")
    share = join(study, 2, lease, "a")
    for _ in range(2):
        study.add_trial(done())
    assert withdraw(study, share, claim_lock(study._storage, "s")) == 0
    assert target(study) == 2
    lease.release()


class SlowToSample(optuna.samplers.RandomSampler):
    """Takes ``seconds`` over the first trial's joint sampling (TPE or GP on a long study can
    take seconds), longer than the grace period after which a silent trial is failed."""

    def __init__(self, seconds: float) -> None:
        super().__init__(seed=0)
        self.seconds = seconds

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, optuna.distributions.BaseDistribution]:
        seconds, self.seconds = self.seconds, 0.0
        time.sleep(seconds)
        return {}


def test_a_new_trial_still_sampling_is_not_taken_for_an_orphan(tmp_path: Path) -> None:
    """The claim is released before sampling, so other workers look at the new trial while it
    samples. Optuna samples lazily, at the first ``suggest`` inside the objective, once the
    trial's heartbeat thread is beating: the window with no heartbeat is ``ask`` alone."""
    url = f"sqlite:///{tmp_path / 'slow.db'}"
    storage, _ = new_study(url)
    study = optuna.load_study(study_name="s", storage=storage, sampler=SlowToSample(5.0))
    study.set_user_attr(TARGET_ATTR, 1)
    other = optuna.load_study(study_name="s", storage=open_storage(url, heartbeat=1))
    stop = threading.Event()

    def another_worker_checks() -> None:  # as a worker that claims or waits meanwhile does
        while not stop.is_set():
            workers.fail_stale(other)
            stop.wait(0.3)

    checker = threading.Thread(target=another_worker_checks)
    checker.start()
    try:
        lock = claim_lock(study._storage, "s")
        assert run_until_budget(study, objective, lock, poll_seconds=0.2) == "budget"
    finally:
        stop.set()
        checker.join(30)
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE]


def test_a_joining_worker_reads_no_finished_trial_before_its_first(pg_url: str) -> None:
    """A worker that joins a big study claims its first trial without loading the study's
    finished trials (the waiting trials are read from the database, not through Optuna's cache,
    whose first read loads them all: seconds on 10,000 trials); a sampler that needs them reads
    them itself. (On PostgreSQL, whose driver counts the rows a SELECT returns.)"""
    import sqlalchemy as sa

    _, made = new_study(pg_url)
    made.add_trials([done() for _ in range(40)])
    made.set_user_attr(TARGET_ATTR, 41)
    storage = open_storage(pg_url, heartbeat=1)
    study = optuna.load_study(
        study_name="s", storage=storage, sampler=optuna.samplers.RandomSampler()
    )
    rows: list[int] = []

    def count(conn: object, cursor: object, statement: str, *args: object) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            rows.append(int(getattr(cursor, "rowcount", 0)))

    sa.event.listen(storage.engine, "after_cursor_execute", count)
    assert (
        run_until_budget(study, objective, claim_lock(storage, "s"), poll_seconds=0.1) == "budget"
    )
    sa.event.remove(storage.engine, "after_cursor_execute", count)
    assert rows and max(rows) < 40, rows
    assert finished(study) == 41


def test_a_trial_another_process_enqueued_runs_in_a_worker_that_read_the_study_before(
    url: str,
) -> None:
    """A worker that had read the study (Optuna's cache holds its trials) takes a waiting trial
    another worker enqueued since (an interrupted trial to run again): its first parameter went
    through a cache that did not know the trial, and the trial failed with a KeyError of its id
    (seen when Ctrl-C stopped a launcher's two workers and the run was resumed)."""
    _, study = new_study(url)
    study.add_trials([done()])
    assert len(study.get_trials()) == 1  # this process's cache has read the study
    other = optuna.load_study(study_name="s", storage=open_storage(url, heartbeat=1))
    other.enqueue_trial({"x": 0.25}, user_attrs={workers.RERUN_ATTR: 0})
    workers.reruns_first(study)
    trial = study.ask()
    assert trial.suggest_float("x", 0, 1) == 0.25
    study.tell(trial, 0.25)
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE] * 2
    assert study.get_trials()[1].params == {"x": 0.25}


def test_a_trial_failed_as_stale_while_it_ran_does_not_kill_the_worker(url: str) -> None:
    """Another process failed this worker's running trial as stale (its heartbeats missed: a
    frozen or overloaded machine) before the trial ended: Optuna then refused to tell it
    ("Cannot tell a FAIL trial") and the worker died with a traceback. It is told which trial,
    and goes on with the budget."""
    storage, study = new_study(url)
    study.set_user_attr(TARGET_ATTR, 2)
    other = open_storage(url, heartbeat=1)
    taken: list[int] = []

    def objective_failed_meanwhile(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0, 1)
        if trial.number == 0:  # what fail_stale_trials in another process does
            other.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
        return x

    reason = run_until_budget(
        study,
        objective_failed_meanwhile,
        claim_lock(storage, "s"),
        poll_seconds=0.1,
        on_taken=taken.append,
    )
    assert reason == "budget" and taken == [0]
    states = [t.state for t in study.get_trials()]
    assert states == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
