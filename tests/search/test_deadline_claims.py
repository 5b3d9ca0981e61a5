"""Deadlines in the claim loop and the budget, in this process against a real SQLite file and a
real PostgreSQL server: a worker past its deadline claims nothing; a run's deadline is recorded
in the study and dropped when the run ends; while a run past its deadline finishes, no worker of
the study claims; and a run that ends takes back only the trials that nobody started."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial, TrialState, create_trial

from hpsearch.search.workers import run_until_budget
from hpsearch.storage import deadlines
from hpsearch.storage.budget import join, run_lease, withdraw
from hpsearch.storage.claims import claim_lock
from hpsearch.storage.deadlines import run_deadlines
from hpsearch.storage.state import RUN_ATTR, target
from hpsearch.storage.urls import open_storage

# study.ask outside optimize, as a worker of another process would have its trial running
pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used")
X = {"x": FloatDistribution(0, 1)}


def objective(trial: optuna.Trial) -> float:
    return trial.suggest_float("x", 0, 1)


def done() -> FrozenTrial:
    return create_trial(value=0.5, params={"x": 0.5}, distributions=X)


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'deadlines.db'}"
    else:
        yield request.getfixturevalue("pg_url")


def new_study(url: str) -> optuna.Study:
    # a heartbeat of 60 s: the trials this test leaves running are not failed as stale
    return optuna.create_study(
        storage=open_storage(url, heartbeat=60), study_name="s", direction="maximize"
    )


def finished(study: optuna.Study) -> int:
    return len(study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED)))


def test_no_trial_is_claimed_after_the_deadline(url: str) -> None:
    study = new_study(url)
    lease = run_lease(study._storage, "s")
    join(study, 3, lease, "a")
    lock = claim_lock(study._storage, "s")
    assert run_until_budget(study, objective, lock, deadline=time.time() - 1) == "deadline"
    assert study.trials == []
    assert run_until_budget(study, objective, lock, deadline=time.time() + 600) == "budget"
    assert finished(study) == 3
    lease.release()


def test_a_runs_deadline_is_recorded_while_it_goes(url: str) -> None:
    study = new_study(url)
    a, b, c = (run_lease(study._storage, "s") for _ in range(3))
    share_a = join(study, 3, a, "a", deadline=2000.0)
    assert study.user_attrs["deadlines"] == {"a": "1970-01-01T00:33:20+00:00"}
    assert run_deadlines(study) == {"a": 2000.0}
    join(study, 1, b, "b")  # while run a is going: its deadline stays
    assert run_deadlines(study) == {"a": 2000.0}
    withdraw(study, share_a, claim_lock(study._storage, "s"))  # run a ends
    assert run_deadlines(study) == {}
    a.release()
    join(study, 1, c, "c", deadline=3000.0)
    b.release()
    c.release()  # both killed: c could not drop its deadline
    assert run_deadlines(study) == {"c": 3000.0}
    d = run_lease(study._storage, "s")
    join(study, 1, d, "d")  # no run is going: a recorded deadline is a gone run's
    assert run_deadlines(study) == {}
    d.release()


def test_a_recorded_deadline_that_is_not_a_time_is_one_line(url: str) -> None:
    from hpsearch.errors import StorageError

    study = new_study(url)
    study.set_user_attr("deadlines", {"a": "soon"})
    with pytest.raises(StorageError, match="'deadlines' holds 'soon' for run 'a'"):
        run_deadlines(study)


def test_no_worker_claims_while_a_run_past_its_deadline_finishes(url: str) -> None:
    """A worker started by hand (no deadline of its own) on the study of a run past its
    deadline waits until that run has ended, then goes on with what is left: nothing."""
    study = new_study(url)
    lease = run_lease(study._storage, "s")
    share = join(study, 3, lease, "a", deadline=time.time() - 1)
    running = study.ask(X)  # run a's trial, running at its deadline
    running.set_user_attr(RUN_ATTR, "a")
    held: list[dict[str, float]] = []
    result: list[str] = []
    hand = optuna.load_study(study_name="s", storage=open_storage(url, heartbeat=60))

    def hand_worker() -> None:
        lock = claim_lock(hand._storage, "s")
        result.append(
            run_until_budget(hand, objective, lock, poll_seconds=0.1, on_hold=held.append)
        )

    worker = threading.Thread(target=hand_worker, daemon=True)
    worker.start()
    for _ in range(300):
        if held:
            break
        time.sleep(0.05)
    assert held and list(held[0]) == ["a"], "the worker did not say it waits on run a"
    time.sleep(0.5)  # a few more of its polls: it still claims nothing
    assert len(study.get_trials()) == 1
    study.tell(running, 0.5)  # run a's trial finishes; run a ends and gives back the rest
    assert withdraw(study, share, claim_lock(study._storage, "s")) == 2
    worker.join(60)
    assert result == ["budget"] and len(held) == 1
    assert finished(study) == target(study) == 1 and len(study.get_trials()) == 1
    lease.release()


def test_a_killed_runs_passed_deadline_stops_no_one_for_long(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    study = new_study(url)
    lease = run_lease(study._storage, "s")
    join(study, 2, lease, "a", deadline=time.time() - 1)
    lease.release()  # killed: its deadline stays recorded, with none of its trials running
    monkeypatch.setattr(deadlines, "DEADLINE_GRACE_SECONDS", 0.0)
    lock = claim_lock(study._storage, "s")
    assert run_until_budget(study, objective, lock, poll_seconds=0.1) == "budget"
    assert finished(study) == 2 and run_deadlines(study) == {}


def test_a_run_that_ends_keeps_the_slot_of_a_trial_a_hand_started_worker_runs(url: str) -> None:
    """The trial that a worker started by hand runs is started: taken back, its slot made the
    study finish one trial more than its target once that trial ended."""
    study = new_study(url)
    lease = run_lease(study._storage, "s")
    share = join(study, 3, lease, "a", deadline=time.time() + 600)
    study.add_trial(done())
    hand = study.ask(X)  # a hand-started worker's trial: no run's
    hand.set_user_attr(RUN_ATTR, None)
    killed = study.ask(X)  # a trial of this run's own worker, killed: it never finishes
    killed.set_user_attr(RUN_ATTR, "a")
    assert withdraw(study, share, claim_lock(study._storage, "s")) == 1
    assert target(study) == 2
    study.tell(hand, 0.5)
    assert finished(study) == target(study) == 2
    lease.release()


def test_forget_deadlines_takes_any_iterable_of_runs(tmp_path: Path) -> None:
    """Every run named is dropped, from a generator too (it was turned into a set once per
    recorded run, so a generator dropped only what its first pass matched)."""
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'd.db'}", study_name="d")
    at = time.time() + 3600
    for run in ("a", "b", "c"):
        deadlines.record_deadline(study, run, at, others=True)
    deadlines.forget_deadlines(study, (run for run in ("b", "c")))
    assert set(run_deadlines(study)) == {"a"}
