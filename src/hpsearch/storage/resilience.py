"""Riding out a database restart: retry storage calls whose connection dropped, with backoff.

Optuna's RDB storage runs every call in its own transaction: a call that failed because the server
went away was rolled back and can simply be made again once the server is back (``pool_pre_ping``
replaces the dead pooled connections). :class:`ResilientRDBStorage` does that for every call a
worker makes, waiting 0.5, 1, 2, 4, 8, 10, 10... seconds for up to ``RETRY_SECONDS`` in all, then
gives up with a one-line error. Errors that are not about the connection are raised at once: a
constraint or bad data as they are, and a database that refuses the work for good (read-only,
no such table, full disk) as one line naming it.

A commit that reached the server but whose reply was lost: retrying ``set_trial_state_values``
finds the trial already finished, which is treated as success; retrying ``create_new_trial`` makes a
second trial, and the first is left RUNNING with no heartbeat. Such an orphan (``optuna ask`` makes
them too) is given a heartbeat record by the next worker that claims (:meth:`adopt_orphans`), so
that it goes stale, is failed and is retried like the trial of a dead worker.
"""

from __future__ import annotations

import functools
import logging
import sqlite3
import time
from collections.abc import Callable
from typing import Any, TypeVar

import optuna
import sqlalchemy.exc

from hpsearch.errors import StorageError, first_line
from hpsearch.storage import optuna_private
from hpsearch.storage.secrets import mask_url

RETRY_SECONDS = 120.0
T = TypeVar("T")
_log = logging.getLogger("hpsearch")


def _db_error(error: BaseException | None) -> sqlalchemy.exc.DBAPIError | None:
    """The database driver's error behind ``error`` (Optuna wraps some), or None."""
    seen = 0
    while error is not None and seen < 10:
        if isinstance(error, sqlalchemy.exc.DBAPIError):
            return error
        error = error.__cause__ or error.__context__
        seen += 1
    return None


def is_disconnect(error: BaseException | None) -> bool:
    """Whether ``error`` (or what caused it) says the database connection is gone, or the
    server cannot be reached for now: the only errors worth retrying. A read-only database, a
    missing table or a full disk is just as OperationalError but will not heal by waiting."""
    db = _db_error(error)
    if db is None:
        return False
    if db.connection_invalidated:
        return True
    if not isinstance(db, sqlalchemy.exc.OperationalError | sqlalchemy.exc.InterfaceError):
        return False
    orig = db.orig
    if isinstance(orig, sqlite3.Error):
        # A local file has no connection to lose; "database is locked" (other writers beyond
        # the 30 s busy timeout) is the one SQLite error that clears by itself.
        return "locked" in str(orig)
    state = getattr(orig, "sqlstate", None)
    # No SQLSTATE: the client could not reach the server or lost it (psycopg, and drivers that
    # do not say). Class 08 is "connection exception"; 57P01-57P03: shut down, starting up.
    return state is None or str(state).startswith("08") or state in ("57P01", "57P02", "57P03")


def permanent_error(error: BaseException, what: str, url: str) -> StorageError | None:
    """A one-line StorageError for a database error that retrying will not cure, e.g. "attempt
    to write a readonly database"; None for anything else (a bug keeps its traceback)."""
    db = _db_error(error)
    if not isinstance(db, sqlalchemy.exc.OperationalError):
        return None
    reason = first_line(db.orig or db)
    shown = mask_url(url)
    if "readonly" in reason:  # whichever write came first, the cure is the same
        return StorageError(
            f"database {shown} is read-only ({reason}): hpsearch records trials in it; "
            "is the file or its directory read-only?"
        )
    return StorageError(f"database {shown} failed during {what}: {reason}")


def retrying(
    call: Callable[[], T],
    what: str,
    budget: float = RETRY_SECONDS,
    sleep: float = 0.5,
    url: str | None = None,
) -> T:
    """``call()``, retried with backoff while it fails for a dropped connection. With ``url``
    (the storage's), an error that waiting will not cure is one line naming the database."""
    deadline = time.monotonic() + budget
    attempt = 0
    while True:
        try:
            return call()
        except Exception as e:
            if not is_disconnect(e):
                permanent = None if url is None else permanent_error(e, what, url)
                if permanent is not None:
                    raise permanent from None
                raise
            if time.monotonic() + sleep > deadline:
                raise StorageError(
                    f"the database stayed unreachable for {budget:.0f}s during {what}"
                ) from None
            attempt += 1
            if attempt == 1:
                _log.warning("database connection lost during %s; retrying", what)
            time.sleep(sleep)
            sleep = min(sleep * 2, 10.0)


_RETRIED = (
    "create_new_study",
    "get_study_id_from_name",
    "get_study_name_from_id",
    "get_study_directions",
    "get_study_user_attrs",
    "get_study_system_attrs",
    "set_study_user_attr",
    "set_study_system_attr",
    "get_all_studies",
    "set_trial_param",
    "get_trial_param",
    "set_trial_intermediate_value",
    "set_trial_user_attr",
    "set_trial_system_attr",
    "get_trial_user_attrs",
    "get_trial_system_attrs",
    "get_trial_id_from_study_id_trial_number",
    "get_trial",
    "get_all_trials",
    "get_n_trials",
    "get_best_trial",
    "record_heartbeat",
    # Optuna's cache layer (the storage a study really talks to) calls private methods of the
    # RDB storage instead of the public ones above (named in hpsearch.storage.optuna_private).
    *optuna_private.RDB_PRIVATE_METHODS,
)


class ResilientRDBStorage(optuna.storages.RDBStorage):
    """An RDBStorage whose calls survive a database restart (see the module docstring).

    ``on_trial_created``, when set, is called once, right after this process's next new trial is
    committed by ``ask`` (not for trials added from a template): the worker loop uses it to
    release its claim lock before Optuna samples the trial's parameters, so that sampling (TPE
    reads every trial) runs outside the lock.
    """

    on_trial_created: Callable[[], None] | None = None

    def create_trial_retrying(
        self, study_id: int, template_trial: optuna.trial.FrozenTrial | None = None
    ) -> optuna.trial.FrozenTrial:
        """How this storage creates every trial: both ``create_new_trial`` and Optuna's cache
        layer create trials through the RDB storage's private method that this replaces."""
        trial: optuna.trial.FrozenTrial = retrying(
            lambda: optuna_private.rdb_create_new_trial(self, study_id, template_trial),
            "create_new_trial",
            url=self.url,
        )
        # Only a trial made from nothing is the one ``ask`` wanted: a template is a copy that
        # Optuna adds on the way (the stale-trial retry, an enqueued trial), and releasing
        # the claim lock for it would let another worker claim before this one's trial exists.
        if template_trial is None:
            hook, self.on_trial_created = self.on_trial_created, None
            if hook is not None:
                hook()
        return trial

    def adopt_orphans(self, study_id: int) -> list[int]:
        """Give each RUNNING trial of the study that has no heartbeat record one, dated by the
        database's clock, and return their numbers.

        Optuna never marks such a trial stale (one made by ``optuna ask``, or by a worker whose
        ``create_new_trial`` reply was lost), so it would count against the budget forever.
        Adopted, it goes stale like any silent trial: ``grace_period`` seconds after the first
        worker saw it, unless its real owner starts beating (which overwrites the record).
        """
        if self.heartbeat_interval is None:
            return []

        def adopt() -> list[int]:
            return optuna_private.add_missing_heartbeats(self, study_id)

        return retrying(adopt, "checking running trials")

    def set_trial_state_values(
        self,
        trial_id: int,
        state: optuna.trial.TrialState,
        values: Any = None,
    ) -> bool:
        first = True

        def call() -> bool:
            nonlocal first
            try:
                return super(ResilientRDBStorage, self).set_trial_state_values(
                    trial_id, state, values
                )
            except optuna.exceptions.UpdateFinishedTrialError:
                if first:
                    raise
                # A retry after a lost reply: the first attempt did commit.
                return self.get_trial(trial_id).state == state
            finally:
                first = False

        return retrying(call, "set_trial_state_values", url=self.url)


def _wrap(name: str) -> None:
    method = getattr(optuna.storages.RDBStorage, name)

    @functools.wraps(method)
    def wrapper(self: ResilientRDBStorage, *args: Any, **kwargs: Any) -> Any:
        return retrying(lambda: method(self, *args, **kwargs), name, url=self.url)

    setattr(ResilientRDBStorage, name, wrapper)


_missing = [n for n in _RETRIED if not callable(getattr(optuna.storages.RDBStorage, n, None))]
if _missing:  # a renamed method would silently lose its retries
    raise ImportError(
        f"optuna.storages.RDBStorage of Optuna {optuna.__version__} has no "
        f"{', '.join(_missing)}, which hpsearch retries; install the Optuna version "
        "pyproject.toml allows"
    )
for _name in _RETRIED:
    _wrap(_name)
optuna_private.override_create_new_trial(
    ResilientRDBStorage, ResilientRDBStorage.create_trial_retrying
)


def _get_trials_retrying(
    self: ResilientRDBStorage,
    study_id: int,
    states: Any,
    included_trial_ids: set[int],
    trial_id_greater_than: int,
) -> list[optuna.trial.FrozenTrial]:
    """How this storage reads trials in bulk (``get_all_trials`` and Optuna's cache layer):
    the same trials as RDBStorage's own, read without the ORM (see
    :func:`hpsearch.storage.optuna_private.rdb_get_trials`), retried like every call."""
    return retrying(
        lambda: optuna_private.rdb_get_trials(
            self, study_id, states, included_trial_ids, trial_id_greater_than
        ),
        "reading trials",
        url=self.url,
    )


def _get_trial_retrying(self: ResilientRDBStorage, trial_id: int) -> optuna.trial.FrozenTrial:
    """``get_trial`` read without the ORM as well (a worker reads its trial three times a
    trial: when it is asked, told, and handed to the callbacks)."""
    return retrying(lambda: optuna_private.rdb_get_trial(self, trial_id), "get_trial", url=self.url)


optuna_private.override_get_trials(ResilientRDBStorage, _get_trials_retrying)
ResilientRDBStorage.get_trial = _get_trial_retrying  # type: ignore[method-assign,assignment]
