"""Storages that must already exist. The commands that only read a study, and workers, which
join a study that ``hpsearch run`` made, never create a database file or Optuna's tables: a
typo in ``--storage`` is an error, not a new empty database."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy
import sqlalchemy.exc

from hpsearch.errors import StorageError, first_line
from hpsearch.storage.secrets import mask_url
from hpsearch.storage.urls import (
    PG_CONNECT_ARGS,
    in_memory_message,
    is_in_memory_sqlite,
    parse_url,
)


def require_database(url: str) -> None:
    """An SQLite file must exist; a server database is checked by :func:`require_studies`."""
    parsed = parse_url(url)
    if parsed.get_backend_name() != "sqlite":
        return
    db = parsed.database
    if not db or db == ":memory:" or is_in_memory_sqlite(db, parsed.query):
        raise StorageError(in_memory_message(mask_url(url)))
    path = Path(db).expanduser()
    if not db.startswith("file:") and not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise StorageError(
            f"no database at {mask_url(url)} ({path.resolve()} {what}; run hpsearch run "
            "first, or pass --storage URL)"
        )


def require_studies(url: str) -> None:
    """The database must exist and hold Optuna's tables (checked without creating them)."""
    require_database(url)
    shown = mask_url(url)
    parsed = parse_url(url)
    kwargs: dict[str, Any] = {}
    if parsed.get_backend_name() == "postgresql":
        if parsed.drivername == "postgresql":  # as open_storage does: psycopg 3
            parsed = parsed.set(drivername="postgresql+psycopg")
        kwargs["connect_args"] = dict(PG_CONNECT_ARGS)
    try:
        engine = sqlalchemy.create_engine(parsed, **kwargs)
        try:
            tables = sqlalchemy.inspect(engine).has_table("studies")
        finally:
            engine.dispose()
    except (sqlalchemy.exc.SQLAlchemyError, ImportError) as e:
        reason = first_line(getattr(e, "orig", None) or e)
        raise StorageError(f"cannot open storage {shown}: {reason}") from None
    if not tables:
        raise StorageError(
            f"no studies in {shown}: the database has no Optuna tables (run hpsearch run "
            "first, or pass the --storage URL it used)"
        )
