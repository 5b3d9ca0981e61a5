"""Ctrl-C inside a database call is held and raised at the next safe point, once."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest

from hpsearch.search import stopping

# code that runs as if it were a module of SQLAlchemy's: the signal lands "in a database call"
IN_DATABASE = compile("os.kill(os.getpid(), sig); time.sleep(0.02)", "<sqlalchemy>", "exec")


@pytest.fixture(autouse=True)
def handlers() -> Iterator[None]:
    """hpsearch's handlers for the test (install also clears a previous test's stop), Python's
    own afterwards."""
    stopping.install()
    yield
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    stopping._pending = stopping._since = None


def in_database(sig: int) -> None:
    exec(IN_DATABASE, {"__name__": "sqlalchemy.engine.fake", "os": os, "time": time, "sig": sig})


@pytest.mark.parametrize(
    ("sig", "exc"), [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, stopping.Terminated)]
)
def test_a_stop_inside_a_database_call_waits_for_the_safe_point(sig: int, exc: type) -> None:
    in_database(sig)  # returns: the stop is held, not raised inside the call
    with pytest.raises(exc):
        stopping.raise_if_pending()
    time.sleep(0.2)  # the timer's late copy must not raise a second time
    stopping.raise_if_pending()  # nothing pending any more


def test_a_held_stop_with_no_safe_point_is_resent_by_the_timer() -> None:
    in_database(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        time.sleep(1)  # outside any database call: the re-sent signal raises here
    stopping.raise_if_pending()  # and it was raised once only


def test_a_stop_outside_a_database_call_raises_at_once() -> None:
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1)


def test_a_second_stop_while_the_first_is_handled_is_only_acknowledged(
    capfd: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1)
    # the code recording the stopped trial runs now: a second Ctrl-C must not break into it
    os.kill(os.getpid(), signal.SIGINT)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.1)
    assert capfd.readouterr().err == (
        "hpsearch: already stopping (recording what was interrupted); one moment\n"
    )
