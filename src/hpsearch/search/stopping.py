"""Ctrl-C and SIGTERM: raised as exceptions, but never in the middle of a database call.

Interrupted in the middle of a call, a connection can keep its transaction open: with SQLite it
keeps the file locked, and the writes that record the stopped trial then wait on that lock until
they give up. So a stop that lands inside SQLAlchemy is held as *pending* and raised at the next
safe point: the training loop calls :func:`raise_if_pending` after each epoch's database writes,
and a timer re-sends the signal every 50 ms for code that has no safe point (for at most
``DEFER_SECONDS``, after which it is raised wherever it lands).

The timer alone was not enough: a tiny trial spends most of its time in per-epoch writes, so on a
busy machine each re-sent signal could land in another write until the trial had finished.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from types import FrameType

DEFER_SECONDS = 5.0  # the longest a stop waits for a database call to finish
_RETRY_SECONDS = 0.05


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: the running trial is marked failed and we exit."""


_pending: int | None = None  # the signal held while a database call finishes
_since: float | None = None  # when the pending stop first arrived
_resending = False  # the next delivery is the timer's, not the user's
_stopping = False  # a stop was raised: this process is recording it and exiting
_noted = False  # a repeated Ctrl-C was answered (once)


def _in_database_call(frame: FrameType | None) -> bool:
    while frame is not None:
        if str(frame.f_globals.get("__name__", "")).startswith("sqlalchemy"):
            return True
        frame = frame.f_back
    return False


def _exception(signum: int) -> KeyboardInterrupt:
    return Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def _resend(signum: int) -> None:
    global _resending
    if _pending == signum:  # not yet raised at a safe point
        _resending = True
        os.kill(os.getpid(), signum)


def on_signal(signum: int, frame: FrameType | None) -> None:
    """The SIGINT and SIGTERM handler (see the module's docstring)."""
    global _pending, _since, _resending, _stopping
    resent, _resending = _resending, False
    if resent and _pending is None:
        return  # already raised at a safe point; this is the timer's late copy
    if _stopping and not resent:
        # A second Ctrl-C would land in the code that records the stopped trial (leaving it
        # RUNNING) or in the interpreter's exit ("Exception ignored in atexit callback"): the
        # first one is already being handled, so it is only acknowledged.
        _acknowledge()
        return
    now = time.monotonic()
    if _in_database_call(frame) and now - (_since or now) < DEFER_SECONDS:
        _pending, _since = signum, _since or now
        timer = threading.Timer(_RETRY_SECONDS, _resend, (signum,))
        timer.daemon = True
        timer.start()
        return
    _pending = _since = None
    _stopping = True
    raise _exception(signum)


def _acknowledge() -> None:
    global _noted
    if not _noted:
        _noted = True
        # os.write: a print here could re-enter a write the signal interrupted
        os.write(2, b"hpsearch: already stopping (recording what was interrupted); one moment\n")


def quiet() -> None:
    """The process has said why it stops and only exits now: a later Ctrl-C or SIGTERM is
    ignored without a word. SIG_IGN rather than our handler, because the interpreter resets
    its own handlers to the default while it shuts down (a Ctrl-C then killed the exiting
    process, or raised in an atexit callback), but leaves ignored signals ignored."""
    global _noted
    _noted = True
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def raise_if_pending() -> None:
    """A safe point: raise the stop that arrived during a database call, if any."""
    global _pending, _since, _stopping
    if _pending is not None:
        signum, _pending, _since = _pending, None, None
        _stopping = True
        raise _exception(signum)


def install() -> None:
    """Handle SIGINT and SIGTERM (a shell starts background jobs with SIGINT ignored; a search
    must still stop on it)."""
    global _stopping, _noted
    _stopping = _noted = False
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
