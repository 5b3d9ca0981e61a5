"""What ``hpsearch report`` says first: how far the search got past the seed baseline (the seed
CNN that ``search.enqueue_baseline`` runs as the study's first trial), and which trial
``hpsearch confirm`` chose over new seeds, with confirm's own table. The lines of the summary and
the marks on the optimization-history plot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpsearch.errors import StorageError
from hpsearch.results.confirmed import Recorded, Row, recorded, spread_note, table
from hpsearch.results.read import confirmed_summary
from hpsearch.storage.state import (
    BASELINE_ATTR,
    FAIL_REASON_ATTR,
    PRUNED_REASON_ATTR,
    RERUN_ATTR,
)
from hpsearch.storage.study import is_feasible

SEED_CNN = "the seed CNN"


@dataclass(frozen=True)
class Baseline:
    """The seed baseline's trial (the completed one when it was re-run) and its validation
    accuracy; ``value`` is None when there is nothing to compare with, and ``why`` says why
    (``the seed CNN (trial 0) was pruned (...)``)."""

    trial: FrozenTrial | None
    value: float | None
    why: str

    @property
    def label(self) -> str:
        """The legend entry of its line: ``seed CNN (trial 0): 0.6950``."""
        assert self.trial is not None and self.value is not None
        return f"seed CNN (trial {self.trial.number}): {self.value:.4f}"


def find_baseline(trials: list[FrozenTrial]) -> Baseline:
    """The trial marked ``baseline`` (hpsearch enqueues it as trial 0; an interrupted one runs
    again as a later trial with the same mark): the first of them that completed with a value,
    else the latest of them, whose state says why there is no value yet."""
    marked = [t for t in trials if t.user_attrs.get(BASELINE_ATTR) is True]
    if not marked:
        return Baseline(
            None,
            None,
            "no trial is the seed CNN (search.enqueue_baseline was off, or hpsearch did not make "
            "this study)",
        )
    for t in marked:
        if t.state == TrialState.COMPLETE and t.values and math.isfinite(t.values[0]):
            return Baseline(t, float(t.values[0]), "")
    t = marked[-1]
    rerun = t.user_attrs.get(RERUN_ATTR)
    who = f"{SEED_CNN} (trial {t.number}" + (
        f", the re-run of trial {rerun})" if isinstance(rerun, int) else ")"
    )
    if t.state == TrialState.PRUNED:
        what = f"was pruned ({t.user_attrs.get(PRUNED_REASON_ATTR, 'by the pruner')})"
    elif t.state == TrialState.FAIL:
        what = f"failed ({t.user_attrs.get(FAIL_REASON_ATTR, 'see the log')})"
    elif t.state == TrialState.RUNNING:
        what = "is still running"
    elif t.state == TrialState.WAITING:
        what = "has not started yet"
    else:
        what = "has no finite validation accuracy"
    return Baseline(t, None, f"{who} {what}")


def gain(value: float, base: float) -> str:
    """``+6.0 points (+8.6%)``: accuracy points, and relative to the baseline."""
    text = f"{100 * (value - base):+.1f} points"
    if base > 0:
        text += f" ({100 * (value - base) / base:+.1f}%)"
    return text


def _over(value: float, base: Baseline, base_value: float, what: str = "") -> str:
    """``+6.0 points (+8.6%) over the seed CNN (trial 0: 0.6950<what>)``."""
    assert base.trial is not None
    return (
        f"{gain(value, base_value)} over {SEED_CNN} (trial {base.trial.number}: "
        f"{base_value:.4f}{what})"
    )


@dataclass(frozen=True)
class Story:
    baseline: Baseline
    confirm: Recorded | None
    unreadable: str = ""  # why confirm's results are not shown, when the study's are malformed

    @property
    def winner(self) -> Row | None:
        return self.confirm.winner if self.confirm is not None else None


def story_of(study: optuna.Study, trials: list[FrozenTrial]) -> Story:
    """The baseline and confirm's results; a plain-Optuna study whose attributes under confirm's
    names are not confirm's still reports, saying so."""
    try:
        return Story(find_baseline(trials), recorded(study))
    except StorageError as e:
        return Story(find_baseline(trials), None, str(e))


def first_lines(story: Story, best: FrozenTrial | None) -> list[str]:
    """The summary's opening: confirm's winner (when confirm chose one) and the search's best,
    each with its gain over the seed CNN, or why there is no baseline to compare with."""
    base = story.baseline
    lines: list[str] = []
    winner, doc = story.winner, story.confirm.doc if story.confirm is not None else None
    if winner is not None and doc is not None:
        mean = float(doc.get("val_accuracy_mean") or 0.0)
        text = f"Confirmed winner (hpsearch confirm): {confirmed_summary(doc)}"
        if doc.get("test_data"):
            text += f" on `{doc['test_data']}`"
        if base.value is not None and base.trial is not None:
            confirmed_base = _confirmed_row(story, base.trial.number)
            if confirmed_base is not None and confirmed_base.mean is not None:
                text += "; " + _over(
                    mean, base, confirmed_base.mean, " over the same confirm's seeds"
                )
            else:
                text += "; " + _over(mean, base, base.value, " in its one search run")
        lines += [text + ".", ""]
    if best is not None:
        head = "The search's best" if lines else "Best"
        text = f"{head}: validation accuracy **{best.values[0]:.4f}** in trial {best.number}"
        if lines:
            text += " (one run)"
        if base.value is not None and base.trial is not None:
            if best.number == base.trial.number:
                text += f": {SEED_CNN} itself, no other trial beat it"
            else:
                text += ", " + _over(best.values[0], base, base.value)
        if lines and winner is not None and best.number != winner.trial.number:
            row = _confirmed_row(story, best.number)
            if row is not None and row.mean is not None:
                text += f"; confirm measured it at {row.mean:.4f} over new seeds"
        lines += [text + ".", ""]
    if base.value is None:
        lines += [f"No gain over {SEED_CNN} to report: {base.why}.", ""]
    elif base.trial is not None and not is_feasible(base.trial):
        lines += [
            f"{SEED_CNN.capitalize()} is over the deployment budget (search.constraints).",
            "",
        ]
    if story.unreadable:
        lines += [f"Confirm's results are not shown: {story.unreadable}", ""]
    return lines


def _confirmed_row(story: Story, number: int) -> Row | None:
    if story.confirm is None:
        return None
    return next((r for r in story.confirm.rows if r.trial.number == number), None)


def confirm_section(story: Story) -> list[str]:
    """Confirm's table as confirm printed it, with its note on the spread; nothing when confirm
    has not run."""
    c = story.confirm
    if c is None:
        return []
    n = len(c.rows)
    lines = [
        "## Confirmed over new seeds",
        "",
        f"`hpsearch confirm` retrained {'this trial' if n == 1 else f'these {n} trials'} with "
        f"{c.seeds} new seed{'' if c.seeds == 1 else 's'} each; the winner is the best mean "
        "validation accuracy.",
        "",
        "```text",
        table(c.rows, c.winner, c.seeds),
        "```",
        "",
    ]
    if c.winner is None:
        lines += [
            "No winner yet: confirm stopped before every run was recorded (run it again).",
            "",
        ]
    note = spread_note(c.rows)
    if note:
        lines += [note[0].upper() + note[1:] + ".", ""]
    return lines


def mark_history(ax: Any, story: Story) -> None:
    """The seed CNN's value as a dashed line across the optimization history, and confirm's
    winner as its mean ± std, each with its legend entry."""
    base = story.baseline
    if base.value is not None:
        ax.axhline(base.value, color="tab:gray", linestyle="--", linewidth=1.2, label=base.label)
    w, doc = story.winner, story.confirm.doc if story.confirm is not None else None
    if w is not None and doc is not None and doc.get("val_accuracy_mean") is not None:
        mean, std = float(doc["val_accuracy_mean"]), float(doc.get("val_accuracy_std") or 0.0)
        n = doc.get("n")
        ax.errorbar(
            [w.trial.number],
            [mean],
            yerr=[std],
            fmt="*",
            markersize=12,
            capsize=4,
            color="tab:green",
            label=f"confirmed winner (trial {w.trial.number}): {mean:.4f} ± {std:.4f} over "
            f"{n} seed{'' if n == 1 else 's'}",
        )
    # under the axes: beside them (Optuna's place) long labels leave the plot narrow, and
    # inside them the legend can hide a point
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, fontsize="small")


def history_caption(story: Story) -> str:
    """What :func:`mark_history` drew, for the plot's caption in the summary."""
    text = ""
    base = story.baseline
    if base.value is not None and base.trial is not None:
        text += f"; the dashed line is {SEED_CNN} (trial {base.trial.number}: {base.value:.4f})"
    if story.winner is not None:
        text += (
            f"; the star is confirm's winner, trial {story.winner.trial.number}, at its mean "
            "± std over new seeds"
        )
    return text


def trial_mark(story: Story, t: FrozenTrial) -> str:
    """`` (seed CNN)`` or `` (confirmed winner)`` after a trial's number in the summary."""
    marks = []
    if story.baseline.trial is not None and story.baseline.trial.number == t.number:
        marks.append("seed CNN")
    if story.winner is not None and story.winner.trial.number == t.number:
        marks.append("confirmed winner")
    return f" ({', '.join(marks)})" if marks else ""
