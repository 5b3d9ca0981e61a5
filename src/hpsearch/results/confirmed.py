"""What ``hpsearch confirm`` measured, as rows: each confirmed trial's runs and their means (over
the runs a confirm counts), the winner among them, and the table confirm prints. The confirm
command (:mod:`hpsearch.search.confirm`) and ``hpsearch report`` print the same table from here.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from hpsearch.results.read import ranked
from hpsearch.storage.state import (
    CONFIRM_CHECKPOINT,
    CONFIRM_N,
    CONFIRM_RUNS,
    CONFIRM_TEST_DATA,
    CONFIRM_TEST_MEAN,
    CONFIRM_TEST_N,
    CONFIRM_TEST_STD,
    CONFIRM_VAL_MEAN,
    CONFIRM_VAL_STD,
    CONFIRMED_ATTR,
    fresh_trials,
    read_attrs,
    study_attr,
    trial_attr,
)


def summarize(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The aggregate attributes of a trial's runs (a diverged run has no accuracy and is left
    out of the means)."""
    val = [float(r["val_accuracy"]) for r in runs if r.get("val_accuracy") is not None]
    tested = [r for r in runs if r.get("test_accuracy") is not None]
    test_dir = tested[-1].get("test_data") if tested else None  # the latest --data
    test = [float(r["test_accuracy"]) for r in tested if r.get("test_data") == test_dir]

    def std(xs: list[float]) -> float:
        return statistics.stdev(xs) if len(xs) > 1 else 0.0

    return {
        CONFIRM_N: len(val),
        CONFIRM_VAL_MEAN: statistics.fmean(val) if val else None,
        CONFIRM_VAL_STD: std(val) if val else None,
        CONFIRM_TEST_MEAN: statistics.fmean(test) if test else None,
        CONFIRM_TEST_STD: std(test) if test else None,
        CONFIRM_TEST_N: len(test),
        CONFIRM_TEST_DATA: test_dir,
    }


ALL_RUNS = "all_runs"  # in a Row: every recorded run, when CONFIRM_RUNS holds only the counted


@dataclass(frozen=True)
class Row:
    trial: FrozenTrial
    attrs: dict[str, Any]

    @property
    def mean(self) -> float | None:
        v = self.attrs.get(CONFIRM_VAL_MEAN)
        return float(v) if v is not None else None


def confirm_rows(study: optuna.Study, top: Sequence[FrozenTrial], seeds: int) -> list[Row]:
    """Each trial's confirm runs and their means, over its first ``seeds`` runs: runs an earlier,
    larger ``--seeds`` left (a stopped ``--seeds 1000``) are kept in the study but do not count
    towards this one's table and winner."""
    keys = [CONFIRM_RUNS, CONFIRM_VAL_MEAN, CONFIRM_VAL_STD, CONFIRM_N, CONFIRM_TEST_MEAN]
    keys += [CONFIRM_TEST_STD, CONFIRM_TEST_N, CONFIRM_TEST_DATA, CONFIRM_CHECKPOINT]
    rows = []
    for t in top:
        a = read_attrs(study, t, keys)
        runs = [r for r in trial_attr(t, CONFIRM_RUNS, list, a) or [] if isinstance(r, dict)]
        counted = [r for r in runs if isinstance(r.get("run"), int) and r["run"] < seeds]
        if len(counted) < len(runs):
            a = {**a, **summarize(counted), ALL_RUNS: runs, CONFIRM_RUNS: counted}
        rows.append(Row(t, a))
    return rows


def pick_winner(rows: Sequence[Row]) -> Row | None:
    """The highest confirmed mean; on a tie, the better search value (the order of ``rows``)."""
    scored = [(r.mean, -i, r) for i, r in enumerate(rows) if r.mean is not None]
    if not scored:
        return None
    return max(scored, key=lambda x: (x[0], x[1]))[2]


def table(rows: Sequence[Row], winner: Row | None, seeds: int) -> str:
    """The end-of-confirm table, one row per trial, best search value first."""
    has_test = any(r.attrs.get(CONFIRM_TEST_MEAN) is not None for r in rows)
    head = f"{'trial':>5}  {'search val':>10}  {'confirmed val (mean ± std)':>26}  {'runs':>5}"
    if has_test:
        head += f"  {'test (mean ± std)':>17}"
    lines = [head]
    for r in rows:
        a = r.attrs

        def pm(mean: Any, std: Any) -> str:
            return "-" if mean is None else f"{float(mean):.4f} ± {float(std or 0.0):.4f}"

        runs = [x for x in a.get(CONFIRM_RUNS) or [] if isinstance(x, dict)]
        diverged = sum(1 for x in runs if x.get("val_accuracy") is None)
        line = (
            f"{r.trial.number:>5}  {r.trial.values[0] if r.trial.values else 0.0:>10.4f}  "
            f"{pm(a.get(CONFIRM_VAL_MEAN), a.get(CONFIRM_VAL_STD)):>26}  "
            f"{f'{len(runs)}/{seeds}':>5}"
        )
        if has_test:
            line += f"  {pm(a.get(CONFIRM_TEST_MEAN), a.get(CONFIRM_TEST_STD)):>17}"
        if diverged:
            line += f"  ({diverged} diverged)"
        if winner is not None and r.trial.number == winner.trial.number:
            line += "  <- winner"
        lines.append(line)
    return "\n".join(lines)


def spread_note(rows: Sequence[Row]) -> str | None:
    """A note when the winner's lead is within the noise (less than one std of either)."""
    ranked = sorted((r for r in rows if r.mean is not None), key=lambda r: -(r.mean or 0.0))
    if len(ranked) < 2:
        return None
    a, b = ranked[0], ranked[1]
    gap = (a.mean or 0.0) - (b.mean or 0.0)
    noise = max(float(a.attrs.get(CONFIRM_VAL_STD) or 0), float(b.attrs.get(CONFIRM_VAL_STD) or 0))
    if math.isfinite(gap) and gap < noise:
        return (
            f"note: trial {a.trial.number} leads trial {b.trial.number} by {gap:.4f}, less than "
            f"one standard deviation ({noise:.4f}); more --seeds would tell them apart"
        )
    return None


@dataclass(frozen=True)
class Recorded:
    """What the last ``hpsearch confirm`` left in a study: its rows (best search value first),
    the winner's row, the study's ``confirmed`` attribute, and the seeds each row counts."""

    rows: list[Row]
    winner: Row | None
    doc: dict[str, Any] | None
    seeds: int


def recorded(study: optuna.Study) -> Recorded | None:
    """The confirm table as the last confirm printed it (its ``--top`` trials, its ``--seeds``
    runs each), read back from the study; None when no trial has confirm runs. A confirm that
    was stopped before it recorded a winner has rows and no winner."""
    doc = study_attr(study, CONFIRMED_ATTR, dict)
    # as the database has them now: confirm writes a finished trial's attributes past Optuna
    fresh = {
        t.number: t
        for t in fresh_trials(study)
        if CONFIRM_RUNS in t.user_attrs or CONFIRM_VAL_MEAN in t.user_attrs
    }
    confirmed = [fresh[t.number] for t in ranked(study) if t.number in fresh]
    if not confirmed:
        return None
    top, last = (doc or {}).get("top"), (doc or {}).get("seeds")
    won = (doc or {}).get("trial")
    if isinstance(top, int) and not isinstance(top, bool) and top > 0:
        # an earlier, larger --top left runs on trials this confirm did not compare
        confirmed = [t for i, t in enumerate(confirmed) if i < top or t.number == won]
    if isinstance(last, int) and not isinstance(last, bool) and last > 0:
        seeds = last
    else:  # no winner recorded yet: every run counts
        seeds = max(1, *(len(trial_attr(t, CONFIRM_RUNS, list) or []) for t in confirmed))
    rows = confirm_rows(study, confirmed, seeds)
    winner = next((r for r in rows if doc is not None and r.trial.number == won), None)
    return Recorded(rows, winner, doc, seeds)
