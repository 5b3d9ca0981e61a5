"""Studies hpsearch did not make, or made from another study file: plain-Optuna studies that
minimize or have two objectives, trials that are all RUNNING or WAITING (a search being watched),
and a study name reused with another study file. One line each, nothing recorded lost."""

from __future__ import annotations

import subprocess
from pathlib import Path

import optuna
import pandas as pd
import pytest

from conftest import argv, hpsearch

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
    if len(study.directions) == 1:  # Optuna has no intermediate values with two objectives
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


# --- item: a minimizing or multi-objective plain-Optuna study ----------------------------------


@pytest.fixture(scope="module")
def foreign_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A plain-Optuna SQLite file: 'mini' minimizes (its best trial has the lowest value) and
    'multi' has two objectives; real trials with real parameters, finished by tell."""
    work = tmp_path_factory.mktemp("foreign")
    url = f"sqlite:///{work / 'hpsearch.db'}"
    mini = optuna.create_study(storage=url, study_name="mini", direction="minimize")
    multi = optuna.create_study(storage=url, study_name="multi", directions=["maximize"] * 2)
    for value in (0.9, 0.1, 0.5):
        t = _ask(mini)
        mini.tell(t, value)
        t = _ask(multi)
        multi.tell(t, [value, 1 - value])
    return work


FOREIGN_COMMANDS = [
    ["status"],
    ["best"],
    ["trials", "--csv", "-"],
    ["export", "--format", "torchscript", "--output", "model.pt"],
    ["predict", "photo.jpg"],
    ["evaluate", "--data", "photos"],
    ["report", "--output", "report"],
    ["serve", "--port", "0"],
    ["confirm"],
    [
        "run",
        "--trials",
        "1",
        "--set",
        "data.max_per_class=60",
        "--set",
        "data.val_max_per_class=30",
    ],
    ["worker"],
    ["train", "--trial", "best", "--set", "data.max_per_class=60"],
]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mini", "multi"])
def test_a_study_that_does_not_maximize_one_value_is_refused_in_one_line(
    foreign_db: Path, name: str
) -> None:
    db = foreign_db / "hpsearch.db"
    before = db.read_bytes()
    what = "minimizes its objective" if name == "mini" else "has 2 objectives"
    for command in FOREIGN_COMMANDS:
        study = "smoke" if command[0] in ("run", "worker", "train") else name
        r = hpsearch([*command, "--study", study, "--study-name", name], foreign_db, timeout=120)
        one_line_error(r, f"study {name!r} {what}", "maximize one value")
    assert db.read_bytes() == before  # nothing written, nothing lost
    assert not (foreign_db / "report").exists() and not (foreign_db / "model.pt").exists()
    mini = optuna.load_study(study_name="mini", storage=f"sqlite:///{db}")
    assert [t.state for t in mini.trials] == [optuna.trial.TrialState.COMPLETE] * 3


# --- item: a study name reused with another study file -----------------------------------------

TINY = ["--set", "data.max_per_class=60", "--set", "data.val_max_per_class=30"]
SMOKE = Path(__file__).resolve().parents[2] / "studies" / "smoke.yaml"
TARGET = "target_trials"


def _state(db: Path) -> tuple[int, list[str], object]:
    """(trials, their states, the budget target) of the smoke study."""
    study = optuna.load_study(study_name="smoke", storage=f"sqlite:///{db}")
    trials = study.get_trials(deepcopy=False)
    return len(trials), [t.state.name for t in trials], study.user_attrs.get(TARGET)


@pytest.mark.slow
def test_a_study_name_reused_with_another_study_file(tmp_path: Path) -> None:
    db = tmp_path / "hpsearch.db"
    r = hpsearch(["run", "--study", "smoke", "--trials", "1", *TINY], tmp_path)
    assert r.returncode == 0, r.stderr
    study = optuna.load_study(study_name="smoke", storage=f"sqlite:///{db}")
    assert study.user_attrs["study_file"] == str(SMOKE)
    assert len(study.user_attrs["study_file_sha256"]) == 64
    first = _state(db)
    assert first == (1, ["COMPLETE"], 1)

    # the same space at another image size: compatible for Optuna, but not the same study
    other = tmp_path / "other.yaml"
    other.write_text(SMOKE.read_text().replace("image_size: 32", "image_size: 24"))
    args = ["run", "--study", str(other), "--study-name", "smoke", "--trials", "2", *TINY]
    r = hpsearch(args, tmp_path)
    err = one_line_error(r, f"was made from {SMOKE}, not {other}", "--allow-other-study-file")
    assert r.returncode == 2 and err
    assert _state(db) == first  # no trial, no raised target

    # a copy elsewhere with the same name but other content is another file too
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    edited = elsewhere / "smoke.yaml"
    edited.write_text(SMOKE.read_text().replace("image_size: 32", "image_size: 24"))
    r = hpsearch(["run", "--study", str(edited), "--trials", "1", *TINY], tmp_path)
    one_line_error(r, "another file with other content", str(edited))
    r = hpsearch(["worker", "--study", str(other), "--study-name", "smoke"], tmp_path)
    one_line_error(r, f"was made from {SMOKE}, not {other}")
    assert _state(db) == first

    # incompatible spaces: one line even when the user means the other file
    narrow = tmp_path / "narrow.yaml"
    narrow.write_text(SMOKE.read_text().replace("kernel_size: [3, 5, 7]", "kernel_size: [3, 5]"))
    allow = "--allow-other-study-file"
    r = hpsearch(
        [*argv(f"run --study {narrow} --study-name smoke --trials 1"), *TINY, allow], tmp_path
    )
    one_line_error(r, "cannot take the search space", "kernel_size_b1", "[3, 5, 7]", "[3, 5]")
    # ... and when a --set on the right file narrows it
    narrowed = ["--set", "search.space.kernel_size=[3, 5]"]
    r = hpsearch([*argv("run --study smoke --trials 1"), *narrowed, *TINY], tmp_path)
    one_line_error(r, "cannot take the search space", "kernel_size_b1")
    assert _state(db) == first  # still no FAIL trial and no raised target

    # the documented ways of resuming still work: --set overrides, and a byte-identical copy
    # of the file elsewhere (another host, a container)
    copy = elsewhere / "copy" / "smoke.yaml"
    copy.parent.mkdir()
    copy.write_bytes(SMOKE.read_bytes())
    r = hpsearch(
        ["run", "--study", str(copy), "--trials", "1", "--set", "train.epochs=1", *TINY], tmp_path
    )
    assert r.returncode == 0, r.stderr
    assert _state(db)[:2] == (2, ["COMPLETE", "COMPLETE"])
    # and the user who means it adds the other file's trials
    r = hpsearch(
        [*argv(f"run --study {other} --study-name smoke --trials 1"), *TINY, allow], tmp_path
    )
    assert r.returncode == 0, r.stderr
    n, states, target = _state(db)
    assert (n, target) == (3, 3) and "FAIL" not in states
    study = optuna.load_study(study_name="smoke", storage=f"sqlite:///{db}")
    assert study.user_attrs["study_file"] == str(SMOKE)  # still the file it was made from


@pytest.mark.slow
def test_a_plain_optuna_study_with_another_space_is_refused_before_any_trial(
    tmp_path: Path,
) -> None:
    """A maximizing plain-Optuna study is adopted by hpsearch, but its parameters' kinds must
    agree with the study file's: Optuna would otherwise fail hpsearch's first trial."""
    url = f"sqlite:///{tmp_path / 'hpsearch.db'}"
    study = optuna.create_study(storage=url, study_name="smoke", direction="maximize")
    t = study.ask()
    t.suggest_categorical("lr", [0.001, 0.01])  # smoke draws lr from a float range
    study.tell(t, 0.7)
    r = hpsearch(["run", "--study", "smoke", "--trials", "1", *TINY], tmp_path)
    one_line_error(r, "cannot take the search space", "lr from the choices [0.001, 0.01]")
    study = optuna.load_study(study_name="smoke", storage=url)
    assert len(study.trials) == 1 and TARGET not in study.user_attrs


@pytest.mark.parametrize(
    "where,key,value,command,needle",
    [
        (
            "study",
            "target_trials",
            "lots",
            "status",
            "study 'smoke': user attribute 'target_trials'",
        ),
        ("trial", "confirm_runs", 5, "best", "trial 2's user attribute 'confirm_runs' is 5"),
        (
            "trial",
            "seed",
            "zero",
            "confirm --seeds 1 --top 1",
            "trial 2's user attribute 'seed' is 'zero', not a whole number",
        ),
    ],
)
def test_odd_attribute_types_are_one_line(
    tmp_path: Path, where: str, key: str, value: object, command: str, needle: str
) -> None:
    """A plain-Optuna study may hold anything under a name hpsearch reads: each is checked when
    read and named, with its trial, in one line (they were tracebacks)."""
    study = optuna.create_study(
        study_name="smoke", storage=f"sqlite:///{tmp_path / 'hpsearch.db'}", direction="maximize"
    )
    for i in range(3):
        t = study.ask()
        t.suggest_float("lr", 1e-4, 1e-2, log=True)
        if where == "trial":
            t.set_user_attr(key, value)
        study.tell(t, 0.5 + i / 10)
    if where == "study":
        study.set_user_attr(key, value)
    r = hpsearch([*argv(command), "--study", "smoke"], tmp_path)
    one_line_error(r, needle)
    assert r.returncode == 1


def test_a_study_whose_trials_are_all_over_the_budget_says_so(tmp_path: Path) -> None:
    """confirm and export on trials outside the deployment budget name the budget (they said
    "no completed trial" and "never ranked among the kept best trials")."""
    study = optuna.create_study(
        study_name="smoke", storage=f"sqlite:///{tmp_path / 'hpsearch.db'}", direction="maximize"
    )
    for i in range(2):
        study.add_trial(
            optuna.trial.create_trial(
                params={"lr": 1e-3},
                distributions={"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2)},
                value=0.6 + i / 10,
                system_attrs={"constraints": [5.0]},  # as Optuna's constraints record them
            )
        )
    r = hpsearch(argv("confirm --study smoke"), tmp_path)
    one_line_error(r, "all 2 completed trials are over the deployment budget")
    r = hpsearch(
        argv("export --study smoke --trial 0 --format torchscript --output m.pt"), tmp_path
    )
    one_line_error(r, "trial 0 has no checkpoint (it is over the deployment budget")
