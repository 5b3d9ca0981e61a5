"""The catdog study's pruner, as its file configures it, on the history that starved it.

With ``n_startup_trials: 2`` a lucky seed baseline and one more finished trial made a median that
every later trial missed after one epoch (18 of 20 pruned; docs/search-quality.md). These
tests replay that history through the pruner the study file builds today.
"""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from hpsearch.config import load_study, parse_set
from hpsearch.storage.study import make_pruner

DIST = {"x": FloatDistribution(0.0, 1.0)}
SEED_CURVE = {1: 0.664, 2: 0.69, 3: 0.71, 4: 0.72, 5: 0.735}  # the seed at its luckiest


def study_with(tmp_path: Path, finished: list[tuple[TrialState, dict[int, float]]]) -> optuna.Study:
    study = optuna.create_study(
        storage=f"sqlite:///{tmp_path / 'p.db'}",
        direction="maximize",
        pruner=make_pruner(load_study("catdog")),
    )
    for state, curve in finished:
        study.add_trial(
            create_trial(
                state=state,
                value=curve[max(curve)] if state == TrialState.COMPLETE else None,
                params={"x": 0.5},
                distributions=DIST,
                intermediate_values=curve,
            )
        )
    return study


def pruned_after_epoch_1(study: optuna.Study, accuracy: float) -> bool:
    trial = study.ask(DIST)
    trial.report(accuracy, 1)  # hpsearch reports epoch k as step k
    return bool(trial.should_prune())


def test_two_finished_trials_do_not_stop_a_slow_starter(tmp_path: Path) -> None:
    trial_1 = {1: 0.59, 2: 0.62, 3: 0.64, 4: 0.65, 5: 0.66}
    study = study_with(
        tmp_path, [(TrialState.COMPLETE, SEED_CURVE), (TrialState.COMPLETE, trial_1)]
    )
    assert not pruned_after_epoch_1(study, 0.55)


def test_after_five_finished_trials_chance_level_is_stopped_and_the_top_half_runs_on(
    tmp_path: Path,
) -> None:
    curves = [
        SEED_CURVE,
        {1: 0.59, 2: 0.62, 3: 0.64, 4: 0.65, 5: 0.66},
        {1: 0.61, 2: 0.66, 3: 0.69, 4: 0.70, 5: 0.71},
        {1: 0.52, 2: 0.55, 3: 0.58, 4: 0.60, 5: 0.62},
        {1: 0.50, 2: 0.50, 3: 0.50, 4: 0.50, 5: 0.50},  # never learned
    ]
    study = study_with(tmp_path, [(TrialState.COMPLETE, c) for c in curves])
    assert pruned_after_epoch_1(study, 0.50)
    assert not pruned_after_epoch_1(study, 0.60)  # above the median of 0.59 after one epoch


def test_a_percentile_pruner_keeps_the_share_it_is_given(tmp_path: Path) -> None:
    step_1 = [0.50, 0.60, 0.65, 0.70, 0.75]  # five finished trials after one epoch
    for keep, stopped in ((50, False), (40, True)):
        study = optuna.create_study(
            storage=f"sqlite:///{tmp_path / f'keep{keep}.db'}",
            direction="maximize",
            pruner=make_pruner(
                load_study(
                    "catdog",
                    [parse_set(f"search.pruner={{name: percentile, percentile: {keep}}}")],
                )
            ),
        )
        for v in step_1:
            curve = {1: v, 2: v + 0.01}
            study.add_trial(
                create_trial(
                    value=curve[2], params={"x": 0.5}, distributions=DIST, intermediate_values=curve
                )
            )
        # 0.66 is above the median (0.65) but below the best 40% (the 60th percentile, 0.67)
        assert pruned_after_epoch_1(study, 0.66) is stopped
