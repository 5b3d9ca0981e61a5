"""Running trials against an exact budget, from one process or many on many hosts.

The study keeps its target (``target_trials``: how many trials must finish, COMPLETE or PRUNED)
as a user attribute, so every worker on every host sees it. A worker claims a trial under a lock
that spans the count and Optuna's ``ask`` (a PostgreSQL advisory lock, or a file lock beside an
SQLite file), so the budget is never overshot (Optuna's MaxTrialsCallback overshoots by up to one
trial per worker, optuna#3518). A worker that finds the budget covered by running trials waits
instead of leaving: if one of those dies, its heartbeat goes stale, it is marked failed, retried,
and the waiting worker runs the retry.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import optuna
import sqlalchemy.exc
from filelock import FileLock
from optuna.trial import TrialState
from sqlalchemy import text
from sqlalchemy.engine import make_url

from hpsearch.errors import StorageError
from hpsearch.resilience import ResilientRDBStorage, is_disconnect, retrying

TARGET_ATTR = "target_trials"
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)


class Lock(Protocol):
    def acquire(self) -> object: ...
    def release(self) -> None: ...


class PgAdvisoryLock:
    """A PostgreSQL session advisory lock: released by the server if the worker dies."""

    def __init__(self, storage: optuna.storages.RDBStorage, name: str) -> None:
        self.engine = storage.engine
        digest = hashlib.sha256(f"hpsearch-claim:{name}".encode()).digest()
        self.key = int.from_bytes(digest[:8], "big", signed=True)
        self.conn: Any = None

    def acquire(self) -> object:
        def take() -> None:
            conn = self.engine.connect()
            try:
                conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": self.key})
            except BaseException:
                conn.close()
                raise
            self.conn = conn

        retrying(take, "the claim lock")
        return self

    def release(self) -> None:
        if self.conn is not None:
            try:
                self.conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
            except sqlalchemy.exc.DBAPIError as e:
                if not is_disconnect(e):
                    raise  # a dropped session has released its advisory locks already
            finally:
                self.conn.close()
                self.conn = None


def claim_lock(storage: optuna.storages.BaseStorage, study_name: str) -> Lock:
    """The lock that makes "count, then ask" atomic across workers of this storage."""
    storage = getattr(storage, "_backend", storage)  # a study wraps RDBStorage in a cache layer
    if isinstance(storage, optuna.storages.InMemoryStorage):
        return threading.Lock()  # one process
    if not isinstance(storage, optuna.storages.RDBStorage):
        raise StorageError(f"{type(storage).__name__} is not supported for an exact budget")
    url = make_url(storage.url)
    backend = url.get_backend_name()
    if backend == "postgresql":
        return PgAdvisoryLock(storage, study_name)
    if backend == "sqlite" and url.database and url.database != ":memory:":
        return FileLock(f"{url.database}.claims.lock")
    if backend == "sqlite":
        return threading.Lock()
    raise StorageError(f"{backend} storage is not supported for an exact budget; use postgresql")


def target(study: optuna.Study) -> int | None:
    value = study.user_attrs.get(TARGET_ATTR)
    return int(value) if value is not None else None


def finished_count(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def fresh_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """All trials as the database has them now, bypassing Optuna's in-process trial cache."""
    backend = getattr(study._storage, "_backend", study._storage)
    trials: list[optuna.trial.FrozenTrial] = backend.get_all_trials(study._study_id, deepcopy=False)
    return trials


def count_states(study: optuna.Study) -> tuple[int, int]:
    """(finished, running) trials, counted by the database in one query."""
    storage = study._storage
    backend = getattr(storage, "_backend", storage)  # Optuna wraps RDBStorage in a cache
    if not isinstance(backend, optuna.storages.RDBStorage):
        trials = study.get_trials(deepcopy=False, states=COUNTED)
        running = sum(t.state == TrialState.RUNNING for t in trials)
        return len(trials) - running, running

    def count() -> list[Any]:
        with backend.engine.connect() as conn:
            return list(
                conn.execute(
                    text("SELECT state, COUNT(*) FROM trials WHERE study_id = :s GROUP BY state"),
                    {"s": study._study_id},
                ).all()
            )

    rows = retrying(count, "counting trials")
    by_state = {str(state).rsplit(".", 1)[-1]: int(n) for state, n in rows}
    return by_state.get("COMPLETE", 0) + by_state.get("PRUNED", 0), by_state.get("RUNNING", 0)


GridCheck = Callable[[optuna.Study], str]  # "open" | "wait" | "exhausted"


def run_until_budget(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float],
    lock: Lock,
    *,
    callbacks: Sequence[Callable[[optuna.Study, optuna.trial.FrozenTrial], None]] = (),
    catch: tuple[type[Exception], ...] = (),
    poll_seconds: float = 5.0,
    grid_check: GridCheck | None = None,
) -> str:
    """Run trials until the study's target of finished trials is reached.

    Returns why it stopped: ``"budget"`` or ``"grid exhausted"``.
    """
    while True:
        lock.acquire()
        held = True
        try:
            goal = target(study)
            if goal is None:
                raise StorageError(
                    f"study {study.study_name!r} has no trial budget; start it with hpsearch run"
                )
            optuna.storages.fail_stale_trials(study)  # a no-op without heartbeats
            finished, running = count_states(study)
            if finished >= goal:
                return "budget"
            grid = grid_check(study) if grid_check is not None else "open"
            if grid == "exhausted":
                return "grid exhausted"
            if finished + running < goal and grid == "open":

                def release() -> None:
                    nonlocal held
                    if held:
                        lock.release()  # the trial is RUNNING now: it counts, others may claim
                        held = False

                def claimed(trial: optuna.Trial) -> float:
                    release()
                    return objective(trial)

                # Release as soon as the new trial is committed, before its parameters are
                # sampled (a WAITING trial Optuna pops instead is released in ``claimed``).
                # Not with a grid: the grid check must see the running trials' points.
                backend = getattr(study._storage, "_backend", study._storage)
                hooked = backend if isinstance(backend, ResilientRDBStorage) else None
                if grid_check is not None:
                    hooked = None
                if hooked is not None:
                    hooked.on_trial_created = release
                try:
                    study.optimize(claimed, n_trials=1, callbacks=list(callbacks), catch=catch)
                finally:
                    if hooked is not None:
                        hooked.on_trial_created = None
                continue
        finally:
            if held:
                lock.release()
        time.sleep(poll_seconds)  # running trials cover the budget (or the grid): wait on them
