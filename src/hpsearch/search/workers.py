"""Running trials against an exact budget, from one process or many on many hosts.

The study keeps its target (``target_trials``: how many trials must finish, COMPLETE or PRUNED)
as a user attribute, so every worker on every host sees it. A worker claims a trial under a lock
that spans the count and Optuna's ``ask`` (a PostgreSQL advisory lock, or a file lock beside an
SQLite file), so the budget is never overshot (Optuna's MaxTrialsCallback overshoots by up to one
trial per worker, optuna#3518). A worker that finds the budget covered by running trials waits
instead of leaving: if one of those dies, its heartbeat goes stale, it is marked failed, retried,
and the waiting worker runs the retry.

A trial stopped by Ctrl-C or SIGTERM (FAIL with ``fail_reason`` "stopped by ...") is run again
too: the next worker to claim enqueues its parameters (and seed, and ``baseline`` mark) once, as a
new trial with the user attribute ``rerun_of`` naming the stopped one, so that a search
interrupted during the seed baseline still ends with a finished baseline.

A deadline (``--timeout``) stops the claims: a worker past its own deadline claims nothing more and
returns, and no worker claims while a run is past the deadline it recorded in the study and still
finishing (see :mod:`hpsearch.storage.deadlines`). Trials running at a deadline finish.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpsearch.errors import StorageError
from hpsearch.storage import optuna_private
from hpsearch.storage.claims import Lock
from hpsearch.storage.deadlines import DeadlineHold
from hpsearch.storage.resilience import ResilientRDBStorage
from hpsearch.storage.state import (
    BASELINE_ATTR,
    FAIL_REASON_ATTR,
    NEAR_BASELINE_ATTR,
    RERUN_ATTR,
    RUN_ATTR,
    SEED_ATTR,
    STOPPED_PREFIX,
    fresh_trials,
    running_trials,
    state_counts,
    target,
)


def was_interrupted(t: optuna.trial.FrozenTrial) -> bool:
    """A FAIL trial that Ctrl-C or SIGTERM stopped (not one that crashed or ran out of memory)."""
    reason = t.user_attrs.get(FAIL_REASON_ATTR)
    return (
        t.state == TrialState.FAIL and isinstance(reason, str) and reason.startswith(STOPPED_PREFIX)
    )


def interrupted_not_rerun(trials: Sequence[optuna.trial.FrozenTrial]) -> list[FrozenTrial]:
    """Interrupted trials that no trial re-runs yet (each is re-run once)."""
    rerun = {t.user_attrs.get(RERUN_ATTR) for t in trials}
    return [t for t in trials if was_interrupted(t) and t.number not in rerun]


def requeue_interrupted(study: optuna.Study) -> list[FrozenTrial]:
    """Enqueue each interrupted trial once with its parameters, seed and (near-)baseline mark; the
    returned trials are the ones enqueued now. Call it under the claim lock, so that two
    workers do not both enqueue the same trial."""
    todo = interrupted_not_rerun(fresh_trials(study))
    for t in todo:
        # an enqueued trial (the baseline) stopped before it asked for every parameter still
        # has them all in its fixed parameters
        params = {**t.system_attrs.get(optuna_private.FIXED_PARAMS, {}), **t.params}
        attrs: dict[str, Any] = {RERUN_ATTR: t.number}
        for key in (BASELINE_ATTR, NEAR_BASELINE_ATTR, SEED_ATTR):
            if key in t.user_attrs:
                attrs[key] = t.user_attrs[key]
        study.enqueue_trial(params, user_attrs=attrs)
    return todo


def reruns_first(study: optuna.Study) -> None:
    """Make ``study`` run re-runs (of interrupted trials, and heartbeat retries) before the other
    waiting trials, so that a re-enqueued seed baseline is not queued behind the start-up trials
    a new study enqueues after it. Optuna pops waiting trials in trial-number order; this
    replaces that choice on this study object (Optuna's own, same logic, another order)."""

    def pop() -> int | None:
        # the database's WAITING trials, not through Optuna's cache: the cache's first read
        # loads every trial of the study, which made a worker joining a 10,000-trial study
        # wait seconds for its first trial (a sampler that needs them loads them itself)
        storage = optuna_private.study_backend(study)
        waiting = storage.get_all_trials(
            optuna_private.study_id(study), deepcopy=False, states=(TrialState.WAITING,)
        )
        first = sorted(
            waiting,
            key=lambda t: (
                RERUN_ATTR not in t.user_attrs
                and optuna_private.FAILED_TRIAL not in t.system_attrs,
                t.number,
            ),
        )
        for t in first:
            try:
                trial_id = optuna_private.trial_id(t)
                if storage.set_trial_state_values(trial_id, state=TrialState.RUNNING):
                    optuna_private.cache_claimed_trial(study, t)
                    return trial_id
            except optuna.exceptions.UpdateFinishedTrialError:
                continue  # another worker took and finished it
        return None

    optuna_private.set_pop_waiting(study, pop)


def _told_a_failed_trial(e: BaseException | None) -> bool:
    """Whether ``e`` is (or came from) Optuna refusing to tell a trial that another process
    failed meanwhile: its ValueError, which Optuna's optimize loop may re-raise as an
    AssertionError ("Should not reach.") with the ValueError as its context."""
    while e is not None:
        if isinstance(e, ValueError) and str(e).startswith("Cannot tell a FAIL trial"):
            return True
        e = e.__context__
    return False


GridCheck = Callable[[optuna.Study], str]  # "open" | "wait" | "exhausted"


def fail_stale(study: optuna.Study) -> list[int]:
    """Fail (and retry) the running trials whose heartbeat went stale, after giving each running
    trial without a heartbeat record one (see ``ResilientRDBStorage.adopt_orphans``); returns
    the numbers of the trials adopted now."""
    backend = optuna_private.study_backend(study)
    adopted = (
        backend.adopt_orphans(optuna_private.study_id(study))
        if isinstance(backend, ResilientRDBStorage)
        else []
    )
    optuna.storages.fail_stale_trials(study)  # a no-op without heartbeats
    return list(adopted)


class Waiting(Protocol):
    def __call__(self, running: list[FrozenTrial], orphans: set[int]) -> None: ...


Holding = Callable[[dict[str, float]], None]  # {run_id: its deadline} of runs finishing


def run_until_budget(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float | tuple[float, float]],
    lock: Lock,
    *,
    callbacks: Sequence[Callable[[optuna.Study, optuna.trial.FrozenTrial], None]] = (),
    catch: tuple[type[Exception], ...] = (),
    poll_seconds: float = 5.0,
    grid_check: GridCheck | None = None,
    on_requeue: Callable[[list[FrozenTrial]], None] | None = None,
    on_wait: Waiting | None = None,
    run_id: str | None = None,
    deadline: float | None = None,
    on_hold: Holding | None = None,
    on_taken: Callable[[int], None] | None = None,
) -> str:
    """Run trials until the study's target of finished trials is reached, or ``deadline``
    (seconds since the epoch) has passed.

    Before claiming, interrupted trials are enqueued once to run again (``on_requeue`` is told
    which); the trials are listed only when the number of FAIL trials has changed. While the
    running trials cover what is left, ``on_wait`` is told which they are (and which of them
    had no heartbeat record), each time that set changes. Each trial this worker runs gets the
    user attribute ``run_id`` when one is given (the ``hpsearch run`` that started it). No trial
    is claimed after ``deadline``; while another run is past the deadline it recorded and still
    finishing, none is claimed either, and ``on_hold`` is told which runs those are, each time
    that set changes. A trial that another process failed as stale while this one ran it (its
    heartbeats missed for 3 intervals: a frozen or overloaded machine) cannot be told its result;
    ``on_taken`` is told its number, and the worker goes on (the trial's retry runs it again).

    Returns why it stopped: ``"budget"``, ``"grid exhausted"`` or ``"deadline"``.
    """
    failed_seen = 0
    waited: set[int] = set()
    orphans: set[int] = set()
    held_by: set[str] = set()
    hold = DeadlineHold()
    running_number: list[int] = []  # the number of the trial this worker runs now
    reruns_first(study)
    while True:
        lock.acquire()
        held = True
        try:
            goal = target(study)
            if goal is None:
                raise StorageError(
                    f"study {study.study_name!r} has no trial budget; start it with hpsearch run"
                )
            orphans.update(fail_stale(study))
            counts = state_counts(study)
            finished = counts.get("COMPLETE", 0) + counts.get("PRUNED", 0)
            running = counts.get("RUNNING", 0)
            if finished >= goal:
                return "budget"
            if counts.get("FAIL", 0) != failed_seen:
                failed_seen = counts.get("FAIL", 0)
                requeued = requeue_interrupted(study)
                if requeued and on_requeue is not None:
                    on_requeue(requeued)
            grid = grid_check(study) if grid_check is not None else "open"
            if grid == "exhausted":
                return "grid exhausted"
            if deadline is not None and time.time() >= deadline:
                return "deadline"
            holding = hold.check(study)
            if set(holding) != held_by and holding and on_hold is not None:
                on_hold(holding)
            held_by = set(holding)
            if finished + running < goal and grid == "open" and not holding:

                def release() -> None:
                    nonlocal held
                    if held:
                        lock.release()  # the trial is RUNNING now: it counts, others may claim
                        held = False

                running_number.clear()

                def claimed(trial: optuna.Trial) -> float | tuple[float, float]:
                    running_number.append(trial.number)
                    release()
                    # also over the tag a retried trial copied from the one it retries
                    trial.set_user_attr(RUN_ATTR, run_id)
                    return objective(trial)

                # Release as soon as the new trial is committed, before its parameters are
                # sampled (a WAITING trial Optuna pops instead is released in ``claimed``).
                # Not with a grid: the grid check must see the running trials' points.
                backend = optuna_private.study_backend(study)
                hooked = backend if isinstance(backend, ResilientRDBStorage) else None
                if grid_check is not None:
                    hooked = None
                if hooked is not None:
                    hooked.on_trial_created = release
                try:
                    study.optimize(claimed, n_trials=1, callbacks=list(callbacks), catch=catch)
                except Exception as e:
                    if not running_number or not _told_a_failed_trial(e):
                        raise
                    if on_taken is not None:
                        on_taken(running_number[0])
                finally:
                    if hooked is not None:
                        hooked.on_trial_created = None
                waited = set()
                continue
            if on_wait is not None and not holding:
                running_now = running_trials(study)
                numbers = {t.number for t in running_now}
                orphans &= numbers
                if numbers and numbers != waited:
                    on_wait(running_now, orphans)
                waited = numbers
        finally:
            if held:
                lock.release()
        # running trials cover the budget (or the grid), or a run past its deadline is ending
        pause = poll_seconds if deadline is None else min(poll_seconds, deadline - time.time())
        time.sleep(max(pause, 0.0))
