"""status, best, trials --csv and report on a real smoke search, and their one-line errors."""

from __future__ import annotations

import re
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml

from conftest import argv, hpsearch
from hpsearch.results.read import ranked

pytestmark = pytest.mark.slow


def study_of(work: Path) -> optuna.Study:
    return optuna.load_study(study_name="smoke", storage=f"sqlite:///{work / 'hpsearch.db'}")


def one_line_error(r: object, *needles: str) -> str:
    import subprocess

    assert isinstance(r, subprocess.CompletedProcess)
    assert r.returncode != 0, r.stdout
    err = str(r.stderr)
    assert err.startswith("hpsearch: error: ") and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    for n in needles:
        assert n in err, err
    return err


def test_status(smoke_study: Path) -> None:
    r = hpsearch(argv("status --study smoke"), smoke_study)
    assert r.returncode == 0, r.stderr
    best = ranked(study_of(smoke_study))[0]
    lines = r.stdout.splitlines()
    assert lines[0] == "study 'smoke' in sqlite:///hpsearch.db: 3 trials"
    assert lines[1] == "trials: 3 complete, 0 pruned, 0 fail, 0 running, 0 waiting"
    assert lines[2] == f"best: val_accuracy {best.value:.4f} in trial {best.number}"
    assert lines[3].startswith("rate: ") and "finished trials per hour" in lines[3]
    assert re.fullmatch(r"time: [\d.]+ (s|min) spent searching \(while any trial ran\)", lines[4])
    assert lines[5] == "budget: 3 of 3 trials finished; done"


def test_best_prints_yaml_with_its_checkpoint(smoke_study: Path) -> None:
    r = hpsearch(argv("best --study studies/smoke.yaml"), smoke_study)  # a file path works too
    assert r.returncode == 0, r.stderr
    doc = yaml.safe_load(r.stdout)
    best = ranked(study_of(smoke_study))[0]
    assert doc["trial"] == best.number and doc["val_accuracy"] == best.value
    assert doc["params"] == best.params
    assert Path(doc["checkpoint"]).is_file()
    assert Path(doc["checkpoint"]).parent == smoke_study / "hpsearch-artifacts"
    assert doc["kept_checkpoints"] == [t.number for t in ranked(study_of(smoke_study))[:2]]


def test_trials_csv(smoke_study: Path, tmp_path: Path) -> None:
    out = tmp_path / "trials.csv"
    r = hpsearch([*argv("trials --study smoke --csv"), str(out)], smoke_study)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("wrote 3 trials (") and str(out) in r.stdout
    df = pd.read_csv(out)
    assert list(df["number"]) == [0, 1, 2]
    assert set(df["state"]) == {"COMPLETE"}
    assert (df["duration_s"] > 0).all()
    for col in ("value", "params_lr", "params_kernel_size_b1", "user_attrs_n_params"):
        assert col in df.columns
    assert "user_attrs_checkpoint" in df.columns and "user_attrs_config" in df.columns
    assert df["user_attrs_config"].str.startswith('{"data"').all()  # mappings as JSON
    best = ranked(study_of(smoke_study))[0]
    assert df.loc[df["number"] == best.number, "value"].item() == pytest.approx(best.value)
    r = hpsearch(argv("trials --study smoke --csv -"), smoke_study)
    assert r.returncode == 0 and r.stdout.startswith("number,value,state")


def test_report_writes_plots_and_summary(smoke_study: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    r = hpsearch([*argv("report --study smoke --output"), str(out)], smoke_study)
    assert r.returncode == 0, r.stderr
    pngs = [
        "optimization_history.png",
        "param_importances.png",
        "intermediate_values.png",
        "parallel_coordinate.png",
    ]
    for name in pngs:
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, name
    summary = (out / "summary.md").read_text()
    assert summary.startswith("# Study `smoke`")
    for name in pngs:
        assert f"]({name})" in summary
    best = ranked(study_of(smoke_study))[0]
    assert f"**{best.value:.4f}** in trial {best.number}" in summary


def test_report_with_one_completed_trial_skips_importances(tmp_path: Path) -> None:
    study = optuna.create_study(
        study_name="one", storage=f"sqlite:///{tmp_path / 'hpsearch.db'}", direction="maximize"
    )
    trial = study.ask()
    trial.suggest_float("lr", 1e-4, 1e-2, log=True)
    trial.report(0.5, 1)
    study.tell(trial, 0.6)
    r = hpsearch(argv("report --study one --output rep"), tmp_path)
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / "rep" / "param_importances.png").exists()
    assert (tmp_path / "rep" / "optimization_history.png").is_file()
    summary = (tmp_path / "rep" / "summary.md").read_text()
    assert "Hyperparameter importances: skipped, it needs at least 2 completed trials" in summary


def test_no_database_no_study_no_completed_trial(smoke_study: Path, tmp_path: Path) -> None:
    for cmd in ("status", "best", "trials --csv t.csv", "report --output r"):
        err = one_line_error(hpsearch(argv(f"{cmd} --study smoke"), tmp_path), "no database at")
        assert "run hpsearch run first" in err
    assert not (tmp_path / "hpsearch.db").exists()  # a read command creates no database

    err = one_line_error(hpsearch(argv("best --study nope"), smoke_study))
    assert "no study named 'nope'" in err and "(studies: smoke)" in err

    study = optuna.create_study(  # maximize: a minimizing study is refused before this check
        study_name="failed", storage=f"sqlite:///{tmp_path / 'hpsearch.db'}", direction="maximize"
    )
    trial = study.ask()
    study.tell(trial, state=optuna.trial.TrialState.FAIL)
    for cmd in ("best", "export --format torchscript --output m.pt", "predict x.jpg"):
        one_line_error(
            hpsearch(argv(f"{cmd} --study failed"), tmp_path),
            "study 'failed' has no completed trial yet (1 trial in all)",
        )
    r = hpsearch(argv("status --study failed"), tmp_path)
    assert r.returncode == 0 and "best: no completed trial yet" in r.stdout


def test_passwords_are_never_printed(tmp_path: Path) -> None:
    url = "postgresql://hpsearch:s3cret-pw@127.0.0.1:1/nothere"
    for cmd in ("status", "best", "dashboard"):
        r = hpsearch([*argv(f"{cmd} --study smoke --storage"), url], tmp_path, timeout=60)
        err = one_line_error(r, "hpsearch:***@127.0.0.1:1/nothere")
        assert "s3cret" not in err + r.stdout
