"""Optuna's private parts are used in one module, hpsearch.storage.optuna_private, and every one of
them exists in the installed Optuna (that module checks them when imported, and fails naming what is
missing)."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import optuna
import pytest
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from hpsearch.storage import optuna_private, resilience
from hpsearch.storage.state import state_counts
from hpsearch.storage.urls import open_storage

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "hpsearch"
PRIVATE_MODULE = SRC / "storage" / "optuna_private.py"

# Optuna's private names as hpsearch used them before they moved into
# hpsearch.storage.optuna_private: private modules and attributes, the private RDBStorage and Study
# methods, Optuna's own system attributes, and SQL on Optuna's tables.
PRIVATE = [
    re.compile(p)
    for p in (
        r"\boptuna(\.[A-Za-z0-9_]+)*\._(?!_)",
        r"\._(storage|study_id|trial_id|backend)\b",
        r"[\"']_backend[\"']",
        r"\b_CachedStorage\b",
        r"\b_create_scoped_session\b",
        r"\b_create_new_trial\b",
        r"\b_set_trial_param\b",
        r"\b_get_best_trial_id\b",
        r"\b_get_trials\b",
        r"\b_get_stale_trial_ids\b",
        r"\b_pop_waiting_trial_id\b",
        r"[\"'](fixed_params|failed_trial|grid_id)[\"']",
        r"[\"']trial_user_attributes[\"']",
        r"\bFROM\s+trials\b",
        r"\bsa\.table\(",
    )
]


def test_every_private_name_it_uses_exists_in_the_installed_optuna() -> None:
    assert optuna_private.missing() == []


def test_a_missing_private_name_fails_the_import_naming_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delattr(RDBStorage, "_get_trials")
    assert optuna_private.missing() == ["optuna.storages._rdb.storage.RDBStorage._get_trials"]
    with pytest.raises(ImportError, match=rf"Optuna {re.escape(optuna.__version__)} .*_get_trials"):
        optuna_private._check()


def test_no_other_module_uses_a_private_name() -> None:
    assert len(list(SRC.rglob("*.py"))) > 40  # every part's modules, not only the top's
    found = [
        f"{p.relative_to(SRC)}:{n}: {line.strip()}"
        for p in sorted(SRC.rglob("*.py"))
        if p != PRIVATE_MODULE
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if any(r.search(line) for r in PRIVATE)
    ]
    assert not found, "\n".join(found)


def test_the_scan_finds_what_it_looks_for() -> None:
    text = PRIVATE_MODULE.read_text()
    for r in PRIVATE:
        if r.pattern not in (r"\bsa\.table\(", r"\bFROM\s+trials\b", r"[\"']_backend[\"']"):
            assert r.search(text), r.pattern


def test_optuna_is_capped_below_its_next_major_version() -> None:
    assert re.search(r'"optuna>=\d+,<6"', (ROOT / "pyproject.toml").read_text())


def test_optunas_own_system_attributes_are_the_ones_named() -> None:
    study = optuna.create_study(storage=optuna.storages.InMemoryStorage())
    study.enqueue_trial({"x": 1.0})
    (waiting,) = study.get_trials(states=(TrialState.WAITING,))
    assert waiting.system_attrs[optuna_private.FIXED_PARAMS] == {"x": 1.0}

    grid = {"x": [1.0, 2.0]}
    study = optuna.create_study(sampler=optuna.samplers.GridSampler(grid))
    study.optimize(lambda t: t.suggest_float("x", 0, 3), n_trials=1)
    attrs = study.trials[0].system_attrs
    assert optuna_private.GRID_ID in attrs and attrs[optuna_private.SEARCH_SPACE] == grid

    study = optuna.create_study()
    failed = study.ask()
    study.tell(failed, state=TrialState.FAIL)
    with warnings.catch_warnings():  # experimental in Optuna
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry_stale = optuna.storages.RetryHeartbeatStaleTrialCallback()
    retry_stale(study, study.trials[0])
    (retry,) = study.get_trials(states=(TrialState.WAITING,))
    assert retry.system_attrs[optuna_private.FAILED_TRIAL] == failed.number


def test_the_rdb_parts_work_on_a_real_database(tmp_path: Path) -> None:
    storage = open_storage(f"sqlite:///{tmp_path / 'p.db'}")
    study = optuna.create_study(study_name="s", storage=storage)
    assert optuna_private.storage_of(study) is not None
    backend = optuna_private.study_backend(study)
    assert isinstance(backend, resilience.ResilientRDBStorage)
    done = study.ask()
    study.tell(done, 0.5)
    study.ask()
    assert state_counts(study) == {"COMPLETE": 1, "RUNNING": 1}
    (first, _) = study.get_trials()
    tid = optuna_private.trial_id(first)
    optuna_private.write_trial_user_attrs(backend.engine, tid, {"a": 1, "b": [2]})
    optuna_private.write_trial_user_attrs(backend.engine, tid, {"a": 3})
    assert optuna_private.read_trial_user_attrs(backend.engine, tid, ["a", "b", "c"]) == {
        "a": 3,
        "b": [2],
    }


def test_resilience_overrides_and_retries_the_private_methods() -> None:
    cls = resilience.ResilientRDBStorage
    assert cls.__dict__["_create_new_trial"] is cls.__dict__["create_trial_retrying"]
    for name in optuna_private.RDB_PRIVATE_METHODS:
        assert name in resilience._RETRIED and name in cls.__dict__, name


def _varied_study(url: str) -> tuple[RDBStorage, int]:
    """A two-objective study whose trials hold every kind of stored value: infinities, NaN and
    finite intermediate values, several distributions, user and system attributes, and every
    state (a RUNNING and a WAITING trial too)."""
    storage = open_storage(url)
    study = optuna.create_study(storage=storage, directions=["maximize", "minimize"])
    for i in range(7):
        t = study.ask()
        t.suggest_float("lr", 1e-4, 1.0, log=True)
        t.suggest_int("width", 8, 64, step=8)
        t.suggest_categorical("act", ["relu", "gelu", None])
        t.set_user_attr("config", {"i": i, "nested": [1, 2.5, "x"]})
        t.storage.set_trial_system_attr(t._trial_id, "sys", i)
        for step, v in enumerate((0.5, float("nan"), float("inf"), float("-inf"))):
            t.storage.set_trial_intermediate_value(t._trial_id, step, v)
        if i == 0:
            study.tell(t, [float("inf"), float("-inf")])
        elif i == 1:
            study.tell(t, state=TrialState.FAIL)
        elif i == 2:
            study.tell(t, state=TrialState.PRUNED)
        elif i < 6:
            study.tell(t, [0.1 * i, i])
    study.enqueue_trial({"lr": 0.01, "width": 16, "act": "gelu"}, user_attrs={"q": True})
    return storage, optuna_private.study_id(study)


def _comparable(t: optuna.trial.FrozenTrial) -> str:
    """Everything a FrozenTrial holds, its id too, as text (NaN is not equal to itself)."""
    return json.dumps(t.__dict__, sort_keys=True, default=repr)


@pytest.mark.parametrize("backend_name", ["sqlite", "postgresql"])
def test_rdb_get_trials_and_get_trial_read_what_optunas_orm_reads(
    backend_name: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """hpsearch reads trials in bulk without the ORM (ten times faster on a big study): for every
    way Optuna asks (all trials, some states, the cache layer's "these ids or above that one",
    and more ids than fit an IN list) it returns exactly what RDBStorage's own code returns."""
    url = (
        request.getfixturevalue("pg_url")
        if backend_name == "postgresql"
        else f"sqlite:///{tmp_path / 'v.db'}"
    )
    storage, sid = _varied_study(url)
    # the fast ones are in use
    assert type(storage)._get_trials is not RDBStorage._get_trials
    assert type(storage).get_trial is not RDBStorage.get_trial
    ids = [optuna_private.trial_id(t) for t in storage.get_all_trials(sid)]
    asks: list[tuple[object, set[int], int]] = [
        (None, set(), -1),
        ((TrialState.COMPLETE,), set(), -1),
        ((TrialState.RUNNING, TrialState.WAITING, TrialState.FAIL), set(), -1),
        (None, {ids[1], ids[6]}, ids[3]),
        (None, set(), ids[4]),
        (None, {ids[2], *range(10_000, 10_600)}, ids[5]),  # past the IN list's size
        (None, {ids[5]}, ids[2]),  # an included id above the bound is read once
    ]
    for states, included, above in asks:
        fast = optuna_private.rdb_get_trials(storage, sid, states, included, above)
        orm = RDBStorage._get_trials(storage, sid, states, included, above)
        assert [_comparable(t) for t in fast] == [_comparable(t) for t in orm]
    with pytest.raises(KeyError):
        optuna_private.rdb_get_trials(storage, sid + 100, None, set(), -1)
    for tid in ids:  # one trial, as get_trial reads it
        fast_one, orm_one = storage.get_trial(tid), RDBStorage.get_trial(storage, tid)
        assert _comparable(fast_one) == _comparable(orm_one)
    with pytest.raises(KeyError):
        storage.get_trial(max(ids) + 100)


@pytest.mark.parametrize("backend_name", ["sqlite", "postgresql"])
def test_an_epoch_is_three_statements_and_writes_what_optuna_would(
    backend_name: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """record_on_trial's write reads the trial once and upserts the value and all attributes in
    one statement each (Optuna's own writes read the trial again for every attribute: 17
    statements for 5 attributes); what it leaves is what set_user_attr and report leave, a step
    reported again replaced, and a finished trial is refused with nothing written."""
    import sqlalchemy as sa

    from hpsearch.storage.state import record_on_trial

    url = (
        request.getfixturevalue("pg_url")
        if backend_name == "postgresql"
        else f"sqlite:///{tmp_path / 'e.db'}"
    )
    storage = open_storage(url)
    study = optuna.create_study(storage=storage)
    trial = study.ask()
    record_on_trial(trial, {"a": 1, "b": {"x": [1, 2]}}, step=1, value=0.5)
    statements: list[str] = []
    sa.event.listen(
        storage.engine, "before_cursor_execute", lambda *a: statements.append(str(a[2]))
    )
    epoch = {"a": 2, "c": "new", "d": None, "e": 1.5, "f": [True]}
    record_on_trial(trial, epoch, step=1, value=float("nan"))
    assert len(statements) == 3, statements
    record_on_trial(trial, {}, step=2, value=float("-inf"))
    stored = storage.get_trial(trial._trial_id)
    assert stored.user_attrs == {"b": {"x": [1, 2]}, **epoch}
    assert stored.intermediate_values[2] == float("-inf")
    assert stored.intermediate_values[1] != stored.intermediate_values[1]  # NaN replaced 0.5
    study.tell(trial, 1.0)
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        record_on_trial(trial, {"late": 1}, step=3, value=1.0)
    after = storage.get_trial(trial._trial_id)
    assert "late" not in after.user_attrs and 3 not in after.intermediate_values


@pytest.mark.parametrize("backend_name", ["sqlite", "postgresql"])
def test_the_state_index_is_added_once_and_a_read_only_database_is_left_alone(
    backend_name: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The index on trials (study_id, state, trial_id) that run and worker add (Optuna's schema
    indexes trials by study only): made once, made again without error, and on a database that
    cannot take it nothing fails."""
    import sqlalchemy as sa

    url = (
        request.getfixturevalue("pg_url")
        if backend_name == "postgresql"
        else f"sqlite:///{tmp_path / 'i.db'}"
    )
    engine = open_storage(url).engine
    names = [i["name"] for i in sa.inspect(engine).get_indexes(optuna_private.TRIALS_TABLE)]
    assert optuna_private.STATE_INDEX not in names  # Optuna's own schema lacks it
    assert optuna_private.ensure_state_index(engine)
    assert optuna_private.ensure_state_index(engine)  # already there
    index = next(
        i
        for i in sa.inspect(engine).get_indexes(optuna_private.TRIALS_TABLE)
        if i["name"] == optuna_private.STATE_INDEX
    )
    assert index["column_names"] == ["study_id", "state", "trial_id"]
    if backend_name == "sqlite":
        open_storage(f"sqlite:///{tmp_path / 'ro.db'}")
        ro = sa.create_engine(f"sqlite:///file:{tmp_path / 'ro.db'}?mode=ro&uri=true")
        assert not optuna_private.ensure_state_index(ro)
