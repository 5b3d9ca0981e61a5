"""Time spent and time left: the estimates, the progress lines and the 12-hour hint, on real
Optuna trials in an in-memory study."""

from __future__ import annotations

import io
import re
from datetime import datetime, timedelta
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial, TrialState

from conftest import argv, hpsearch
from hpsearch.engine.train import EpochMetrics
from hpsearch.results.timing import duration, mean_trial_seconds, search_seconds, time_left
from hpsearch.search.progress import LONG_RUN_SECONDS, Progress, RunSize, shrink_hint

T0 = datetime(2026, 1, 1, 12, 0, 0)


def trial(
    start_s: float, end_s: float | None, state: TrialState = TrialState.COMPLETE
) -> FrozenTrial:
    """A trial that ran from ``start_s`` to ``end_s`` seconds after T0 (None: still running)."""
    return FrozenTrial(
        number=0,
        state=state,
        value=0.7 if state == TrialState.COMPLETE else None,
        values=None,
        datetime_start=T0 + timedelta(seconds=start_s),
        datetime_complete=None if end_s is None else T0 + timedelta(seconds=end_s),
        params={"lr": 1e-3},
        distributions={"lr": FloatDistribution(1e-4, 1e-2, log=True)},
        user_attrs={},
        system_attrs={},
        intermediate_values={},
        trial_id=0,
    )


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(42, "42 s"), (450, "7.5 min"), (3 * 3600 + 720, "3.2 h"), (5 * 86400, "5.0 days")],
)
def test_duration(seconds: float, text: str) -> None:
    assert duration(seconds) == text


def test_search_time_counts_parallel_trials_once_and_skips_gaps() -> None:
    trials = [
        trial(0, 100),
        trial(50, 150),  # overlaps the first: 0..150
        trial(1000, 1060),  # a later run, after a gap: +60
        trial(1030, 1090, TrialState.PRUNED),  # +30
    ]
    assert search_seconds(trials) == pytest.approx(240)
    # mean of the finished and pruned trials: (100 + 100 + 60 + 60) / 4
    assert mean_trial_seconds(trials) == pytest.approx(80)
    running = [trial(0, None, TrialState.RUNNING)]
    assert search_seconds(running, T0 + timedelta(seconds=30)) == pytest.approx(30)
    assert mean_trial_seconds(running) is None


def test_time_left() -> None:
    assert time_left(10, 60.0, 1) == 600.0
    assert time_left(10, 60.0, 4) == 150.0
    assert time_left(-1, 60.0, 1) == 0.0


def test_shrink_hint_names_the_keys_with_a_ready_example() -> None:
    # the case: 100 trials of 10 epochs at 158 s per epoch, 128px, 8,000 images a class
    per_trial = 10 * 158.0
    line = shrink_hint(99 * per_trial, per_trial, 99, 1, RunSize(128, 10, 8000), "catdog")
    assert "\n" not in line
    assert "43.5 h" in line and "99 trials left" in line
    for key in ("data.image_size", "train.epochs", "data.max_per_class"):
        assert key in line
    example = re.search(r"e\.g\. (.*) --study-name catdog-small \(about ([\d.]+) h\)", line)
    assert example is not None, line
    assert example[1] == "--set data.image_size=64"  # a quarter of the time is enough here
    assert float(example[2]) * 3600 <= LONG_RUN_SECONDS
    # a much longer run needs every key
    line = shrink_hint(40 * 86400, 3600, 1000, 1, RunSize(128, 10, 8000), "catdog")
    assert "--set data.image_size=64 --set train.epochs=5 --set data.max_per_class=" in line
    # never an image size the study's deepest network cannot take (5 blocks need 32px)
    line = shrink_hint(40 * 86400, 3600, 1000, 1, RunSize(32, 10, 8000, 32), "catdog")
    assert "data.image_size=" not in line.split("e.g.")[1]


def metrics(epoch: int, epochs: int, seconds: float) -> EpochMetrics:
    return EpochMetrics(epoch, epochs, 0.69, 0.5, 0.69, 0.5, 1e-3, seconds, seconds, 100.0)


def test_progress_estimates_from_the_first_epoch_then_from_finished_trials() -> None:
    study = optuna.create_study(direction="maximize")
    out = io.StringIO()
    progress = Progress(100, stream=out, size=RunSize(128, 10, 8000))
    progress.seed_time(study)
    assert progress.left is None  # nothing finished yet
    t = study.ask()
    progress.epoch(t, metrics(1, 10, 158.0))
    line = out.getvalue().splitlines()[-1]
    # 100 trials x 10 epochs x 158 s, less the epoch already run
    assert re.match(r"\[0/100 done \| best - \| \d+ s, ~43\.\d h left\] trial 0 epoch 1/10", line)

    # it fails; a trial of 26 minutes finishes: the estimate uses it, and the 12-hour hint is
    # printed once
    study.tell(t, state=TrialState.FAIL)
    study.add_trial(trial(0, 1560))
    progress.trial_done(study, study.trials[-1])
    lines = out.getvalue().splitlines()
    assert re.search(r"\[1/100 done \| best 0\.7000 \(trial 1\) \| .*, ~42\.\d h left\]", lines[-2])
    assert lines[-1].startswith("note: this budget needs about 42.")
    assert "--set data.image_size=64" in lines[-1]
    progress.trial_done(study, study.trials[-1])
    assert not out.getvalue().splitlines()[-1].startswith("note:")  # once


def test_no_hint_under_twelve_hours_or_without_a_size() -> None:
    study = optuna.create_study(direction="maximize")
    study.add_trial(trial(0, 60))
    out = io.StringIO()
    Progress(10, stream=out, size=RunSize(32, 2, 300)).trial_done(study, study.trials[0])
    assert "note:" not in out.getvalue()


@pytest.mark.slow
def test_status_shows_time_spent_and_left(tmp_path: Path) -> None:
    """Two finished trials of 10 and 20 minutes in two runs a day apart, one running now: 30
    minutes spent (the gap does not count), 8 trials left x 15 minutes / 1 worker running."""
    db = f"sqlite:///{tmp_path / 'hpsearch.db'}"
    study = optuna.create_study(study_name="smoke", storage=db, direction="maximize")
    study.set_user_attr("target_trials", 10)
    day = timedelta(days=1)
    study.add_trial(trial(0, 600))
    study.add_trial(replace_times(trial(0, 1200, TrialState.PRUNED), day.total_seconds()))
    study.ask()  # running, started now
    r = hpsearch(argv("status --study smoke"), tmp_path)
    assert r.returncode == 0, r.stderr
    time_line = next(x for x in r.stdout.splitlines() if x.startswith("time: "))
    assert re.fullmatch(
        r"time: 30\.\d min spent searching \(while any trial ran\); about 2\.0 h left for the "
        r"budget \(8 trials x 15\.0 min, the mean of the finished and pruned trials, / 1 worker "
        r"running now\)",
        time_line,
    ), time_line
    assert "budget: 2 of 10 trials finished; 8 left" in r.stdout


def replace_times(t: FrozenTrial, shift_s: float) -> FrozenTrial:
    assert t.datetime_start is not None and t.datetime_complete is not None
    t.datetime_start += timedelta(seconds=shift_s)
    t.datetime_complete += timedelta(seconds=shift_s)
    return t
