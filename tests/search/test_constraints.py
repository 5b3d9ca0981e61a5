"""A deployment budget (search.constraints): trials over it are infeasible through Optuna's
constraint support, and best/export/serve pick the best feasible trial. Real photos, real
training, a real SQLite file."""

from __future__ import annotations

import json
import signal
import urllib.request
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from conftest import hpsearch
from hpsearch.config import StudyConfig, load_study, parse_set
from hpsearch.engine.data import DeviceData, load_data
from hpsearch.errors import ConfigError
from hpsearch.results.read import pick_trial, ranked, status_text
from hpsearch.search.objective import make_keeper, make_objective

TINY = ["--set", "data.max_per_class=60", "--set", "data.val_max_per_class=30"]
SMALL = {"n_blocks": 2, "channels_b1": 8, "channels_b2": 8, "dense_units": 32}
LARGE = {"n_blocks": 2, "channels_b1": 128, "channels_b2": 128, "dense_units": 512}


def smoke(*items: str) -> StudyConfig:
    sets = ["data.max_per_class=40", "data.val_max_per_class=20", "train.epochs=1"]
    return load_study(
        "smoke", [parse_set(s) for s in [*sets, "search.enqueue_baseline=false", *items]]
    )


@pytest.fixture(scope="module")
def data() -> DeviceData:
    return load_data(smoke().data, torch.device("cpu"))


def test_constraints_load_and_bad_ones_are_one_line() -> None:
    c = smoke("search.constraints={max_params: 50000, max_latency_ms: 2.5}").search.constraints
    assert (c.max_params, c.max_latency_ms, c.latency_device) == (50000, 2.5, "cpu")
    assert not smoke().search.constraints.any
    for item, needle in [
        ("search.constraints={max_params: 0}", "max_params: must be >= 1"),
        ("search.constraints={max_latency_ms: -1}", "expected a positive number"),
        ("search.constraints={max_latency_ms: fast}", "expected a positive number"),
        ("search.constraints={latency_device: tpu}", "expected cpu or train"),
        ("search.constraints={max_flops: 3}", "unknown key"),
    ]:
        with pytest.raises(ConfigError, match=needle) as e:
            smoke(item)
        assert "\n" not in str(e.value)


def test_a_trial_over_max_params_is_pruned_before_training_and_infeasible(
    data: DeviceData, tmp_path: Path
) -> None:
    cfg = smoke("search.constraints={max_params: 100000}")
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial(LARGE)
    study.enqueue_trial(SMALL)
    keeper = make_keeper(cfg, data, tmp_path / "artifacts")
    study.optimize(make_objective(cfg, data, keeper=keeper), n_trials=2)
    large, small = study.trials
    assert large.state == TrialState.PRUNED and large.intermediate_values == {}
    assert large.user_attrs["pruned_reason"].startswith("over the deployment budget: ")
    assert large.constraints["max_params"] == large.user_attrs["n_params"] - 100000 > 0
    assert small.state == TrialState.COMPLETE
    assert small.constraints["max_params"] <= 0
    assert ranked(study) == [small]


def test_a_trial_over_max_latency_completes_infeasible_and_is_never_picked(
    data: DeviceData, tmp_path: Path
) -> None:
    cfg = smoke("search.constraints={max_latency_ms: 0.000001}")  # no model answers in 1 ns
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial(SMALL)
    keeper = make_keeper(cfg, data, tmp_path / "artifacts")
    study.optimize(make_objective(cfg, data, keeper=keeper), n_trials=1)
    (t,) = study.trials
    assert t.state == TrialState.COMPLETE and t.value is not None
    assert t.user_attrs["latency_ms"] > 0 and t.user_attrs["latency_device"].startswith("cpu:")
    assert t.constraints["max_latency_ms"] > 0
    assert "checkpoint" not in t.user_attrs  # a model over the budget is not kept
    assert ranked(study) == []
    with pytest.raises(Exception, match="no completed trial within its deployment budget"):
        pick_trial(study, None)
    assert "infeasible: 1 finished trial over the deployment budget" in status_text(
        study, "sqlite:///x.db"
    )

    generous = smoke("search.constraints={max_latency_ms: 100000}")
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial(SMALL)
    study.optimize(make_objective(generous, data), n_trials=1)
    assert study.trials[0].constraints["max_latency_ms"] < 0
    assert ranked(study) == study.trials


@pytest.mark.slow
def test_run_best_and_status_respect_the_budget(tmp_path: Path) -> None:
    """The real CLI: a budget below the seed baseline's size prunes it and every trial like it;
    best names a trial within the budget; status counts the ones over it."""
    budget = ["--set", "search.constraints={max_params: 150000, max_latency_ms: 100000}"]
    args = ["run", "--study", "smoke", "--trials", "6", "--set", "train.epochs=1", *TINY]
    r = hpsearch([*args, *budget], tmp_path)
    assert r.returncode == 0, r.stderr
    study = optuna.load_study(study_name="smoke", storage=f"sqlite:///{tmp_path / 'hpsearch.db'}")
    over = [t for t in study.trials if t.user_attrs["n_params"] > 150000]
    within = [t for t in study.trials if t.user_attrs["n_params"] <= 150000]
    assert over and within, [t.user_attrs["n_params"] for t in study.trials]
    assert study.trials[0].user_attrs.get("baseline") is True and study.trials[0] in over
    for t in over:
        assert t.state == TrialState.PRUNED and t.constraints["max_params"] > 0
    best = hpsearch(["best", "--study", "smoke"], tmp_path)
    assert best.returncode == 0, best.stderr
    winner = ranked(study)[0]
    assert winner.user_attrs["n_params"] <= 150000
    assert f"\ntrial: {winner.number}\n" in best.stdout
    status = hpsearch(["status", "--study", "smoke"], tmp_path)
    assert f"infeasible: {len(over)} finished trial" in status.stdout
    # serve answers with the same trial and shows its latency and budget on /model
    from serving import start, stops_cleanly

    proc, base = start("--study smoke --device cpu", tmp_path, tmp_path / "serve.log")
    try:
        with urllib.request.urlopen(f"{base}/model", timeout=30) as resp:
            info = json.load(resp)
    finally:
        stops_cleanly(proc, signal.SIGINT, tmp_path / "serve.log")
    assert info["trial"] == winner.number
    assert info["latency_ms"]["value"] == winner.user_attrs["latency_ms"] > 0
    assert info["constraints"]["feasible"] is True
    assert set(info["constraints"]["values"]) == {"max_params", "max_latency_ms"}


def test_a_heartbeat_retry_keeps_its_originals_constraint_without_a_warning(
    data: DeviceData, recwarn: pytest.WarningsRecorder
) -> None:
    """RetryFailedTrialCallback copies the stale trial's system attributes, its constraint
    included; setting it again would make Optuna warn on every retried trial."""
    cfg = smoke("search.constraints={max_params: 100000}")
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial(SMALL)
    study.optimize(make_objective(cfg, data), n_trials=1)
    original = study.trials[0]
    study.add_trial(
        optuna.trial.create_trial(
            state=TrialState.WAITING,
            system_attrs={**original.system_attrs, "failed_trial": original.number},
        )
    )
    study.optimize(make_objective(cfg, data), n_trials=1)
    retry = study.trials[1]
    assert retry.state == TrialState.COMPLETE
    assert retry.constraints == {"max_params": original.constraints["max_params"]}
    assert not [w for w in recwarn if "constraint" in str(w.message)]
