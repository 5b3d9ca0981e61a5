"""How long a study's trials took, and how long the rest of its budget will take: what
``hpsearch status`` reports and the progress lines of a running search estimate."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

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
