"""``--timeout``: a time budget for ``run``, ``worker`` and ``confirm``, parsed into an absolute
deadline (seconds since the epoch, so that every process and host reads it the same way).

A duration is a number with a unit, ``s``, ``m``, ``h`` or ``d`` (``8h``, ``90m``, ``3600s``,
``2d``, ``1.5h``), several of them largest first (``1h30m``), or a bare number of seconds. The
launchers pass their workers the absolute deadline with the hidden ``--deadline`` (an ISO 8601
time with its UTC offset), so that a worker started a minute later stops at the same moment.
"""

from __future__ import annotations

import argparse
import math
import re
import time
from datetime import datetime

UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
MAX_TIMEOUT_SECONDS = 366 * 86400.0  # a year: anything longer is a typo (8000h for 8h)
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)([dhms])")
EXAMPLES = "8h, 90m, 3600s, 2d, 1h30m or a number of seconds"


def timeout_seconds(text: str) -> float:
    """argparse type of ``--timeout``: the duration ``text`` in seconds, more than 0 and at most
    MAX_TIMEOUT_SECONDS; anything else is a one-line usage error naming the flag."""
    s = re.sub(r"\s+", "", text).lower()
    try:
        seconds = float(s)  # a bare number: seconds ("nan", "inf" and "-5" are refused below)
    except ValueError:
        seconds = _with_units(s, text)
    if not math.isfinite(seconds):
        raise argparse.ArgumentTypeError(f"expected a duration ({EXAMPLES}), got {text!r}")
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text!r}")
    if seconds > MAX_TIMEOUT_SECONDS:
        raise argparse.ArgumentTypeError(f"at most 366 days, got {text!r}")
    return seconds


def _with_units(s: str, text: str) -> float:
    bad = argparse.ArgumentTypeError(f"expected a duration ({EXAMPLES}), got {text!r}")
    order = list(UNITS)
    total, at, last = 0.0, 0, -1
    for m in _PART.finditer(s):
        if m.start() != at:
            raise bad
        rank = order.index(m[2])
        if rank <= last:  # each unit once, largest first: "30m1h" and "1h1h" are typos
            raise bad
        total += float(m[1]) * UNITS[m[2]]
        at, last = m.end(), rank
    if at == 0 or at != len(s):
        raise bad
    return total


def deadline_at(text: str) -> float:
    """argparse type of the hidden ``--deadline``: an ISO 8601 time with its UTC offset."""
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        at = None
    if at is None or at.tzinfo is None:
        raise argparse.ArgumentTypeError(
            f"expected an ISO 8601 time with its offset, e.g. 2030-01-01T21:30:00+00:00, "
            f"got {text!r}"
        )
    return at.timestamp()


def add_timeout_args(p: argparse.ArgumentParser, what: str) -> None:
    """``--timeout D`` (``what``: what stops at the deadline) and the launchers' ``--deadline``."""
    p.add_argument(
        "--timeout",
        type=timeout_seconds,
        default=None,
        metavar="DURATION",
        help=f"a time budget, e.g. 8h, 90m, 3600s, 2d, 1h30m: {what}; the running ones finish "
        "(Ctrl-C stops them)",
    )
    p.add_argument("--deadline", type=deadline_at, default=None, help=argparse.SUPPRESS)


def deadline_of(args: argparse.Namespace, now: float | None = None) -> float | None:
    """The absolute deadline the command line asks for: ``--timeout`` from ``now`` (default:
    this moment), ``--deadline``, or the earlier of the two; None without either."""
    now = time.time() if now is None else now
    found = [d for d in (getattr(args, "deadline", None),) if d is not None]
    if getattr(args, "timeout", None) is not None:
        found.append(now + args.timeout)
    return min(found) if found else None
