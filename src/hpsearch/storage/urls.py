"""Storage URLs: which database a command uses, opening it, and never showing its password.

``--storage``, else ``$HPSEARCH_STORAGE``, else an SQLite file in the working directory; the
checkpoints beside it; every URL a command prints or records goes through :func:`mask_url`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
import sqlalchemy.exc
from sqlalchemy.engine import make_url

from hpsearch.errors import ConfigError, StorageError, first_line
from hpsearch.files import what_is
from hpsearch.storage.heartbeat import STALE_AFTER
from hpsearch.storage.resilience import ResilientRDBStorage
from hpsearch.storage.secrets import mask_url

DEFAULT_STORAGE = "sqlite:///hpsearch.db"
SCHEMES = ("sqlite", "postgresql", "mysql")


# Every PostgreSQL connection hpsearch opens: a bounded wait for the server, and text as UTF-8
# whatever the database's encoding (in an SQL_ASCII database the driver otherwise returns bytes,
# and SQLAlchemy's first query, of the server's version, failed with a TypeError traceback).
PG_CONNECT_ARGS: dict[str, Any] = {"connect_timeout": 10, "client_encoding": "utf8"}


def storage_url(cli_value: str | None) -> str:
    """``--storage``, else ``$HPSEARCH_STORAGE``, else an SQLite file in the working directory."""
    return cli_value or os.environ.get("HPSEARCH_STORAGE") or DEFAULT_STORAGE


def artifacts_dir(url: str, cli_value: str | None = None) -> Path:
    """Where checkpoints (Optuna artifacts) live: ``--artifacts``, else ``$HPSEARCH_ARTIFACTS``,
    else beside an SQLite file (``hpsearch.db`` -> ``hpsearch-artifacts/``), else
    ``./hpsearch-artifacts`` (PostgreSQL: give every host the same shared directory)."""
    chosen = cli_value or os.environ.get("HPSEARCH_ARTIFACTS")
    if chosen:
        path = Path(chosen).expanduser().resolve()
        if path.exists() and not path.is_dir():  # a search would keep no checkpoint at all
            flag = "--artifacts" if cli_value else "HPSEARCH_ARTIFACTS"
            raise ConfigError(f"{flag}: {chosen} {what_is(path, 'a directory')}")
        return path
    try:
        parsed = make_url(url)
    except (sqlalchemy.exc.ArgumentError, ValueError):
        parsed = None
    if parsed is not None and parsed.get_backend_name() == "sqlite":
        db = parsed.database
        if db and db != ":memory:" and not db.startswith("file:"):
            path = Path(db).expanduser().resolve()
            return path.with_name(f"{path.stem}-artifacts")
    return Path("hpsearch-artifacts").resolve()


def parse_url(url: str) -> sqlalchemy.engine.URL:
    """``url`` parsed; a URL SQLAlchemy cannot read (no scheme, a port that is not a number, an
    unclosed ``[``) is a StorageError, said in one line with the credentials masked."""
    try:
        return make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise StorageError(
            f"storage URL {mask_url(url)} is not a database URL (e.g. {DEFAULT_STORAGE})"
        ) from None
    except ValueError:  # SQLAlchemy reads the port with int()
        raise StorageError(
            f"storage URL {mask_url(url)}: cannot read its host and port (a port is a number, "
            "an IPv6 address is written [::1]; e.g. postgresql://user@127.0.0.1:5432/hpsearch)"
        ) from None


def open_storage(url: str, heartbeat: int | None = None) -> optuna.storages.RDBStorage:
    """An RDB storage for ``url``; a bad URL or an unreachable database is a StorageError.

    With ``heartbeat`` (seconds), a running trial writes a heartbeat that often; one silent for
    three intervals is marked failed and retried (up to twice) by the next worker that claims.
    """
    shown = mask_url(url)
    url, engine_kwargs = _engine_args(url)
    try:
        beat: dict[str, Any] = {}
        if heartbeat:
            beat = {
                "heartbeat_interval": heartbeat,
                "grace_period": STALE_AFTER * heartbeat,
                "heartbeat_stale_trial_callback": optuna.storages.RetryHeartbeatStaleTrialCallback(
                    max_retry=2
                ),
            }
        return _create_storage(url, engine_kwargs, beat)
    except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError, RuntimeError) as e:
        raise StorageError(f"cannot open storage {shown}: {_reason(e, url, shown)}") from None


def check_storage(url: str) -> None:
    """Find what :func:`open_storage` would refuse in ``url`` without writing anything, so that
    a mistyped or unreachable storage is reported before the slow work that precedes opening
    it (the GPU probe, the data decode): a URL that is no database URL or of an unknown scheme,
    an in-memory SQLite database, an SQLite file in a directory that does not exist or cannot be
    written, a file that is not a database, a server that does not answer or has no such
    database. Nothing is created: a new SQLite file is made by open_storage, later."""
    shown = mask_url(url)
    url, engine_kwargs = _engine_args(url)
    parsed = parse_url(url)
    db = parsed.database or ""
    if parsed.get_backend_name() == "sqlite" and not db.startswith("file:"):
        path = Path(db).expanduser()
        if not path.exists():
            folder = path.parent.resolve()
            if not folder.is_dir():
                why = f"{folder} {'is not a directory' if folder.exists() else 'does not exist'}"
            elif not os.access(folder, os.W_OK | os.X_OK):
                why = f"cannot create a file in {folder}"
            else:
                return  # a new database, made where it can be
            raise StorageError(f"cannot open storage {shown}: {why}")
    try:
        engine = sqlalchemy.create_engine(url, **engine_kwargs)
        try:
            sqlalchemy.inspect(engine).has_table("studies")  # reads; creates nothing
        finally:
            engine.dispose()
    except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError, RuntimeError) as e:
        raise StorageError(f"cannot open storage {shown}: {_reason(e, url, shown)}") from None


def _engine_args(url: str) -> tuple[str, dict[str, Any]]:
    """The URL to connect to (PostgreSQL through psycopg 3) and SQLAlchemy's engine options;
    a URL that open_storage would refuse before connecting is a StorageError."""
    shown = mask_url(url)
    parsed = parse_url(url)
    scheme = parsed.get_backend_name()
    if scheme not in SCHEMES:
        raise StorageError(
            f"storage URL {shown}: unknown scheme {scheme!r} (use sqlite or postgresql)"
        )
    engine_kwargs: dict[str, Any] = {}
    if scheme == "sqlite" and is_in_memory_sqlite(parsed.database, parsed.query):
        # Every connection (and so the heartbeat thread, and every worker) would get its own
        # empty database, and nothing would be kept when the command ends.
        raise StorageError(in_memory_message(url))
    if scheme == "sqlite":
        engine_kwargs["connect_args"] = {"timeout": 30}  # seconds to wait on a locked file
    elif scheme == "postgresql":
        if parsed.drivername == "postgresql":  # as users write it: use psycopg 3
            url = parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
        engine_kwargs.update(
            pool_pre_ping=True, pool_size=2, max_overflow=2, connect_args=dict(PG_CONNECT_ARGS)
        )
    return url, engine_kwargs


def _reason(e: BaseException, url: str, shown: str) -> str:
    """The first line of what the driver said, the URL in it masked."""
    return first_line(getattr(e, "orig", None) or e).replace(url, shown)


def _create_storage(
    url: str, engine_kwargs: dict[str, Any], beat: dict[str, Any]
) -> ResilientRDBStorage:
    """The storage; a schema that another process is creating at the same moment (two commands
    started together on a new database) is waited for rather than reported."""
    for attempt in range(10):
        try:
            return ResilientRDBStorage(url, engine_kwargs=dict(engine_kwargs), **beat)
        except sqlalchemy.exc.SQLAlchemyError as e:
            racing = isinstance(e, sqlalchemy.exc.IntegrityError) or "already exists" in str(e)
            if not racing or attempt == 9:
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def in_memory_message(shown: str) -> str:
    return (
        f"storage URL {shown} is an in-memory SQLite database: nothing would be kept and "
        f"workers could not share it; use a file, e.g. {DEFAULT_STORAGE}"
    )


def is_in_memory_sqlite(database: str | None, query: Mapping[str, Any]) -> bool:
    """``sqlite://``, ``sqlite:///:memory:`` and URI forms such as ``file::memory:`` or
    ``mode=memory``."""
    if not database or database == ":memory:":
        return True
    mode = query.get("mode")
    return database.startswith("file:") and (":memory:" in database or mode == "memory")
