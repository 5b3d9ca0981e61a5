"""Studies hpsearch did not make, or made from another study file: plain-Optuna studies that
minimize or have two objectives, trials that are all RUNNING or WAITING (a search being watched),
and a study name reused with another study file. One line each, nothing recorded lost."""

from __future__ import annotations

import subprocess
from pathlib import Path

import optuna
import pandas as pd
import pytest

from conftest import hpsearch

optuna.logging.set_verbosity(optuna.logging.WARNING)


def one_line_error(r: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert r.returncode != 0, r.stdout
    err = r.stderr
    assert err.startswith("hpsearch: error: ") and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in r.stdout + err
    for n in needles:
        assert n in err, err
    return err


def _ask(study: optuna.Study) -> optuna.Trial:
    """A trial left RUNNING with real parameters, as a worker mid-trial leaves it."""
    t = study.ask()
    t.suggest_float("lr", 1e-4, 1e-2, log=True)
    t.suggest_categorical("optimizer", ["sgd", "adam"])
    t.report(0.5, 1)
    return t


@pytest.mark.parametrize("states", ["running", "waiting", "running+waiting"])
def test_trials_csv_while_no_trial_has_finished(tmp_path: Path, states: str) -> None:
    url = f"sqlite:///{tmp_path / 'hpsearch.db'}"
    study = optuna.create_study(storage=url, study_name="live", direction="maximize")
    expected = []
    for kind in states.split("+"):
        for _ in range(2):
            if kind == "running":
                _ask(study)
            else:
                study.enqueue_trial({"lr": 1e-3, "optimizer": "adam"})
            expected.append(kind.upper())
    out = tmp_path / "trials.csv"
    r = hpsearch(["trials", "--study", "live", "--storage", url, "--csv", str(out)], tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"wrote {len(expected)} trials (")
    df = pd.read_csv(out)
    assert list(df["state"]) == expected
    assert df["duration_s"].isna().all()  # nothing has ended yet
    r = hpsearch(["trials", "--study", "live", "--storage", url, "--csv", "-"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0].startswith("number,value,state,")
    assert len(r.stdout.splitlines()) == 1 + len(expected)


def test_trials_csv_with_finished_and_running_trials(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'hpsearch.db'}"
    study = optuna.create_study(storage=url, study_name="live", direction="maximize")
    done = _ask(study)
    study.tell(done, 0.75)
    _ask(study)
    study.enqueue_trial({"lr": 1e-3, "optimizer": "adam"})
    r = hpsearch(["trials", "--study", "live", "--storage", url, "--csv", "-"], tmp_path)
    assert r.returncode == 0, r.stderr
    from io import StringIO

    df = pd.read_csv(StringIO(r.stdout))
    assert list(df["state"]) == ["COMPLETE", "RUNNING", "WAITING"]
    assert df["duration_s"].iloc[0] >= 0 and df["duration_s"].iloc[1:].isna().all()
