"""Several ``hpsearch run`` commands on one study, and a trial left RUNNING by ``optuna ask``:
real CLI subprocesses on a real SQLite file and a real PostgreSQL server."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from conftest import hpsearch, popen

pytestmark = pytest.mark.slow

TINY = ["--set", "data.max_per_class=60", "--set", "data.val_max_per_class=30"]
QUICK = [*TINY, "--set", "train.epochs=1", "--pruner", "none", "--heartbeat", "1"]
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def sqlite_url(workdir: Path) -> str:
    return f"sqlite:///{workdir / 'hpsearch.db'}"


def load(url: str, name: str = "smoke") -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=url).get_trials()


def own_count(out: str) -> int:
    m = re.search(r"^done: (\d+) trials? finished in this run", out, re.M)
    assert m, out
    return int(m[1])


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_two_runs_started_together_run_both_budgets_and_one_baseline(
    workdir: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    url = sqlite_url(workdir) if backend == "sqlite" else request.getfixturevalue("pg_url")
    args = ["run", "--study", "smoke", "--trials", "2", "--storage", url, *QUICK]
    procs = [popen(args, workdir), popen(args, workdir)]  # a new study, at the same moment
    outs = [p.communicate(timeout=400)[0] for p in procs]
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == 0, out
        assert "Traceback" not in out
    trials = load(url)
    assert sum(t.state in FINISHED for t in trials) == 4 and len(trials) == 4
    assert sum(bool(t.user_attrs.get("baseline")) for t in trials) == 1
    assert trials[0].user_attrs.get("baseline")  # trial 0, as a lone run has it
    # each run reports what its own worker finished, and the two add up
    runs = {t.user_attrs.get("run_id") for t in trials}
    assert None not in runs and len(runs) <= 2
    assert sum(own_count(out) for out in outs) == 4


def test_a_second_run_while_one_works_adds_to_its_budget(workdir: Path) -> None:
    """The issue's case: a second run reset the target, so the first stopped short (exit 0)
    and the second claimed a trial it had not run."""
    url = sqlite_url(workdir)
    # still going when the second run starts: its 2 trials left must outlast the second's start
    # (6 epochs did not on a fast machine: the first had finished when the second joined)
    slow = [*QUICK, "--set", "train.epochs=100"]
    first = popen(["run", "--study", "smoke", "--trials", "3", *slow], workdir)
    assert first.stdout is not None
    lines = []
    for line in first.stdout:
        lines.append(line)
        if "trial 0 finished" in line:
            break
    second = hpsearch(["run", "--study", "smoke", "--trials", "1", *QUICK], workdir)
    rest, _ = first.communicate(timeout=400)
    out_first = "".join(lines) + rest
    assert first.returncode == 0, out_first
    assert second.returncode == 0, second.stdout + second.stderr
    trials = load(url)
    assert sum(t.state in FINISHED for t in trials) == 4
    assert TrialState.RUNNING not in {t.state for t in trials}
    assert own_count(out_first) + own_count(second.stdout) == 4
    assert "another hpsearch run is working on this study" in second.stdout


def test_a_run_after_a_killed_run_adds_to_what_finished(workdir: Path) -> None:
    """A killed run's target is not inherited: the next run --trials 1 runs one trial (the
    killed run's trial, failed as stale and run again)."""
    url = sqlite_url(workdir)
    killed = popen(
        ["run", "--study", "smoke", "--trials", "6", *QUICK, "--set", "train.epochs=4"], workdir
    )
    assert killed.stdout is not None
    for line in killed.stdout:
        if "trial 1 epoch 1/4" in line:
            break
    killed.send_signal(signal.SIGKILL)
    killed.communicate(timeout=30)
    before = sum(t.state in FINISHED for t in load(url))
    r = hpsearch(["run", "--study", "smoke", "--trials", "1", *QUICK], workdir)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{before} finished trials so far, running 1 more" in r.stdout
    assert "another hpsearch run" not in r.stdout
    trials = load(url)
    assert sum(t.state in FINISHED for t in trials) == before + 1
    assert TrialState.RUNNING not in {t.state for t in trials}


def test_a_trial_left_running_by_optuna_ask_no_longer_hangs_the_run(workdir: Path) -> None:
    url = sqlite_url(workdir)
    r = hpsearch(["run", "--study", "smoke", "--trials", "1", *QUICK], workdir)
    assert r.returncode == 0, r.stdout + r.stderr
    optuna_cli = Path(sys.executable).with_name("optuna")
    asked = subprocess.run(
        [str(optuna_cli), "ask", "--storage", url, "--study-name", "smoke"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert asked.returncode == 0, asked.stderr
    r = hpsearch(["run", "--study", "smoke", "--trials", "1", *QUICK], workdir, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r"waiting for trial 1 \(running since \d\d:\d\d:\d\d, no heartbeat", r.stdout)
    trials = load(url)
    assert trials[1].state == TrialState.FAIL
    assert sum(t.state in FINISHED for t in trials) == 2
    assert TrialState.RUNNING not in {t.state for t in trials}
