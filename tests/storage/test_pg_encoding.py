"""A PostgreSQL database whose encoding is SQL_ASCII (old servers, and clusters made by an
``initdb`` without a locale): the driver returns bytes for text there unless the connection asks
for UTF-8, and SQLAlchemy's first query, of the server's version, then failed with a TypeError
traceback in every command. (The real PostgreSQL server; a database made for each test.)"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest

from conftest import PG_ADMIN, hpsearch
from hpsearch.storage.urls import open_storage


@pytest.fixture
def ascii_url() -> Iterator[str]:
    import uuid

    import psycopg

    name = f"hpsearch_test_ascii_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as con:
        con.execute(
            f"CREATE DATABASE \"{name}\" ENCODING 'SQL_ASCII' TEMPLATE template0 "
            "LC_COLLATE 'C' LC_CTYPE 'C'"
        )
    try:
        yield f"{PG_ADMIN.rsplit('/', 1)[0]}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as con:
            con.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_a_study_in_an_sql_ascii_database_keeps_its_text(ascii_url: str) -> None:
    study = optuna.create_study(study_name="café", storage=open_storage(ascii_url))
    study.set_user_attr("note", "chien, chat: élevé")
    again = optuna.load_study(study_name="café", storage=open_storage(ascii_url))
    assert again.user_attrs["note"] == "chien, chat: élevé"


def test_commands_on_an_sql_ascii_database_answer_in_one_line(
    ascii_url: str, workdir: Path
) -> None:
    r = hpsearch(["status", "--study", "smoke", "--storage", ascii_url], workdir)
    assert "Traceback" not in r.stderr and "TypeError" not in r.stderr, r.stderr
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "the database has no Optuna tables" in r.stderr, r.stderr
