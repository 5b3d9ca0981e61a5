"""Ctrl-C (or SIGTERM) during a trial, then the same command: the stopped trial runs again with
the same parameters and seed, once; the seed baseline is never lost. Real subprocesses, real
photos, a real SQLite file."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from conftest import hpsearch, popen

pytestmark = pytest.mark.slow

TINY = ["--set", "data.max_per_class=60", "--set", "data.val_max_per_class=30"]
# Trials run 30 epochs so that a signal sent after epoch 1 lands while the trial still trains:
# at 4 epochs an idle machine finished the trial (0.1 s an epoch) before the signal arrived.


def start(args: list[str], cwd: Path) -> subprocess.Popen[str]:
    """The real CLI with stdout and stderr apart (stderr must hold hpsearch's one line only)."""
    return popen(args, cwd, merge_stderr=False)


def stop_at(proc: subprocess.Popen[str], needle: str, sig: signal.Signals) -> tuple[str, str]:
    """Send ``sig`` once stdout shows ``needle``; (stdout, stderr) of the whole run."""
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if needle in line:
            break
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    return "".join(seen) + out, err


def load(workdir: Path) -> optuna.Study:
    return optuna.load_study(study_name="smoke", storage=f"sqlite:///{workdir / 'hpsearch.db'}")


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupted_baseline_runs_again_on_resume(
    workdir: Path, sig: signal.Signals, code: int
) -> None:
    # two near-baseline start-up trials wait behind the baseline, as in catdog
    near = ["--set", "search.near_baseline=2"]
    args = ["run", "--study", "smoke", "--trials", "2", "--set", "train.epochs=30", *near, *TINY]
    out, err = stop_at(start(args, workdir), "trial 0 epoch 1/30", sig)
    assert "trial 0 epoch 1/30" in out and "failed with parameters" not in out
    what = "interrupted" if sig == signal.SIGINT else "terminated"
    # hpsearch's one line, and nothing of Optuna's "Trial 0 failed with parameters: ..."
    assert err.strip() == (
        f"hpsearch: {what} during trial 0; run the same command again to resume "
        "(trial 0 runs again with the same parameters)"
    ), err
    t0, *waiting = load(workdir).trials
    assert [t.state for t in waiting] == [TrialState.WAITING] * 2
    assert t0.state == TrialState.FAIL and t0.user_attrs["baseline"] is True
    assert t0.user_attrs["fail_reason"].startswith("stopped by ")

    r = hpsearch(args, workdir)  # the same command
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Trial 0 failed with parameters" not in r.stderr + r.stdout
    assert "Traceback" not in r.stderr
    assert (
        "trial 0 (the seed baseline) was interrupted (stopped by "
        f"{'KeyboardInterrupt' if sig == signal.SIGINT else 'Terminated'}); it runs again"
    ) in r.stdout
    study = load(workdir)
    # the re-run (trial 3) ran first, ahead of the start-up trials enqueued before it
    rerun = study.trials[3]
    assert rerun.state == TrialState.COMPLETE
    assert r.stdout.index("trial 3 epoch 1/30") < r.stdout.index("trial 1 epoch 1/30")
    assert rerun.params == t0.params  # the baseline's parameters
    assert rerun.user_attrs["baseline"] is True and rerun.user_attrs["rerun_of"] == 0
    assert rerun.user_attrs["seed"] == t0.user_attrs["seed"]
    assert [t.state for t in study.trials].count(TrialState.RUNNING) == 0
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials) == 2

    # re-run once: resuming again does not enqueue trial 0 a second time
    r = hpsearch(
        ["run", "--study", "smoke", "--trials", "1", "--set", "train.epochs=30", *TINY], workdir
    )
    assert r.returncode == 0, r.stderr
    assert "was interrupted" not in r.stdout and "trial 2 epoch 1/30" in r.stdout
    assert [t.user_attrs.get("rerun_of") for t in load(workdir).trials].count(0) == 1


def test_an_interrupted_rerun_is_run_again_too(workdir: Path) -> None:
    """Two Ctrl-Cs during the baseline still end with a finished baseline."""
    args = ["run", "--study", "smoke", "--trials", "1", "--set", "train.epochs=30", *TINY]
    stop_at(start(args, workdir), "trial 0 epoch 1/30", signal.SIGINT)
    out, err = stop_at(start(args, workdir), "trial 1 epoch 1/30", signal.SIGINT)
    assert "trial 0 (the seed baseline) was interrupted" in out
    assert "during trial 1;" in err and "failed with parameters" not in err
    r = hpsearch(args, workdir)
    assert r.returncode == 0, r.stderr
    trials = load(workdir).trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.FAIL, TrialState.COMPLETE]
    assert [t.user_attrs.get("rerun_of") for t in trials] == [None, 0, 1]
    assert all(t.user_attrs["baseline"] is True for t in trials)
    assert trials[2].params == trials[0].params


def test_ctrl_c_on_the_launcher_reruns_every_worker_trial_once(workdir: Path) -> None:
    args = [
        "run",
        "--study",
        "smoke",
        "--trials",
        "3",
        "--workers",
        "2",
        "--set",
        "train.epochs=30",  # as above: at 6 epochs one worker could finish before the signal
        *TINY,
    ]
    proc = start(args, workdir)
    assert proc.stdout is not None
    running: set[str] = set()
    for line in proc.stdout:  # until both workers are inside a trial
        if "epoch 1/30" in line:
            running.add(line.split()[0])
        if len(running) == 2:
            break
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "failed with parameters" not in out + err
    stopped = [t for t in load(workdir).trials if t.state == TrialState.FAIL]
    assert len(stopped) == 2
    assert {t.user_attrs["fail_reason"] for t in stopped} == {"stopped by KeyboardInterrupt"}

    r = hpsearch(args, workdir)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "failed with parameters" not in r.stdout + r.stderr
    trials = load(workdir).trials
    reruns = {t.user_attrs["rerun_of"]: t for t in trials if "rerun_of" in t.user_attrs}
    assert sorted(reruns) == sorted(t.number for t in stopped)  # each once, by one worker
    for t in stopped:
        assert reruns[t.number].params == t.params
        assert reruns[t.number].state in (TrialState.COMPLETE, TrialState.PRUNED)
    assert any(t.user_attrs.get("baseline") and t.state == TrialState.COMPLETE for t in trials)
