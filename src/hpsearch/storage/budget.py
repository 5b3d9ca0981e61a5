"""How several ``hpsearch run`` commands share one study's budget.

The study's ``target_trials`` user attribute is how many trials must have finished (COMPLETE or
PRUNED) before every worker of the study, on every host, stops. ``run --trials N`` adds N to it
under the claim lock: to the current target while another ``run`` on the study is still going (so
that neither cuts the other's budget short), else to the trials finished so far (a run that was
interrupted or killed left a target that no one works for any more: a new run does not inherit
it). A run that stops before its share is done (Ctrl-C, an error, its workers died) takes back what
is left of its N, so that the runs still going do not do its work. The workers of all runs serve
the one target; each trial records the run whose worker ran it (``run_id``), so that each run
reports what it finished itself. A run with a deadline (``--timeout``) records it beside the
target (:mod:`hpsearch.storage.deadlines`) and drops it when it takes back what is left of its N.

Whether another run is going is told by a lock that each run holds, shared, for as long as it
lives: a PostgreSQL session advisory lock (on a connection of its own, in autocommit), or an
``flock`` on a file beside an SQLite file. The server or the kernel drops it when the process
dies, so a killed run never counts as going. (A PostgreSQL restart drops it too: a run started
while one lost its lock that way takes the finished count as its base.)
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from dataclasses import dataclass
from typing import Any, Protocol

import optuna
from optuna.trial import TrialState
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from hpsearch.errors import StorageError
from hpsearch.storage import optuna_private
from hpsearch.storage.claims import Lock
from hpsearch.storage.deadlines import forget_deadlines, record_deadline
from hpsearch.storage.resilience import retrying
from hpsearch.storage.state import RUN_ATTR, TARGET_ATTR, count_states, running_trials, target
from hpsearch.storage.urls import PG_CONNECT_ARGS


class RunLease(Protocol):
    def others_live(self) -> bool: ...
    def hold(self) -> None: ...
    def release(self) -> None: ...


class _NoLease:
    """In-memory storage: one process, so no other run."""

    def others_live(self) -> bool:
        return False

    def hold(self) -> None:
        pass

    def release(self) -> None:
        pass


class _FileLease:
    def __init__(self, path: str) -> None:
        self.path = path
        self.fd: int | None = None

    def _open(self) -> int:
        if self.fd is None:
            try:
                self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited
            except OSError as e:
                raise StorageError(
                    f"cannot open {self.path}: {e.strerror} (a readonly database? its lock "
                    "file is written beside it)"
                ) from None
        return self.fd

    def others_live(self) -> bool:
        fd = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        return False  # hold() turns this exclusive lock into a shared one

    def hold(self) -> None:
        fcntl.flock(self._open(), fcntl.LOCK_SH)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # drops the lock
            self.fd = None


class _PgLease:
    def __init__(self, url: Any, study_name: str) -> None:
        # its own connection, so that the workers' pool keeps all of its connections
        self.engine = create_engine(url, poolclass=NullPool, connect_args=dict(PG_CONNECT_ARGS))
        digest = hashlib.sha256(f"hpsearch-run:{study_name}".encode()).digest()
        self.key = int.from_bytes(digest[:8], "big", signed=True)
        self.conn: Any = None

    def _connection(self) -> Any:
        if self.conn is None:
            self.conn = retrying(
                lambda: self.engine.connect().execution_options(isolation_level="AUTOCOMMIT"),
                "the run lease",
            )
        return self.conn

    def others_live(self) -> bool:
        conn = self._connection()
        free = conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": self.key}).scalar()
        if free:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
        return not free

    def hold(self) -> None:
        self._connection().execute(text("SELECT pg_advisory_lock_shared(:k)"), {"k": self.key})

    def release(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()  # the server drops the session's locks
            finally:
                self.conn = None
                self.engine.dispose()


def run_lease(storage: optuna.storages.BaseStorage, study_name: str) -> RunLease:
    """The lock that tells whether another ``hpsearch run`` on this study is going."""
    backend = optuna_private.backend(storage)
    if not isinstance(backend, optuna.storages.RDBStorage):
        return _NoLease()
    url = make_url(backend.url)
    name = url.get_backend_name()
    if name == "postgresql":
        return _PgLease(url, study_name)
    if name == "sqlite" and url.database and url.database != ":memory:":
        return _FileLease(f"{url.database}.runs.lock")
    return _NoLease()


@dataclass(frozen=True)
class Share:
    """One run's part of the study's target: the trials ``base + 1`` to ``base + trials``."""

    run_id: str
    trials: int
    base: int  # the target this run added to
    finished_before: int  # finished trials in the study when it joined
    others: bool  # another run was going when it joined
    deadline: float | None = None  # no trial of it starts after this (seconds since the epoch)

    @property
    def target(self) -> int:
        return self.base + self.trials


def join(
    study: optuna.Study, trials: int, lease: RunLease, run_id: str, deadline: float | None = None
) -> Share:
    """Add ``trials`` to the study's target, record the run's ``deadline`` (if any), and hold the
    run lease. Call under the claim lock."""
    finished, _ = count_states(study)
    others = lease.others_live()
    lease.hold()
    old = target(study)
    base = max(old or 0, finished) if others else finished
    study.set_user_attr(TARGET_ATTR, base + trials)
    record_deadline(study, run_id, deadline, others)
    return Share(run_id, trials, base, finished, others, deadline)


def withdraw(study: optuna.Study, share: Share, lock: Lock) -> int:
    """Take back the part of ``share`` that no trial has finished or started for (the earlier
    shares are served first), and drop the run's deadline; returns how many trials were taken
    back. A trial running on a worker started by hand (``hpsearch worker``, no run's) counts as
    started: its worker finishes it, and the study's count then adds up to its target. (The
    trials of this run's own workers have ended by now, and another run's serve its share.)"""
    lock.acquire()
    try:
        if share.deadline is not None:
            forget_deadlines(study, [share.run_id])
        finished, _ = count_states(study)
        started = finished + sum(t.user_attrs.get(RUN_ATTR) is None for t in running_trials(study))
        goal = target(study)
        left = max(0, min(share.trials, share.target - max(started, share.base)))
        if goal is None or left == 0:
            return 0
        new = max(started, goal - left)
        if new < goal:
            study.set_user_attr(TARGET_ATTR, new)
        return goal - new
    finally:
        lock.release()


def finished_by(study: optuna.Study, run_id: str) -> int:
    """Finished trials that the workers of run ``run_id`` ran."""
    return sum(
        t.user_attrs.get(RUN_ATTR) == run_id
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    )
