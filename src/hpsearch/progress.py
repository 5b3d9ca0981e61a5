"""What the terminal shows while a search runs: one line per epoch and per finished trial."""

from __future__ import annotations

import sys
from typing import TextIO

import optuna
from optuna.trial import TrialState

from hpsearch.train import EpochMetrics


class Progress:
    """Trials done of N, best so far, the current trial's epoch."""

    def __init__(self, total: int, offset: int = 0, stream: TextIO | None = None) -> None:
        self.total = total
        self.offset = offset  # finished trials in the study before this run
        self.done = 0
        self.stream = stream or sys.stdout
        self.best: tuple[float, int] | None = None

    def _say(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def _best(self) -> str:
        return "best -" if self.best is None else f"best {self.best[0]:.4f} (trial {self.best[1]})"

    def seed_best(self, study: optuna.Study) -> None:
        """Take the best trial from the study (all workers), not only from this process."""
        try:
            t = study.best_trial
        except ValueError:
            return
        if t.value is not None:
            self.best = (t.value, t.number)

    def epoch(self, trial: optuna.Trial, m: EpochMetrics) -> None:
        self._say(
            f"[{self.done}/{self.total} done | {self._best()}] trial {trial.number} "
            f"epoch {m.epoch}/{m.epochs}: loss {m.train_loss:.4f} val_acc {m.val_accuracy:.4f} "
            f"({m.train_images_per_s:.0f} img/s, {m.epoch_seconds:.1f}s)"
        )

    def trial_done(self, study: optuna.Study, t: optuna.trial.FrozenTrial) -> None:
        # study-wide, so that several workers show the same count
        finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
        self.done = len(finished) - self.offset
        self.seed_best(study)
        if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None:
            what = f"finished: val_acc {t.value:.4f}"
        elif t.state == optuna.trial.TrialState.PRUNED:
            what = f"pruned ({t.user_attrs.get('pruned_reason', 'by the pruner')})"
        else:
            what = f"{t.state.name.lower()} ({t.user_attrs.get('fail_reason', 'see the log')})"
        self._say(f"[{self.done}/{self.total} done | {self._best()}] trial {t.number} {what}")
