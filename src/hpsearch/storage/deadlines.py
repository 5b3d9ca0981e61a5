"""The deadlines of ``hpsearch run --timeout``, as the study records them.

A run with a deadline records it in the study's ``deadlines`` user attribute (``{run_id: ISO 8601
UTC time}``) when it joins, and drops it when it ends (:mod:`hpsearch.storage.budget`), so that
``status`` shows it beside the budget and every worker of the study, on every host, honours it:
after a run's deadline no worker starts a trial until that run has ended and given back its
unstarted trials (its running trials finish first). Then the workers go on with what is left of
the target: nothing, unless another run added to it. A run killed before it could drop its
deadline is told by its trials: once none of them has been running for
``DEADLINE_GRACE_SECONDS`` after its deadline, its deadline is dropped; a new run that finds no
other run going drops every recorded deadline.

Times are seconds since the epoch (``time.time()``), the same on every host.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import UTC, datetime

import optuna

from hpsearch.errors import StorageError
from hpsearch.storage.state import DEADLINES_ATTR, RUN_ATTR, running_trials, study_attr

DEADLINE_GRACE_SECONDS = 60.0  # a run past its deadline with no trial running, taken for gone


def iso_utc(at: float) -> str:
    """``at`` as ISO 8601 in UTC, to the second: ``2030-01-01T21:30:00+00:00``."""
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds")


def _recorded(study: optuna.Study) -> dict[str, str]:
    return dict(study_attr(study, DEADLINES_ATTR, dict) or {})


def run_deadlines(study: optuna.Study) -> dict[str, float]:
    """The recorded deadline of each run that set one: ``{run_id: seconds since the epoch}``."""
    out: dict[str, float] = {}
    for run, text in _recorded(study).items():
        try:
            at = datetime.fromisoformat(text) if isinstance(text, str) else None
        except ValueError:
            at = None
        if at is None or at.tzinfo is None:
            raise StorageError(
                f"study {study.study_name!r}: user attribute {DEADLINES_ATTR!r} holds {text!r} "
                f"for run {run!r}, not an ISO 8601 time with its offset; hpsearch writes it, so "
                "it was set by hand or by another tool (fix or remove it)"
            )
        out[str(run)] = at.timestamp()
    return out


def record_deadline(study: optuna.Study, run_id: str, at: float | None, others: bool) -> None:
    """Record run ``run_id``'s deadline ``at`` (None: it has none). Without ``others`` (no other
    run is going) the deadlines recorded before are gone runs', and are dropped. Call under the
    claim lock."""
    old = _recorded(study)
    new = dict(old) if others else {}
    if at is not None:
        new[run_id] = iso_utc(at)
    if new != old:
        study.set_user_attr(DEADLINES_ATTR, new)


def forget_deadlines(study: optuna.Study, runs: Iterable[str]) -> None:
    """Drop the deadlines of ``runs`` (they ended). Call under the claim lock."""
    ended = set(runs)  # once: an iterator would be spent after the first run
    old = _recorded(study)
    new = {run: at for run, at in old.items() if run not in ended}
    if new != old:
        study.set_user_attr(DEADLINES_ATTR, new)


class DeadlineHold:
    """One worker's view of the deadlines that runs recorded in its study (see the module's
    docstring): :meth:`check` says which runs are past their deadline and still finishing."""

    def __init__(self) -> None:
        self.quiet_since: dict[str, float] = {}  # run -> when this worker first saw none running

    def check(self, study: optuna.Study, now: float | None = None) -> dict[str, float]:
        """The runs past their deadline that may still be running trials (``{run_id:
        deadline}``): while there is one, no trial may start. A run with no trial running for
        DEADLINE_GRACE_SECONDS is taken for gone, and its deadline dropped. Call under the
        claim lock."""
        now = time.time() if now is None else now
        passed = {run: at for run, at in run_deadlines(study).items() if at <= now}
        if not passed:
            return {}
        running = {t.user_attrs.get(RUN_ATTR) for t in running_trials(study)}
        clock = time.monotonic()
        holding: dict[str, float] = {}
        gone = []
        for run, at in passed.items():
            if run in running:
                self.quiet_since.pop(run, None)
                holding[run] = at
            elif clock - self.quiet_since.setdefault(run, clock) < DEADLINE_GRACE_SECONDS:
                holding[run] = at  # it is ending: it gives back its unstarted trials
            else:
                gone.append(run)
        if gone:
            forget_deadlines(study, gone)
        return holding
