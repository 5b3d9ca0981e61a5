"""hpsearch.search.run and hpsearch.search.train_one in this process, without the CLI: run a
search, join it, train one of its trials; and the order of a run's checks (the storage before
anything slow, the data before anything written). Real SQLite files in tmp_path, the real photos."""

from __future__ import annotations

import os
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from hpsearch.config import load_study, parse_set
from hpsearch.engine.data import load_data
from hpsearch.engine.train import EpochMetrics
from hpsearch.errors import ConfigError, DataError, HpsearchError, StorageError
from hpsearch.search.objective import TrialOutOfMemory, make_objective
from hpsearch.search.run import JoinOptions, RunOptions, RunSummary, join_search, run_search
from hpsearch.search.train_one import TrainOptions, train_one
from hpsearch.space import trial_seed
from hpsearch.storage.study import open_study
from hpsearch.storage.urls import check_storage, open_storage

TINY = ("data.max_per_class=40", "data.val_max_per_class=20", "train.epochs=1")
SECRET = "s3cret-Pa55"


def test_a_bad_storage_is_reported_before_the_data_is_decoded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The data is wrong too (its root does not exist), but the storage is said first, and
    nothing was decoded, probed or written before it."""
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("HPSEARCH_CACHE", str(cache))
    said: list[str] = []
    url = f"sqlite:///{tmp_path / 'no' / 'such' / 'dir' / 'hpsearch.db'}"
    opts = RunOptions(
        "smoke", 1, (*TINY, f"data.root={tmp_path / 'no-photos'}"), storage=url, workers=1
    )
    with pytest.raises(StorageError, match="cannot open storage") as e:
        run_search(opts, said.append)
    assert f"{tmp_path / 'no' / 'such' / 'dir'} does not exist" in str(e.value)
    assert said == []  # no GPU probe, no study, no data line
    assert not list(cache.iterdir())  # nothing decoded
    assert sorted(os.listdir(tmp_path)) == ["cache"]  # nothing written

    # with a good storage, the same run stops at the data, and still writes nothing
    good = tmp_path / "hpsearch.db"
    with pytest.raises(DataError):
        run_search(
            RunOptions("smoke", 1, opts.overrides, storage=f"sqlite:///{good}", workers=1),
            said.append,
        )
    assert said == [] and not good.exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_a_bad_storage_is_reported_before_the_gpu_probe(tmp_path: Path) -> None:
    """Without --trials-per-gpu, a run on a GPU machine measures a trial first (it trains):
    a mistyped storage is said before that."""
    url = f"sqlite:///{tmp_path / 'typo' / 'hpsearch.db'}"
    said: list[str] = []
    with pytest.raises(StorageError, match="cannot open storage"):
        run_search(RunOptions("smoke", 1, TINY, storage=url), said.append)
    assert not any(line.startswith("measuring one trial") for line in said)
    assert said == [] and not list(tmp_path.iterdir())


def test_a_file_that_is_no_database_is_reported_before_the_data(tmp_path: Path) -> None:
    db = tmp_path / "notes.db"
    db.write_text("not a database, whatever its name says\n" * 20)
    before = db.read_bytes()
    opts = RunOptions(
        "smoke", 1, (f"data.root={tmp_path / 'no-photos'}",), storage=f"sqlite:///{db}"
    )
    with pytest.raises(StorageError, match="file is not a database"):
        run_search(opts, print)
    assert db.read_bytes() == before


def test_check_storage_reads_and_never_creates(tmp_path: Path) -> None:
    new = tmp_path / "new.db"
    check_storage(f"sqlite:///{new}")  # a new database: its directory is usable
    assert not new.exists()
    for url, needle in [
        ("sqlite://", "in-memory SQLite database"),
        ("mongodb://host/db", "unknown scheme 'mongodb'"),
        ("not a url", "is not a database URL"),
        (f"sqlite:///{tmp_path}", "unable to open database file"),  # a directory
        (f"postgresql://u:{SECRET}@127.0.0.1:1/db", "cannot open storage postgresql://u:***@"),
    ]:
        with pytest.raises(StorageError) as e:
            check_storage(url)
        assert needle in str(e.value) and SECRET not in str(e.value)
    assert not list(tmp_path.iterdir())


def test_join_and_train_need_an_existing_study(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'hpsearch.db'}"
    with pytest.raises(StorageError, match="no database at"):
        join_search(JoinOptions("smoke", TINY, storage=url), print)
    with pytest.raises(StorageError, match="no database at"):
        train_one(TrainOptions("smoke", "best", TINY, storage=url), print)
    with pytest.raises(ConfigError, match="--trial: expected baseline, best or a trial number"):
        train_one(TrainOptions("smoke", "abc", TINY, storage=url), print)
    assert not list(tmp_path.iterdir())


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[str], RunSummary]:
    """One real search of 2 tiny trials in this process: (storage URL, lines said, summary)."""
    db = tmp_path_factory.mktemp("search") / "hpsearch.db"
    said: list[str] = []
    opts = RunOptions(
        "smoke",
        2,
        TINY,
        storage=f"sqlite:///{db}",
        pruner="none",
        workers=1,
        command=f"run --study smoke --storage postgresql://u:{SECRET}@db/x",
    )
    summary = run_search(opts, said.append)
    return f"sqlite:///{db}", said, summary


@pytest.mark.slow
def test_run_search_runs_its_trials_here_and_records_the_command_it_is_given(
    searched: tuple[str, list[str], RunSummary],
) -> None:
    url, said, summary = searched
    assert summary.done and summary.finished_here == 2 and summary.finished == 2
    assert summary.failed == 0 and summary.running == 0 and summary.worker_exits == ()
    assert summary.study_name == "smoke" and summary.url == url and summary.goal == 2
    assert summary.best is not None and 0.0 <= summary.best.val_accuracy <= 1.0
    assert said[0].startswith(f"study 'smoke' in {url}: 0 finished trials so far, running 2")
    assert said[1].startswith("data: 80 train / 40 val images of cat, dog at 32px on cpu")
    trials = optuna.load_study(study_name="smoke", storage=url).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    for t in trials:
        assert t.user_attrs["command"] == "run --study smoke --storage postgresql://u:***@db/x"


@pytest.mark.slow
def test_join_search_of_a_spent_budget_joins_and_leaves(
    searched: tuple[str, list[str], RunSummary],
) -> None:
    url = searched[0]
    said: list[str] = []
    # the run's settings, --pruner none included (other ones would be noted first)
    settings = (*TINY, "search.pruner=none")
    join_search(JoinOptions("smoke", settings, storage=url, worker_id=0, workers=1), said.append)
    assert said[0].startswith(f"worker joined study 'smoke' in {url} on cpu; budget 2 trials")
    assert len(optuna.load_study(study_name="smoke", storage=url).trials) == 2  # none added


@pytest.mark.slow
def test_train_one_trains_a_trial_with_its_recorded_seed(
    searched: tuple[str, list[str], RunSummary],
) -> None:
    url = searched[0]
    (_, t1) = optuna.load_study(study_name="smoke", storage=url).trials
    said: list[str] = []
    epochs: list[EpochMetrics] = []
    trained = train_one(TrainOptions("smoke", "1", TINY, storage=url), said.append, epochs.append)
    assert trained.label == "trial 1" and trained.params == t1.params
    assert trained.seed == t1.user_attrs["seed"]
    assert said == ["training trial 1 for 1 epochs on 80 images at 32px on cpu"]
    assert [m.epoch for m in epochs] == [1]
    assert trained.result.val_accuracy == epochs[0].val_accuracy

    baseline = train_one(TrainOptions("smoke", "baseline", TINY, storage=url), said.append)
    assert baseline.label == "baseline" and baseline.seed == trial_seed(0, 0)
    assert baseline.result.n_params > 0


@pytest.mark.slow
def test_train_one_runs_out_of_memory_as_a_trial_does(tmp_path: Path) -> None:
    """The trial that ran out of host memory in the search (FAIL) is trained again by
    ``train``: the same spec, the same out-of-memory handling, one line."""
    huge = (
        *TINY,
        "search.enqueue_baseline=false",
        "search.space.n_blocks=1",
        "search.space.kernel_size=3",
        "search.space.residual=false",
        "search.space.batch_norm=false",
        "search.space.channels=[8, 4096]",
        "search.space.dense_units=[16, 65536]",
        "search.space.batch_size=[16, 32]",
    )
    cfg = load_study("smoke", [parse_set(o) for o in huge])
    url = f"sqlite:///{tmp_path / 'hpsearch.db'}"
    study = open_study(cfg, open_storage(url), "smoke")
    study.enqueue_trial({"channels_b1": 4096, "dense_units": 65536, "batch_size": 16})
    data = load_data(cfg.data, torch.device("cpu"))
    study.optimize(make_objective(cfg, data), n_trials=1, catch=(TrialOutOfMemory,))
    (failed,) = study.trials
    assert failed.state == TrialState.FAIL
    assert failed.user_attrs["fail_reason"].startswith("out of host memory: ")
    with pytest.raises(HpsearchError) as e:
        train_one(TrainOptions("smoke", "0", huge, storage=url), print)
    assert str(e.value).startswith("trial 0 ran out of host memory: ")


@pytest.mark.slow
def test_train_one_trains_a_grid_trial_whatever_the_study_file_samples_now(
    tmp_path: Path,
) -> None:
    """A grid trial holds only the grid's parameters (the rest are fixed or the baseline's):
    ``train --trial N`` reads them as they were drawn, although the study file says tpe (the
    search ran with ``--sampler grid``). It said "was it run with a different search space?"."""
    url = f"sqlite:///{tmp_path / 'hpsearch.db'}"
    run_search(
        RunOptions("smoke", 1, (*TINY, "search.sampler=grid"), storage=url, workers=1),
        lambda _: None,
    )
    (t0,) = optuna.load_study(study_name="smoke", storage=url).trials
    assert t0.state == TrialState.COMPLETE and set(t0.params) == {"kernel_size", "lr"}
    trained = train_one(TrainOptions("smoke", "0", TINY, storage=url), lambda _: None)
    assert trained.label == "trial 0" and trained.params == t0.params
    assert trained.result.val_accuracy == pytest.approx(t0.value)  # the same trial, again
