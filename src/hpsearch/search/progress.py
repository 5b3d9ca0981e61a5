"""What the terminal shows while a search runs: one line per epoch and per finished trial, with
the time spent, an estimate of the time left for the budget, and the deadline (``--timeout``)."""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, TextIO

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpsearch.results.timing import (
    duration,
    mean_trial_seconds,
    spent_and_left,
    time_left,
    utc_clock,
)
from hpsearch.storage.state import (
    BASELINE_ATTR,
    FAIL_REASON_ATTR,
    LATENCY_MS_ATTR,
    PRUNED_REASON_ATTR,
    target,
)

if TYPE_CHECKING:  # no torch import: hpsearch status uses the estimates below
    from hpsearch.engine.train import EpochMetrics

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
LONG_RUN_SECONDS = 12 * 3600  # an estimate above this gets one line on how to shrink the run


@dataclass(frozen=True)
class RunSize:
    """What the study trains, for the hint that shrinks a run too long for this machine."""

    image_size: int
    epochs: int
    per_class: int  # training images per class
    min_image_size: int = 16  # the smallest size the study's deepest network allows


def shrink_hint(
    left: float, per_trial: float, trials_left: int, workers: int, size: RunSize, study_name: str
) -> str:
    """One line: the budget needs more than 12 hours here, and the study-file keys (with a
    ready-to-paste ``--set`` example) that shrink it. The example halves what is largest until
    the estimate is under 12 hours; training time is about proportional to image_size squared,
    to train.epochs and to data.max_per_class."""
    sets: list[str] = []
    factor = 1.0
    image_size, epochs, per_class = size.image_size, size.epochs, size.per_class
    # one step each, in this order, until the estimate fits
    if left * factor > LONG_RUN_SECONDS and image_size // 2 >= max(size.min_image_size, 16):
        image_size //= 2
        factor *= 0.25
        sets.append(f"data.image_size={image_size}")
    if left * factor > LONG_RUN_SECONDS and epochs >= 4:
        new = math.ceil(epochs / 2)
        factor *= new / epochs
        epochs = new
        sets.append(f"train.epochs={epochs}")
    while left * factor > LONG_RUN_SECONDS and per_class >= 500:
        new = per_class // 2
        factor *= new / per_class
        per_class = new
    if per_class != size.per_class:
        sets.append(f"data.max_per_class={per_class}")
    example = " ".join(f"--set {s}" for s in sets)
    after = f" (about {duration(left * factor)})" if sets else ""
    return (
        f"note: this budget needs about {duration(left)} more here ({trials_left} trials left "
        f"x {duration(per_trial)} each / {workers} worker{'s' if workers != 1 else ''}); "
        "data.image_size (time ~ size squared), train.epochs and data.max_per_class shrink it"
        + (f", e.g. {example} --study-name {study_name}-small{after}" if sets else "")
    )


class Progress:
    """Trials done of N, best so far, time spent and left, the current trial's epoch."""

    def __init__(
        self,
        total: int,
        offset: int = 0,
        stream: TextIO | None = None,
        *,
        workers: int = 1,
        size: RunSize | None = None,
        deadline: float | None = None,
    ) -> None:
        self.total = total
        self.offset = offset  # finished trials in the study before this run
        self.done = 0
        self.stream = stream or sys.stdout
        self.best: tuple[float, int] | None = None
        self.workers = workers  # workers running this budget (for the epoch-based estimate)
        self.size = size  # with a size, an estimate over 12 hours prints how to shrink the run
        self.started = time.monotonic()
        self.left: tuple[float, float] | None = None  # (estimate in s, when it was made)
        self.study_has_finished = False
        self.warned = False
        self._trial: tuple[int, float] = (-1, 0.0)  # (trial number, its epoch seconds so far)
        self.stale_after: float | None = None  # seconds of silence after which a trial fails
        self.deadline = deadline  # --timeout: seconds since the epoch

    def _say(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def _best(self) -> str:
        return "best -" if self.best is None else f"best {self.best[0]:.4f} (trial {self.best[1]})"

    def _time(self) -> str:
        now = time.monotonic()
        left = None
        if self.left is not None and self.done < self.total:
            left = max(self.left[0] - (now - self.left[1]), 0.0)
        return spent_and_left(now - self.started, left, self.deadline, time.time())

    def _head(self) -> str:
        return f"[{self.done}/{self.total} done | {self._best()} | {self._time()}]"

    def seed_best(self, study: optuna.Study) -> None:
        """Take the best trial from the study (all workers), not only from this process."""
        from hpsearch.storage.study import accuracy, is_feasible

        best = None
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            acc = accuracy(t)
            ok = acc is not None and math.isfinite(acc) and is_feasible(t)
            if ok and acc is not None and (best is None or acc > best[0]):
                best = (acc, t.number)
        if best is not None:
            self.best = best

    def seed_time(self, study: optuna.Study) -> None:
        """Start from the study's finished trials (a resumed search has an estimate at once)."""
        trials = study.get_trials(deepcopy=False)
        per_trial = mean_trial_seconds(trials)
        if per_trial is not None:
            self.study_has_finished = True
            self.left = (
                time_left(self.total - self.done, per_trial, self.workers),
                time.monotonic(),
            )

    def epoch(self, trial: optuna.Trial, m: EpochMetrics) -> None:
        number, seconds = self._trial
        if number != trial.number or m.epoch == 1:
            seconds = 0.0
        seconds += m.epoch_seconds
        self._trial = (trial.number, seconds)
        if not self.study_has_finished:
            # before any trial has finished: assume every trial runs all epochs like this one
            per_trial = seconds / m.epoch * m.epochs
            left = time_left(self.total - self.done, per_trial, self.workers) - seconds
            self.left = (max(left, 0.0), time.monotonic())
        self._say(
            f"{self._head()} trial {trial.number} "
            f"epoch {m.epoch}/{m.epochs}: loss {m.train_loss:.4f} val_acc {m.val_accuracy:.4f} "
            f"({m.train_images_per_s:.0f} img/s, {m.epoch_seconds:.1f}s)"
        )

    def trial_done(self, study: optuna.Study, t: FrozenTrial) -> None:
        # study-wide, so that several workers show the same count
        trials = study.get_trials(deepcopy=False)
        finished = [x for x in trials if x.state in FINISHED]
        self.done = len(finished) - self.offset
        goal = target(study)
        if goal is not None and goal - self.offset > 0:
            self.total = goal - self.offset  # another run added to the study's target
        self.seed_best(study)
        per_trial = mean_trial_seconds(trials)
        # this worker and the trials running elsewhere
        workers = 1 + sum(x.state == TrialState.RUNNING and x.number != t.number for x in trials)
        trials_left = self.total - self.done
        if per_trial is not None:
            self.study_has_finished = True
            self.left = (time_left(trials_left, per_trial, workers), time.monotonic())
        if t.state == TrialState.COMPLETE and t.values:
            what = f"finished: val_acc {t.values[0]:.4f}"
            if len(t.values) > 1:  # the second objective
                what += f", {'latency' if LATENCY_MS_ATTR in t.user_attrs else 'params'} "
                what += (
                    f"{t.values[1]:.3f} ms"
                    if LATENCY_MS_ATTR in t.user_attrs
                    else f"{t.values[1]:,.0f}"
                )
        elif t.state == TrialState.PRUNED:
            what = f"pruned ({t.user_attrs.get(PRUNED_REASON_ATTR, 'by the pruner')})"
        else:
            what = f"{t.state.name.lower()} ({t.user_attrs.get(FAIL_REASON_ATTR, 'see the log')})"
        self._say(f"{self._head()} trial {t.number} {what}")
        if (
            not self.warned
            and self.size is not None
            and per_trial is not None
            and trials_left > 0
            and self.left is not None
        ):
            self.warned = True  # judged once, after the first trial this run sees finish
            if self.left[0] > LONG_RUN_SECONDS:
                self._say(
                    shrink_hint(
                        self.left[0], per_trial, trials_left, workers, self.size, study.study_name
                    )
                )

    def waiting(self, running: list[FrozenTrial], orphans: set[int]) -> None:
        """This worker waits: the trials running elsewhere cover the rest of the budget."""
        silent = f"{self.stale_after:.0f} s" if self.stale_after else "a few heartbeats"
        parts = []
        for t in sorted(running, key=lambda t: t.number):
            since = t.datetime_start.strftime("%H:%M:%S") if t.datetime_start else "?"
            what = f"trial {t.number} (running since {since}"
            if t.number in orphans:
                what += ", no heartbeat: no worker runs it (made by optuna ask?)"
            parts.append(what + ")")
        self._say(
            f"{self._head()} waiting for {', '.join(parts)}, which "
            f"{'cover' if len(parts) > 1 else 'covers'} the rest of the budget; "
            f"a trial silent for {silent} is failed and run again"
        )

    def held(self, runs: dict[str, float]) -> None:
        """This worker waits: a run is past the deadline it recorded and still finishing (see
        ``hpsearch.storage.deadlines``)."""
        now = time.time()
        when = ", ".join(sorted(utc_clock(at, now) for at in runs.values()))
        self._say(
            f"{self._head()} waiting: the deadline of a run on this study ({when}) has passed; "
            "no trial starts until that run has ended and given back its unstarted trials"
        )

    def taken(self, number: int) -> None:
        """Another process failed this worker's trial as stale while it ran (see
        ``workers.run_until_budget``)."""
        silent = f"{self.stale_after:.0f} s" if self.stale_after else "3 heartbeats"
        self._say(
            f"{self._head()} trial {number} was failed as stale by another process while this "
            f"worker ran it (no heartbeat reached the database for {silent}: a frozen or "
            "overloaded machine?); its retry runs it again, and this worker goes on"
        )

    def requeued(self, trials: list[FrozenTrial]) -> None:
        """Interrupted trials enqueued to run again (see ``workers.requeue_interrupted``)."""
        for t in trials:
            what = " (the seed baseline)" if t.user_attrs.get(BASELINE_ATTR) else ""
            self._say(
                f"trial {t.number}{what} was interrupted ({t.user_attrs.get(FAIL_REASON_ATTR)}); "
                "it runs again with the same parameters and seed"
            )
