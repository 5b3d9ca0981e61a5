"""How long a study's trials took, and how long the rest of its budget will take: what
``hpsearch status`` reports and the progress lines of a running search estimate."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from optuna.trial import FrozenTrial, TrialState

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def duration(seconds: float) -> str:
    """``42 s``, ``7.5 min``, ``3.2 h`` or ``2.5 days``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    if seconds < 72 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def mean_trial_seconds(trials: Sequence[FrozenTrial]) -> float | None:
    """Mean wall time of the finished (COMPLETE or PRUNED) trials, or None before the first."""
    spans = [
        (t.datetime_complete - t.datetime_start).total_seconds()
        for t in trials
        if t.state in FINISHED and t.datetime_start is not None and t.datetime_complete is not None
    ]
    return sum(spans) / len(spans) if spans else None


def search_seconds(trials: Sequence[FrozenTrial], now: datetime | None = None) -> float:
    """Wall time during which at least one trial was running: the union of the trials'
    start-to-end intervals (a running trial up to ``now``), so the gaps between runs do not
    count and parallel trials count once."""
    now = now or datetime.now()
    spans = sorted(
        (t.datetime_start, t.datetime_complete or now)
        for t in trials
        if t.datetime_start is not None
    )
    total = 0.0
    start: datetime | None = None
    end: datetime | None = None
    for a, b in spans:
        if end is None or a > end:
            if start is not None and end is not None:
                total += (end - start).total_seconds()
            start, end = a, b
        elif b > end:
            end = b
    if start is not None and end is not None:
        total += (end - start).total_seconds()
    return total


def time_left(trials_left: int, per_trial: float, workers: int) -> float:
    """Seconds for ``trials_left`` more trials of ``per_trial`` seconds on ``workers`` workers."""
    return max(trials_left, 0) * per_trial / max(workers, 1)


# --- a deadline (``--timeout``): seconds since the epoch, shown in UTC ------------------------


def utc_clock(at: float, now: float) -> str:
    """``21:30:00 UTC``, with the date when it is not ``now``'s (UTC) day."""
    when, today = datetime.fromtimestamp(at, UTC), datetime.fromtimestamp(now, UTC)
    fmt = "%H:%M:%S UTC" if when.date() == today.date() else "%Y-%m-%d %H:%M:%S UTC"
    return when.strftime(fmt)


def until(at: float, now: float) -> str:
    """``in 42 s`` / ``in 7.5 min``, or ``passed 3 s ago`` once ``now`` is past ``at``."""
    return f"in {duration(at - now)}" if at > now else f"passed {duration(now - at)} ago"


def spent_and_left(
    spent: float, left: float | None, deadline: float | None, now: float, work: str = "trial"
) -> str:
    """What a progress line says of time: ``spent`` seconds, the estimate ``left`` (None: none
    yet) and the ``deadline`` (seconds since the epoch; ``now`` too), after which no new ``work``
    starts. An estimate that runs past the deadline is not called the time left: the work stops
    at the deadline."""
    text = duration(spent)
    if deadline is None:
        return text if left is None else f"{text}, ~{duration(left)} left"
    to_go = deadline - now
    if to_go <= 0:
        return f"{text}, deadline passed: no new {work} starts"
    if left is None:
        return f"{text}, deadline in {duration(to_go)}"
    if left <= to_go:
        return f"{text}, ~{duration(left)} left, deadline in {duration(to_go)}"
    return f"{text}, deadline in {duration(to_go)} (the rest needs ~{duration(left)})"
