"""Claims: who may take the next piece of a study's work, decided under one lock.

Every worker of a study, on every host, claims under the study's claim lock: a PostgreSQL session
advisory lock (the server releases it if the worker dies), or a file lock beside an SQLite file.
Two kinds of work are claimed with it:

- trials (:func:`hpsearch.search.workers.run_until_budget`): under the lock a worker counts the
  finished and running trials and asks Optuna for a new one only while the budget has room, so
  the budget is never overshot;
- keyed jobs (``hpsearch confirm``'s runs): under the lock a worker takes the first key that is
  neither done nor claimed and records itself as its owner in a study attribute
  (:func:`claim_key`), and drops the claim when the job is recorded (:func:`release_key`).
"""

from __future__ import annotations

import hashlib
import os
import platform
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

import optuna
import sqlalchemy.exc
from filelock import FileLock
from sqlalchemy import text
from sqlalchemy.engine import make_url

from hpsearch.errors import StorageError
from hpsearch.storage import optuna_private
from hpsearch.storage.resilience import is_disconnect, retrying


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


class _ClaimFile:
    """The file lock beside an SQLite file; a lock file that cannot be made (a read-only
    directory or file system) is one line naming the database, not a traceback."""

    def __init__(self, path: str, db_url: str) -> None:
        self.lock = FileLock(path)
        self.db_url = db_url

    def acquire(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return self.lock.acquire(*args, **kwargs)
        except OSError as e:
            import errno

            from hpsearch.storage.secrets import mask_url

            shown = mask_url(self.db_url)
            why = f"cannot make its lock file {self.lock.lock_file}: {e.strerror or e}"
            if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):  # the lock lives beside it
                raise StorageError(
                    f"database {shown} is read-only ({why}): hpsearch records trials in it; "
                    "is the file or its directory read-only?"
                ) from None
            raise StorageError(f"database {shown}: {why}") from None

    def release(self, *args: Any, **kwargs: Any) -> None:
        self.lock.release(*args, **kwargs)

    @property
    def is_locked(self) -> bool:
        return bool(self.lock.is_locked)

    def __enter__(self) -> _ClaimFile:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def claim_lock(storage: optuna.storages.BaseStorage, study_name: str) -> Lock:
    """The lock that makes "count, then ask" atomic across workers of this storage."""
    storage = optuna_private.backend(storage)  # a study wraps RDBStorage in a cache layer
    if isinstance(storage, optuna.storages.InMemoryStorage):
        return threading.Lock()  # one process
    if not isinstance(storage, optuna.storages.RDBStorage):
        raise StorageError(f"{type(storage).__name__} is not supported for an exact budget")
    url = make_url(storage.url)
    backend = url.get_backend_name()
    if backend == "postgresql":
        return PgAdvisoryLock(storage, study_name)
    if backend == "sqlite" and url.database and url.database != ":memory:":
        return _ClaimFile(f"{url.database}.claims.lock", storage.url)
    if backend == "sqlite":
        return threading.Lock()
    raise StorageError(f"{backend} storage is not supported for an exact budget; use postgresql")


@contextmanager
def held(lock: Lock) -> Iterator[None]:
    """``with held(lock):`` the claim lock for the block."""
    lock.acquire()
    try:
        yield
    finally:
        lock.release()


def owner() -> str:
    """Who claims: ``host:pid``."""
    return f"{platform.node()}:{os.getpid()}"


def claims_of(study: optuna.Study, attr: str) -> dict[str, str]:
    """The keyed claims recorded in the study attribute ``attr``, read from the database (not
    from the study object's cache: other workers write them)."""
    storage = optuna_private.storage_of(study)
    claims = storage.get_study_user_attrs(optuna_private.study_id(study)).get(attr)
    return dict(claims) if isinstance(claims, dict) else {}


def claim_key(
    study: optuna.Study, attr: str, lock: Lock, todo: Callable[[], Sequence[str]]
) -> str | None:
    """Under the lock, the first key of ``todo()`` (the work not done yet, computed under the
    lock) that nobody claims, recorded as this process's; None when every key is taken."""
    with held(lock):
        claims = claims_of(study, attr)
        for key in todo():
            if key not in claims:
                claims[key] = owner()
                study.set_user_attr(attr, claims)
                return key
        return None


def release_key(study: optuna.Study, attr: str, key: str, lock: Lock) -> None:
    """Drop the claim on ``key`` (its work is recorded, or given up)."""
    with held(lock):
        claims = claims_of(study, attr)
        if claims.pop(key, None) is not None:
            study.set_user_attr(attr, claims)


def clear_claims(study: optuna.Study, attr: str) -> None:
    """Forget every keyed claim in ``attr`` (their workers are gone)."""
    study.set_user_attr(attr, {})
