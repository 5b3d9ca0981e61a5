"""The real CLI in subprocesses, on real photos and real SQLite files."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from conftest import hpsearch, popen

pytestmark = pytest.mark.slow

TINY = ["--set", "data.max_per_class=60", "--set", "data.val_max_per_class=30"]


def load(workdir: Path, name: str = "smoke") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{workdir / 'hpsearch.db'}")


def finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.trials if t.state.is_finished()]


def test_run_then_resume_adds_trials(workdir: Path) -> None:
    r = hpsearch(["run", "--study", "smoke", "--trials", "4"], workdir)
    assert r.returncode == 0, r.stderr
    assert "[4/4 done" in r.stdout and "epoch 2/2" in r.stdout and "best" in r.stdout
    assert (workdir / "hpsearch.db").is_file()  # the default: SQLite in the working directory
    r = hpsearch(["run", "--study", "smoke", "--trials", "2"], workdir)
    assert r.returncode == 0, r.stderr
    assert "4 finished trials so far" in r.stdout
    study = load(workdir)
    done = finished(study)
    assert len(done) == 6 and len(study.trials) == 6
    assert done[0].user_attrs["baseline"] is True
    for t in done:
        assert 1 in t.intermediate_values
        if t.state == optuna.trial.TrialState.COMPLETE:
            assert sorted(t.intermediate_values) == [1, 2]
        assert {
            "n_blocks",
            "lr",
            "weight_decay",
            "lr_decay_step",
            "lr_decay_gamma",
            "dropout",
            "batch_size",
            "optimizer",
            "activation",
            "kernel_size_b1",
            "channels_b1",
        } <= set(t.params)
    # the resumed run does not replay the first run's proposals
    assert done[4].params != done[1].params and done[5].params != done[2].params

    # Optuna's own CLI reads the study
    out = subprocess.run(
        [
            str(Path(sys.executable).parent / "optuna"),
            "trials",
            "--study-name",
            "smoke",
            "--storage",
            f"sqlite:///{workdir / 'hpsearch.db'}",
            "-f",
            "json",
        ],
        capture_output=True,
        text=True,
        cwd=workdir,
        check=True,
    )
    rows = json.loads(out.stdout)
    assert [row["number"] for row in rows] == [0, 1, 2, 3, 4, 5]
    assert rows[0]["params"]["lr"] == 1e-3 and rows[0]["user_attrs"]["baseline"] is True

    # train --trial best retrains the study's best trial and ends with one JSON line
    r = hpsearch(
        ["train", "--study", "smoke", "--trial", "best", "--set", "train.epochs=1"], workdir
    )
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["trial"] == f"trial {study.best_trial.number}"
    assert result["params"] == study.best_trial.params


@pytest.mark.parametrize("sampler", ["random", "gp", "cmaes", "qmc"])
def test_samplers(workdir: Path, sampler: str) -> None:
    r = hpsearch(
        [
            "run",
            "--study",
            "smoke",
            "--trials",
            "3",
            "--sampler",
            sampler,
            "--pruner",
            "none",
            "--set",
            "train.epochs=1",
            *TINY,
        ],
        workdir,
    )
    assert r.returncode == 0, r.stderr
    assert f"sampler {sampler}" in r.stdout
    assert len(finished(load(workdir))) == 3


@pytest.mark.parametrize(
    "pruner",
    [
        ["--pruner", "successive_halving"],
        ["--pruner", "hyperband"],
        ["--set", "search.pruner={name: percentile, percentile: 40, n_startup_trials: 1}"],
        # --help's own spelling: --pruner of the name --set gives keeps --set's options (it
        # replaced them with the defaults, and percentile has none: a one-line error)
        ["--pruner", "percentile", "--set", "search.pruner={name: percentile, percentile: 40}"],
    ],
)
def test_pruners(workdir: Path, pruner: list[str]) -> None:
    r = hpsearch(["run", "--study", "smoke", "--trials", "3", *pruner, *TINY], workdir)
    assert r.returncode == 0, r.stderr
    assert len(finished(load(workdir))) == 3


def test_grid_stops_when_exhausted(workdir: Path) -> None:
    r = hpsearch(
        [
            "run",
            "--study",
            "smoke",
            "--trials",
            "10",
            "--sampler",
            "grid",
            "--set",
            "train.epochs=1",
            *TINY,
        ],
        workdir,
    )
    assert r.returncode == 0, r.stderr
    study = load(workdir)
    points = {(t.params["lr"], t.params["kernel_size"]) for t in finished(study)}
    assert len(finished(study)) == 4 == len(points)  # 2 lr x 2 kernel sizes, each once
    r = hpsearch(["run", "--study", "smoke", "--trials", "3", "--sampler", "grid", *TINY], workdir)
    assert r.returncode == 0 and "the grid is exhausted" in r.stdout
    assert len(load(workdir).trials) == 4


def test_catdog_starts_from_the_seed_baseline(workdir: Path) -> None:
    r = hpsearch(
        [
            "run",
            "--study",
            "catdog",
            "--trials",
            "1",
            "--set",
            "data.image_size=32",
            "--set",
            "train.epochs=1",
            *TINY,
        ],
        workdir,
    )
    assert r.returncode == 0, r.stderr
    t0, *rest = load(workdir, "catdog").trials
    assert t0.number == 0 and t0.user_attrs["baseline"] is True
    assert t0.state == optuna.trial.TrialState.COMPLETE
    # catdog's near-baseline start-up trials wait for the next run
    assert all(t.state == optuna.trial.TrialState.WAITING for t in rest)
    assert t0.params["lr"] == 1e-3 and t0.params["channels_b3"] == 128


def test_train_baseline_prints_epochs_and_json(workdir: Path) -> None:
    r = hpsearch(
        [
            "train",
            "--study",
            "catdog",
            "--trial",
            "baseline",
            "--set",
            "data.image_size=32",
            "--set",
            "train.epochs=2",
            *TINY,
        ],
        workdir,
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[-3].startswith("epoch 1/2") and lines[-2].startswith("epoch 2/2")
    result = json.loads(lines[-1])
    assert {"val_accuracy", "train_images_per_s", "epoch_seconds", "params", "n_params"} <= set(
        result
    )
    assert 0 <= result["val_accuracy"] <= 1 and result["train_images_per_s"] > 0
    assert result["params"]["batch_size"] == 32
    assert not (workdir / "hpsearch.db").exists()  # no search, no database


def test_study_name_and_storage_flags(
    workdir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    db = tmp_path_factory.mktemp("db") / "elsewhere.db"
    r = hpsearch(
        [
            "run",
            "--study",
            str(Path(__file__).parents[2] / "studies" / "smoke.yaml"),
            "--trials",
            "1",
            "--study-name",
            "mine",
            "--storage",
            f"sqlite:///{db}",
            *TINY,
        ],
        workdir,
    )
    assert r.returncode == 0, r.stderr
    assert "ExperimentalWarning" not in r.stderr  # heartbeats, artifacts: cli.main's filter
    names = [s.study_name for s in optuna.get_all_study_summaries(f"sqlite:///{db}")]
    assert names == ["mine"]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["run", "--study", "nope", "--trials", "1"], "unknown study 'nope'"),
        (["run", "--study", "smoke", "--trials", "0"], "--trials: must be at least 1"),
        (
            ["run", "--study", "smoke", "--trials", "1", "--sampler", "anneal"],
            "--sampler: search.sampler: unknown sampler 'anneal'",
        ),
        (
            ["run", "--study", "smoke", "--trials", "1", "--set", "data.image_size=banana"],
            "data.image_size: expected an integer",
        ),
        (
            ["run", "--study", "smoke", "--trials", "1", "--storage", "redis://h/0"],
            "unknown scheme 'redis'",
        ),
        (
            ["run", "--study", "smoke", "--trials", "1", "--set", "data.root=/no/such/dir"],
            "data root /no/such/dir does not exist",
        ),
        (["run", "--study", "smoke"], "the following arguments are required: --trials"),
        # no database yet: said so, and none is created (issue 11)
        (["train", "--study", "smoke", "--trial", "best"], "no database at sqlite:///hpsearch.db"),
        (["train", "--study", "smoke", "--trial", "abc"], "--trial: expected baseline, best"),
        (["run", "--study", "smoke", "--trials", "1", "--heartbeat", "0"], "must be at least 1"),
    ],
)
def test_bad_input_is_one_line(workdir: Path, args: list[str], needle: str) -> None:
    r = hpsearch(args, workdir)
    assert r.returncode != 0
    assert needle in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    if "abc" in args or "best" in args:
        assert not (workdir / "hpsearch.db").exists()  # rejected before touching storage


def test_misspelt_key_in_a_study_file(workdir: Path) -> None:
    bad = workdir / "typo.yaml"
    bad.write_text("data:\n  image_size: 32\ntrain:\n  epocs: 2\n")
    r = hpsearch(["run", "--study", str(bad), "--trials", "1"], workdir)
    assert r.returncode == 2
    assert r.stderr.strip() == (
        f"hpsearch: error: {bad}: train.epocs: unknown key (did you mean 'epochs'?)"
    )


def test_help_shows_defaults(workdir: Path) -> None:
    r = hpsearch(["run", "--help"], workdir)
    assert r.returncode == 0 and "--trials" in r.stdout and "HPSEARCH_STORAGE" in r.stdout


def test_database_already_recorded_is_kept_on_bad_input(workdir: Path) -> None:
    assert hpsearch(["run", "--study", "smoke", "--trials", "1", *TINY], workdir).returncode == 0
    r = hpsearch(["run", "--study", "smoke", "--trials", "1", "--set", "train.epochs=-1"], workdir)
    assert r.returncode == 2
    with sqlite3.connect(workdir / "hpsearch.db") as con:
        assert con.execute("select count(*) from trials where state='COMPLETE'").fetchone()[0] == 1


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_mid_trial_leaves_nothing_running_and_resumes(
    workdir: Path, sig: signal.Signals, code: int
) -> None:
    args = ["run", "--study", "smoke", "--trials", "5", "--set", "train.epochs=40", *TINY]
    proc = popen(args, workdir)
    assert proc.stdout is not None
    for line in proc.stdout:
        if "epoch 2/40" in line:  # mid-trial
            break
    proc.send_signal(sig)
    err, _ = proc.communicate(timeout=10)
    assert proc.returncode == code
    assert "Traceback" not in err and "run the same command again to resume" in err
    study = load(workdir)
    states = [t.state for t in study.trials]
    assert optuna.trial.TrialState.RUNNING not in states
    assert states[-1] == optuna.trial.TrialState.FAIL
    assert study.trials[-1].user_attrs["fail_reason"].startswith("stopped by")
    r = hpsearch(
        ["run", "--study", "smoke", "--trials", "1", "--set", "train.epochs=1", *TINY], workdir
    )
    assert r.returncode == 0, r.stderr
    assert len(finished(load(workdir))) == len(states) + 1
