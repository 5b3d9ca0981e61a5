from __future__ import annotations

import itertools
from importlib import metadata
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from hpsearch.config import StudyConfig, load_study, parse_set
from hpsearch.engine.data import DeviceData, load_data
from hpsearch.engine.train import EpochMetrics
from hpsearch.search.objective import TrialOutOfMemory, make_objective
from hpsearch.storage.study import open_study
from hpsearch.storage.urls import open_storage


@pytest.fixture(scope="module")
def cfg() -> StudyConfig:
    return load_study(
        "smoke",
        [
            parse_set("data.max_per_class=80"),
            parse_set("data.val_max_per_class=40"),
            parse_set("train.epochs=3"),
        ],
    )


@pytest.fixture(scope="module")
def data(cfg: StudyConfig) -> DeviceData:
    return load_data(cfg.data, torch.device("cpu"))


def test_reports_every_epoch_and_records_attrs(
    tmp_path: Path, cfg: StudyConfig, data: DeviceData
) -> None:
    storage = open_storage(f"sqlite:///{tmp_path / 'o.db'}")
    study = open_study(cfg, storage, "o")
    seen: list[tuple[int, int]] = []
    study.optimize(
        make_objective(cfg, data, lambda t, m: seen.append((t.number, m.epoch))), n_trials=2
    )
    trials = optuna.load_study(study_name="o", storage=f"sqlite:///{tmp_path / 'o.db'}").trials
    assert seen == [(0, 1), (0, 2), (0, 3), (1, 1), (1, 2), (1, 3)]  # 2 pruner startup trials
    t0 = trials[0]
    assert t0.user_attrs["baseline"] is True  # the enqueued seed CNN
    assert t0.state == optuna.trial.TrialState.COMPLETE
    assert sorted(t0.intermediate_values) == [1, 2, 3]
    assert t0.value == t0.intermediate_values[3]
    for key in (
        "n_params",
        "train_images_per_s",
        "epoch_seconds",
        "device",
        "seed",
        "versions",
        "config",
    ):
        assert key in t0.user_attrs, key
    assert t0.user_attrs["versions"]["torch"] == metadata.version("torch")
    assert t0.user_attrs["config"]["train"]["epochs"] == 3
    assert t0.user_attrs["seed"] != trials[1].user_attrs["seed"]


def test_prunes_when_the_pruner_says_so(tmp_path: Path, cfg: StudyConfig, data: DeviceData) -> None:
    study = optuna.create_study(
        storage=f"sqlite:///{tmp_path / 'p.db'}",
        direction="maximize",
        pruner=optuna.pruners.ThresholdPruner(lower=1.01),
    )
    epochs: list[EpochMetrics] = []
    study.optimize(make_objective(cfg, data, lambda t, m: epochs.append(m)), n_trials=2)
    for t in study.trials:
        assert t.state == optuna.trial.TrialState.PRUNED
        assert list(t.intermediate_values) == [1]
        assert "after epoch 1" in t.user_attrs["pruned_reason"]
    assert len(epochs) == 2


def test_nan_loss_prunes_with_reason(tmp_path: Path, data: DeviceData) -> None:
    # every family fixed, so the diverging configuration is the same in every run
    fixed = {
        "n_blocks": 2,
        "channels": 32,
        "kernel_size": 3,
        "activation": "leaky_relu",
        "batch_norm": "false",
        "residual": "true",
        "dropout": 0.0,
        "dense_units": 512,
        "optimizer": "sgd",
        "lr": 10.0,
        "momentum": 0.99,
        "weight_decay": 0.0,
        "lr_decay_step": 10,
        "lr_decay_gamma": 1.0,
        "batch_size": 16,
    }
    bad = load_study(
        "smoke",
        [parse_set(f"search.space.{k}={v}") for k, v in fixed.items()]
        + [parse_set("search.enqueue_baseline=false"), parse_set("train.epochs=3")],
    )
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'n.db'}", direction="maximize")
    study.optimize(make_objective(bad, data), n_trials=1)
    (t,) = study.trials
    assert t.state == optuna.trial.TrialState.PRUNED
    assert "non-finite training loss" in t.user_attrs["pruned_reason"]


def test_out_of_host_memory_fails_the_trial_and_steers_the_search(data: DeviceData) -> None:
    """A real allocation failure: one dense layer of 4096*16*16 x 65536 floats (275 GB)."""
    cfg = load_study(
        "smoke",
        [
            parse_set("data.max_per_class=80"),
            parse_set("data.val_max_per_class=40"),
            parse_set("train.epochs=1"),
            parse_set("search.enqueue_baseline=false"),
            parse_set("search.space.n_blocks=1"),
            parse_set("search.space.kernel_size=3"),  # size depends on channels and dense only
            parse_set("search.space.residual=false"),
            parse_set("search.space.batch_norm=false"),
            parse_set("search.space.channels=[8, 4096]"),
            parse_set("search.space.dense_units=[16, 65536]"),
            parse_set("search.space.batch_size=[16, 32]"),
        ],
    )
    study = optuna.create_study(direction="maximize")
    small = {"channels_b1": 8, "dense_units": 16, "batch_size": 16}
    for params in (
        small,
        {"channels_b1": 4096, "dense_units": 65536, "batch_size": 16},  # runs out of memory
        {"channels_b1": 4096, "dense_units": 65536, "batch_size": 32},  # no smaller: predicted
        {**small, "batch_size": 32},  # the search carries on
    ):
        study.enqueue_trial(params)
    study.optimize(make_objective(cfg, data), n_trials=4, catch=(TrialOutOfMemory,))
    states = [t.state for t in study.trials]
    assert states == [
        TrialState.COMPLETE,
        TrialState.FAIL,
        TrialState.PRUNED,
        TrialState.COMPLETE,
    ]
    oom = study.trials[1].user_attrs
    assert oom["oom"] is True and oom["fail_reason"].startswith("out of host memory: ")
    assert oom["n_params"] > 10**10
    assert (
        study.trials[2]
        .user_attrs["pruned_reason"]
        .startswith("predicted out of memory: trial 1 ran out of memory")
    )
    assert study.trials[2].intermediate_values == {}  # pruned before training: ranks last


def test_out_of_memory_frees_the_failed_trials_tensors_before_collecting(
    data: DeviceData, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Recovery runs after the except block: inside it, the exception's traceback still holds
    fit()'s frames and nothing they hold can be freed (pytorch issue 18853)."""
    import gc
    import weakref

    import hpsearch.search.objective as objective

    held: list[weakref.ref[torch.Tensor]] = []

    def fit(*args: object, **kwargs: object) -> None:
        activations = torch.ones(4_000_000)  # 16 MB the failed step was holding
        held.append(weakref.ref(activations))
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 9 GB")

    alive_when_collected: list[bool] = []
    collect = gc.collect

    def watching_collect(*args: int) -> int:
        n = collect(*args)
        alive_when_collected.append(held[0]() is not None)
        return n

    monkeypatch.setattr(objective, "fit", fit)
    monkeypatch.setattr(objective.gc, "collect", watching_collect)
    cfg = load_study("smoke", [parse_set("search.enqueue_baseline=false")])
    study = optuna.create_study(direction="maximize")
    study.optimize(make_objective(cfg, data), n_trials=1, catch=(TrialOutOfMemory,))
    monkeypatch.undo()
    assert study.trials[0].state == TrialState.FAIL
    assert study.trials[0].user_attrs["fail_reason"].startswith("out of host memory: ")
    assert alive_when_collected == [False]


def test_out_of_memory_is_predicted_only_for_trials_no_smaller_in_every_way() -> None:
    """A trial with more parameters but far fewer activations (a narrow network with a wide
    dense layer) is not pruned because a wide network ran out of memory."""
    from hpsearch.search.objective import predicted_oom

    study = optuna.create_study(direction="maximize")
    failed = optuna.trial.create_trial(
        state=TrialState.FAIL,
        user_attrs={
            "oom": True,
            "device": "cuda:H100",
            "n_params": 1_000_000,
            "batch_size": 64,
            "activations": 10_000_000,
        },
    )
    study.add_trial(failed)
    trials = study.get_trials(states=(TrialState.FAIL,))
    assert predicted_oom(trials, 5_000_000, 64, "cuda:H100", 100_000) is None
    assert predicted_oom(trials, 5_000_000, 64, "cuda:H100", 10_000_000) is trials[0]
    assert predicted_oom(trials, 5_000_000, 32, "cuda:H100", 10_000_000) is None
    assert predicted_oom(trials, 5_000_000, 64, "cpu:x86_64 x2", 10_000_000) is None


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_each_epoch_is_recorded_with_one_commit(
    backend: str,
    tmp_path: Path,
    cfg: StudyConfig,
    data: DeviceData,
    request: pytest.FixtureRequest,
) -> None:
    """An epoch's intermediate value and its five attributes are one transaction, not six (with
    no pruner and no heartbeat nothing else commits between two epochs' hooks)."""
    import sqlalchemy as sa

    url = (
        f"sqlite:///{tmp_path / 'c.db'}"
        if backend == "sqlite"
        else request.getfixturevalue("pg_url")
    )
    storage = open_storage(url)
    study = optuna.create_study(
        storage=storage, direction="maximize", pruner=optuna.pruners.NopPruner()
    )
    commits = 0

    def count(conn: object) -> None:
        nonlocal commits
        commits += 1

    sa.event.listen(storage.engine, "commit", count)
    at_epoch: list[int] = []
    study.optimize(make_objective(cfg, data, lambda t, m: at_epoch.append(commits)), n_trials=1)
    assert [b - a for a, b in itertools.pairwise(at_epoch)] == [1, 1]
    (t,) = optuna.load_study(study_name=study.study_name, storage=storage).trials
    assert t.state == TrialState.COMPLETE and sorted(t.intermediate_values) == [1, 2, 3]
    a = t.user_attrs
    assert a["epochs_run"] == 3 and a["train_images_per_s"] > 0 and a["epoch_seconds"] > 0
    assert isinstance(a["train_loss"], float) and isinstance(a["val_loss"], float)
    assert a["n_params"] > 0 and a["seed"] >= 0 and a["device"].startswith("cpu:")
