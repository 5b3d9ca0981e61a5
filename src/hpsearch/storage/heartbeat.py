"""One heartbeat interval per study, the same in every process that works on it.

A running trial's process records a heartbeat every interval; any other process fails the trial
as stale (and retries it) once it has been silent for 3 intervals, judged by the judging
process's own interval. So the processes of a study must agree: a run started with
``--heartbeat 2`` beside workers beating every 10 s failed their live trials after 6 s, and
those workers then died telling a FAIL trial (seen by the compose stack's test). The run that
makes a study records its interval (``--heartbeat``, default 10 s) in the study; every later
run and worker uses the recorded one, and says so when its own ``--heartbeat`` differs.
"""

from __future__ import annotations

import optuna

from hpsearch.storage import optuna_private
from hpsearch.storage.state import HEARTBEAT_ATTR

DEFAULT_HEARTBEAT = 10  # seconds
STALE_AFTER = 3  # intervals of silence after which a running trial is failed and retried


def recorded_heartbeat(study: optuna.Study) -> int | None:
    """The interval the study records, or None (a plain-Optuna study, or one made before)."""
    value = study.user_attrs.get(HEARTBEAT_ATTR)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def agree_heartbeat(study: optuna.Study, asked: int | None, *, record: bool) -> tuple[int, str]:
    """Use the study's heartbeat interval in this process (recording ``asked``, or the default,
    when the study has none and ``record``, as a run does); returns the interval, and a note to
    show when ``asked`` was not used ("" otherwise)."""
    interval = recorded_heartbeat(study)
    note = ""
    if interval is None:
        interval = asked or DEFAULT_HEARTBEAT
        if record:
            study.set_user_attr(HEARTBEAT_ATTR, interval)
    elif asked is not None and asked != interval:
        note = (
            f"note: study {study.study_name!r} beats every {interval} s, as the run that made it "
            f"recorded; --heartbeat {asked} is not used (every process on a study must judge "
            "a silent trial by the same interval)"
        )
    backend = optuna_private.study_backend(study)
    if isinstance(backend, optuna.storages.RDBStorage):
        optuna_private.set_heartbeat(backend, interval, STALE_AFTER * interval)
    return interval, note
