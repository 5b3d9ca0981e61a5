"""Every use of Optuna's private parts, in one module that checks them when it is imported.

hpsearch reaches past Optuna's public API in a few places: the storage and id a study holds, the
RDB storage behind Optuna's cache layer, the RDB storage's private methods (retried, and one
overridden, by :mod:`hpsearch.storage.resilience`; those that write without committing, to
record a trial's epoch in one transaction), Optuna's ``trials`` and ``trial_user_attributes``
tables (read and written with SQL), a running trial's id and its in-process copy of what it
recorded, the order in which a study pops waiting trials, the system attributes Optuna keeps on
trials, and the name of the logger of ``study.optimize``.

No other module of hpsearch names any of these (``tests/storage/test_optuna_private.py`` scans the
sources). When an Optuna release renames or drops one, importing this module (and so hpsearch)
fails with an ImportError that names each missing part and the installed Optuna version, instead
of a retry silently lost or a worker failing at its first trial. ``pyproject.toml`` caps Optuna
below its next major version for the same reason.
"""

from __future__ import annotations

import datetime
import importlib
import json
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import optuna
import sqlalchemy as sa
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

OPTIMIZE_LOGGER = "optuna.study._optimize"  # the logger of study.optimize's "Trial N failed"

# System attributes Optuna itself keeps on trials.
FIXED_PARAMS = "fixed_params"  # an enqueued trial's parameters
FAILED_TRIAL = "failed_trial"  # on a retry of a stale trial: the number of the trial it retries
GRID_ID = "grid_id"  # GridSampler: the trial's grid point
SEARCH_SPACE = "search_space"  # GridSampler: the grid it came from

# RDBStorage's private methods that Optuna's cache layer calls instead of the public ones:
# hpsearch.storage.resilience retries them like the public ones.
RDB_PRIVATE_METHODS = (
    "_set_trial_param",
    "_get_best_trial_id",
    "_get_trials",
    "_get_stale_trial_ids",
)
# The method through which both ``create_new_trial`` and the cache layer create a trial.
_CREATE_NEW_TRIAL = "_create_new_trial"
# RDBStorage's writes inside a caller's session (no commit of their own): what
# set_trial_intermediate_value and set_trial_user_attr run, so that one transaction can hold both.
_WITHOUT_COMMIT = (
    "_set_trial_intermediate_value_without_commit",
    "_set_trial_attr_without_commit",
)

TRIALS_TABLE = "trials"
TRIAL_USER_ATTRS_TABLE = "trial_user_attributes"
_TRIAL_COLUMNS = ("trial_id", "number", "study_id", "state")
_TRIAL_USER_ATTR_COLUMNS = ("trial_id", "key", "value_json")
_HEARTBEAT_COLUMNS = ("trial_id",)

# Instance attributes that a class's __init__ sets: (module, class, attribute).
_INSTANCE_ATTRS = (
    ("optuna.study", "Study", "_storage"),
    ("optuna.study", "Study", "_study_id"),
    ("optuna.trial", "FrozenTrial", "_trial_id"),
    ("optuna.storages._cached_storage", "_CachedStorage", "_backend"),
    ("optuna.storages._rdb.storage", "RDBStorage", "heartbeat_interval"),
    ("optuna.storages._rdb.storage", "RDBStorage", "grace_period"),
    ("optuna.storages._cached_storage", "_CachedStorage", "_studies"),
    ("optuna.storages._cached_storage", "_CachedStorage", "_lock"),
    ("optuna.storages._cached_storage", "_StudyInfo", "unfinished_trial_ids"),
    ("optuna.trial", "Trial", "_trial_id"),
    ("optuna.trial", "Trial", "_cached_frozen_trial"),
)
# Module-level names: (module, name).
_MODULE_NAMES = (
    ("optuna.storages._rdb.storage", "_create_scoped_session"),
    ("optuna.storages._rdb.models", "TrialModel"),
    ("optuna.storages._rdb.models", "TrialUserAttributeModel"),
    ("optuna.storages._rdb.models", "TrialHeartbeatModel"),
    ("optuna.storages._rdb.models", "TrialIntermediateValueModel"),
    ("optuna.storages._rdb.models", "StudyModel"),
    ("optuna.storages._rdb.models", "NOT_FOUND_MSG"),
    ("optuna.storages._rdb.models", "TrialParamModel"),
    ("optuna.storages._rdb.models", "TrialValueModel"),
    ("optuna.storages._rdb.models", "TrialSystemAttributeModel"),
)
# Methods on classes: (class, name).
_METHODS: tuple[tuple[type, str], ...] = (
    *((RDBStorage, name) for name in (*RDB_PRIVATE_METHODS, _CREATE_NEW_TRIAL, *_WITHOUT_COMMIT)),
    (optuna.Study, "_pop_waiting_trial_id"),
)
# Methods of Optuna's cache layer: (module, class, name).
_CACHE_METHODS = (("optuna.storages._cached_storage", "_CachedStorage", "_add_trials_to_cache"),)


def _module(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def missing() -> list[str]:
    """The private parts of Optuna hpsearch uses that the installed Optuna lacks."""
    gone: list[str] = []
    if _module(OPTIMIZE_LOGGER) is None:
        gone.append(f"module {OPTIMIZE_LOGGER}")
    for mod, cls_name, attr in _INSTANCE_ATTRS:
        cls = getattr(_module(mod), cls_name, None)
        init = getattr(cls, "__init__", None)
        code = getattr(init, "__code__", None)
        if code is None or attr not in code.co_names:
            gone.append(f"{mod}.{cls_name}().{attr}")
    for mod, name in _MODULE_NAMES:
        if not hasattr(_module(mod), name):
            gone.append(f"{mod}.{name}")
    for cls, name in _METHODS:
        if not callable(getattr(cls, name, None)):
            gone.append(f"{cls.__module__}.{cls.__qualname__}.{name}")
    for mod, cls_name, name in _CACHE_METHODS:
        if not callable(getattr(getattr(_module(mod), cls_name, None), name, None)):
            gone.append(f"{mod}.{cls_name}.{name}")
    models = _module("optuna.storages._rdb.models")
    tables = (
        ("TrialModel", TRIALS_TABLE, _TRIAL_COLUMNS),
        ("TrialUserAttributeModel", TRIAL_USER_ATTRS_TABLE, _TRIAL_USER_ATTR_COLUMNS),
        ("TrialHeartbeatModel", None, _HEARTBEAT_COLUMNS),
        ("TrialIntermediateValueModel", None, ("trial_id",)),
    )
    for model_name, table, columns in tables:
        model = getattr(models, model_name, None)
        sql_table = getattr(model, "__table__", None)
        if sql_table is None:
            continue  # named above
        if table is not None and sql_table.name != table:
            gone.append(f"table {table} ({model_name}'s table is {sql_table.name})")
        gone += [f"column {sql_table.name}.{c}" for c in columns if c not in sql_table.columns]
    trial_model = getattr(models, "TrialModel", None)
    if trial_model is not None and "heartbeats" not in sa.inspect(trial_model).relationships:
        gone.append("relationship TrialModel.heartbeats")
    return gone


def _check() -> None:
    gone = missing()
    if gone:
        raise ImportError(
            f"hpsearch relies on private parts of Optuna that Optuna {optuna.__version__} does "
            f"not have: {', '.join(gone)}; install the Optuna version pyproject.toml allows"
        )


_check()

from optuna.storages._cached_storage import _CachedStorage, _StudyInfo  # noqa: E402 - checked
from optuna.storages._rdb import models as _models  # noqa: E402 - checked above
from optuna.storages._rdb.storage import _create_scoped_session  # noqa: E402 - checked above

# --- a study's storage -----------------------------------------------------------------------


def storage_of(study: optuna.Study) -> optuna.storages.BaseStorage:
    """The storage a study talks to (for an RDB storage: Optuna's cache layer around it)."""
    storage: optuna.storages.BaseStorage = study._storage
    return storage


def study_id(study: optuna.Study) -> int:
    """The study's id in its storage."""
    return int(study._study_id)


def backend(storage: optuna.storages.BaseStorage) -> optuna.storages.BaseStorage:
    """The storage behind Optuna's cache layer (a study wraps RDBStorage in one), else itself."""
    inner: optuna.storages.BaseStorage = getattr(storage, "_backend", storage)
    return inner


def study_backend(study: optuna.Study) -> optuna.storages.BaseStorage:
    """The storage behind the study's cache layer: it reads the database, not the cache."""
    return backend(storage_of(study))


def trial_id(trial: FrozenTrial) -> int:
    """The trial's id in its storage (not its number)."""
    return int(trial._trial_id)


def running_trial_id(trial: optuna.Trial) -> int:
    """The id in its storage of a trial being run (not its number)."""
    return int(trial._trial_id)


def remember_on_trial(
    trial: optuna.Trial, attrs: Mapping[str, Any], step: int | None, value: float | None
) -> None:
    """Put what was just written to the storage into the trial's own copy, as ``set_user_attr``
    and ``report`` do: ``user_attrs`` and ``should_prune`` (the pruner) read that copy."""
    cached: FrozenTrial = trial._cached_frozen_trial
    cached.user_attrs.update(attrs)
    if step is not None and value is not None:
        cached.intermediate_values[step] = value


def forget_on_trial(trial: optuna.Trial) -> None:
    """Drop the intermediate values from the trial's own copy (see :func:`remember_on_trial`)."""
    cached: FrozenTrial = trial._cached_frozen_trial
    cached.intermediate_values.clear()


def set_pop_waiting(study: optuna.Study, pop: Callable[[], int | None]) -> None:
    """Replace how ``study`` picks the next waiting trial (Optuna pops them in number order):
    ``pop`` marks one RUNNING and returns its trial id, or returns None. A ``pop`` that reads
    past Optuna's cache layer tells it of the trial it took (:func:`cache_claimed_trial`)."""
    setattr(study, "_pop_waiting_trial_id", pop)  # noqa: B010 - an instance override


def cache_claimed_trial(study: optuna.Study, trial: FrozenTrial) -> None:
    """Tell Optuna's cache layer of a waiting trial that this process read and marked RUNNING
    past it. The cache maps the ids of the trials it has read to their study and number, and
    a trial's parameter writes look its id up there: Optuna's own pop reads the waiting trials
    through the cache, but a trial another process enqueued since this one last read the
    study was unknown to it, and the first parameter of that trial failed with a KeyError
    of its id. The trial is kept among the cache's unfinished ones, so that its next read of
    the study brings it up to date."""
    storage = storage_of(study)
    if not isinstance(storage, _CachedStorage):
        return
    sid = study_id(study)
    with storage._lock:
        info = storage._studies.setdefault(sid, _StudyInfo())
        storage._add_trials_to_cache(sid, [trial])
        info.unfinished_trial_ids.add(trial_id(trial))


def set_heartbeat(storage: RDBStorage, interval: int, grace: int) -> None:
    """Change an RDB storage's heartbeat interval and the silence after which it takes a trial
    for stale (Optuna reads both from the storage at each trial, and sets them only in
    ``RDBStorage.__init__``)."""
    storage.heartbeat_interval = interval
    storage.grace_period = grace


# --- RDBStorage's private methods ----------------------------------------------------------


def override_get_trials(
    cls: type[RDBStorage],
    method: Callable[[Any, int, Any, set[int], int], list[FrozenTrial]],
) -> None:
    """Make ``method`` the way ``cls`` (an RDBStorage subclass) reads trials in bulk: both
    ``get_all_trials`` and Optuna's cache layer go through RDBStorage's private ``_get_trials``."""
    setattr(cls, "_get_trials", method)  # noqa: B010 - named in RDB_PRIVATE_METHODS


def override_create_new_trial(
    cls: type[RDBStorage],
    method: Callable[[Any, int, FrozenTrial | None], FrozenTrial],
) -> None:
    """Make ``method`` the way ``cls`` (an RDBStorage subclass) creates every trial: both
    ``create_new_trial`` and Optuna's cache layer go through RDBStorage's private method."""
    setattr(cls, _CREATE_NEW_TRIAL, method)


def rdb_create_new_trial(
    storage: RDBStorage, study_id: int, template_trial: FrozenTrial | None
) -> FrozenTrial:
    """RDBStorage's own trial creation, for an override to call."""
    trial: FrozenTrial = RDBStorage._create_new_trial(storage, study_id, template_trial)
    return trial


def add_missing_heartbeats(storage: RDBStorage, study_id: int) -> list[int]:
    """Give each RUNNING trial of the study that has no heartbeat record one, dated by the
    database's clock, in one transaction; returns their numbers. An IntegrityError (another
    worker, or the owner, wrote a record first) is ignored, by Optuna's session helper."""
    from sqlalchemy.orm import selectinload

    trial_model: Any = _models.TrialModel
    with _create_scoped_session(storage.scoped_session, True) as session:
        running = (
            session.query(trial_model)
            .options(selectinload(trial_model.heartbeats))
            .filter(trial_model.state == TrialState.RUNNING)
            .filter(trial_model.study_id == study_id)
            .all()
        )
        orphans = [t for t in running if not t.heartbeats]
        for t in orphans:
            session.add(_models.TrialHeartbeatModel(trial_id=t.trial_id))
        return [int(t.number) for t in orphans]


def write_running_trial(
    storage: RDBStorage,
    trial_id: int,
    attrs: Mapping[str, Any],
    step: int | None,
    value: float | None,
) -> None:
    """The trial's intermediate value at ``step`` (replacing one already there) and its user
    attributes ``attrs``, written as RDBStorage's own ``set_trial_intermediate_value`` and
    ``set_trial_user_attr`` write them, but in one transaction: one commit. A finished trial is
    refused as by those (UpdateFinishedTrialError) and nothing is written.

    On PostgreSQL and SQLite the trial is read once and all of ``attrs`` is one multi-row upsert
    (RDBStorage reads the trial again for each attribute: 3 statements each, which made the
    attributes of an epoch most of a worker's SQL); on another database, RDBStorage's own
    writes, one by one."""
    dialect = storage.engine.name
    with _create_scoped_session(storage.scoped_session) as session:
        if dialect not in ("postgresql", "sqlite") or (
            dialect == "sqlite" and sqlite3.sqlite_version_info < (3, 24, 0)
        ):
            if step is not None and value is not None:
                storage._set_trial_intermediate_value_without_commit(session, trial_id, step, value)
            for key, v in attrs.items():
                storage._set_trial_attr_without_commit(
                    session, _models.TrialUserAttributeModel, trial_id, key, v
                )
            return
        trial = _models.TrialModel.find_or_raise_by_id(trial_id, session)
        storage.check_trial_is_updatable(trial_id, trial.state)
        insert: Any = _dialect_insert(dialect)
        if step is not None and value is not None:
            iv_model: Any = _models.TrialIntermediateValueModel
            stored, kind = iv_model.intermediate_value_to_stored_repr(value)
            stmt = insert(iv_model).values(
                trial_id=trial_id,
                step=step,
                intermediate_value=stored,
                intermediate_value_type=kind,
            )
            session.execute(
                stmt.on_conflict_do_update(
                    index_elements=[iv_model.trial_id, iv_model.step],
                    set_={
                        "intermediate_value": stmt.excluded.intermediate_value,
                        "intermediate_value_type": stmt.excluded.intermediate_value_type,
                    },
                )
            )
        if attrs:
            attr_model: Any = _models.TrialUserAttributeModel
            stmt = insert(attr_model).values(
                [
                    {"trial_id": trial_id, "key": key, "value_json": json.dumps(v)}
                    for key, v in attrs.items()
                ]
            )
            session.execute(
                stmt.on_conflict_do_update(
                    index_elements=[attr_model.trial_id, attr_model.key],
                    set_={"value_json": stmt.excluded.value_json},
                )
            )


def _dialect_insert(dialect: str) -> Callable[..., Any]:
    """The INSERT with ON CONFLICT of PostgreSQL or SQLite (3.24 and later, as Optuna's)."""
    if dialect == "postgresql":
        from sqlalchemy.dialects import postgresql

        return postgresql.insert
    from sqlalchemy.dialects import sqlite

    return sqlite.insert


def delete_intermediate_values(storage: RDBStorage, trial_id: int) -> None:
    """Remove a trial's intermediate values, in one transaction."""
    model: Any = _models.TrialIntermediateValueModel
    with _create_scoped_session(storage.scoped_session) as session:
        session.query(model).filter(model.trial_id == trial_id).delete()


# --- Optuna's tables, with SQL ---------------------------------------------------------------


def state_count_rows(engine: sa.Engine, study_id: int) -> list[Any]:
    """(state, count) rows of the study's trials, counted by the database in one query; a state
    reads as its enum name or as ``TrialState.NAME``."""
    with engine.connect() as conn:
        return list(
            conn.execute(
                sa.text(
                    f"SELECT state, COUNT(*) FROM {TRIALS_TABLE} WHERE study_id = :s GROUP BY state"
                ),
                {"s": study_id},
            ).all()
        )


_ATTRS = sa.table(
    TRIAL_USER_ATTRS_TABLE,
    sa.column("trial_id", sa.Integer),
    sa.column("key", sa.String),
    sa.column("value_json", sa.Text),
)


def read_trial_user_attrs(engine: sa.Engine, trial_id: int, keys: Sequence[str]) -> dict[str, Any]:
    """A trial's user attributes ``keys`` as the database has them now (Optuna's in-process
    cache never re-reads a finished trial)."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(_ATTRS.c.key, _ATTRS.c.value_json).where(
                _ATTRS.c.trial_id == trial_id, _ATTRS.c.key.in_(list(keys))
            )
        ).all()
    return {str(k): json.loads(v) for k, v in rows}


def write_trial_user_attrs(engine: sa.Engine, trial_id: int, attrs: Mapping[str, Any]) -> None:
    """Set user attributes of a trial, finished or not, in one transaction (insert or update)."""
    with engine.begin() as conn:
        for key, value in attrs.items():
            where = (_ATTRS.c.trial_id == trial_id) & (_ATTRS.c.key == key)
            done = conn.execute(sa.update(_ATTRS).where(where).values(value_json=json.dumps(value)))
            if done.rowcount == 0:
                conn.execute(
                    sa.insert(_ATTRS).values(
                        trial_id=trial_id, key=key, value_json=json.dumps(value)
                    )
                )


# --- reading trials in bulk ------------------------------------------------------------------

# The child tables of a trial that a FrozenTrial holds: (model, its columns read, its id column).
_CHILDREN = (
    ("TrialParamModel", ("param_name", "param_value", "distribution_json"), "param_id"),
    ("TrialValueModel", ("objective", "value", "value_type"), "trial_value_id"),
    ("TrialUserAttributeModel", ("key", "value_json"), "trial_user_attribute_id"),
    ("TrialSystemAttributeModel", ("key", "value_json"), "trial_system_attribute_id"),
    (
        "TrialIntermediateValueModel",
        ("step", "intermediate_value", "intermediate_value_type"),
        "trial_intermediate_value_id",
    ),
)
_MAX_IN = 500  # more trial ids than this are filtered here rather than in an SQL IN list


def _local(utc: Any) -> Any:
    """A stored naive UTC datetime as the naive local time FrozenTrial holds (as TrialModel's
    ``datetime_start`` property converts it)."""
    if utc is None:
        return None
    return utc.replace(tzinfo=datetime.UTC).astimezone().replace(tzinfo=None)


def rdb_get_trials(
    storage: RDBStorage,
    study_id: int,
    states: Any,
    included_trial_ids: set[int],
    trial_id_greater_than: int,
) -> list[FrozenTrial]:
    """What ``RDBStorage._get_trials`` returns (the study's trials in ``states`` whose id is in
    ``included_trial_ids`` or above ``trial_id_greater_than``, by trial id), read with one SQL
    query per table and built into FrozenTrials directly, without SQLAlchemy's ORM objects: the
    ORM spends about 0.5 ms per trial, which made loading a 10,000-trial study take seconds
    (every read command, every worker joining a study)."""
    included = {i for i in included_trial_ids if i <= trial_id_greater_than}
    trials_t = _models.TrialModel.__table__
    where = trials_t.c.study_id == study_id
    if states is not None:
        where = where & trials_t.c.state.in_(list(states))
    post_filter = False
    if included and trial_id_greater_than > -1:
        if len(included) <= _MAX_IN:
            where = where & sa.or_(
                trials_t.c.trial_id.in_(sorted(included)),
                trials_t.c.trial_id > trial_id_greater_than,
            )
        else:
            where = where & (trials_t.c.trial_id >= min(included))
            post_filter = True
    elif trial_id_greater_than > -1:
        where = where & (trials_t.c.trial_id > trial_id_greater_than)
    with storage.engine.connect() as conn:
        study_t = _models.StudyModel.__table__
        found = conn.execute(sa.select(study_t.c.study_id).where(study_t.c.study_id == study_id))
        if found.first() is None:
            raise KeyError(f"No study with study_id {study_id} exists.")  # as find_or_raise_by_id
        return _read_trials(conn, where, included if post_filter else None, trial_id_greater_than)


def rdb_get_trial(storage: RDBStorage, trial_id: int) -> FrozenTrial:
    """What ``RDBStorage.get_trial`` returns, read as :func:`rdb_get_trials` reads trials (the
    ORM's way is six queries and its objects; a worker reads its trial three times a trial)."""
    trials_t = _models.TrialModel.__table__
    with storage.engine.connect() as conn:
        found = _read_trials(conn, trials_t.c.trial_id == trial_id, None, -1)
    if not found:
        raise KeyError(_models.NOT_FOUND_MSG)  # as RDBStorage's
    return found[0]


def _read_trials(
    conn: sa.Connection, where: Any, included: set[int] | None, trial_id_greater_than: int
) -> list[FrozenTrial]:
    """The trials that ``where`` selects, by trial id; with ``included``, only those in it or
    above ``trial_id_greater_than``."""
    trials_t = _models.TrialModel.__table__
    rows = conn.execute(
        sa.select(
            trials_t.c.trial_id,
            trials_t.c.number,
            trials_t.c.state,
            trials_t.c.datetime_start,
            trials_t.c.datetime_complete,
        )
        .where(where)
        .order_by(trials_t.c.trial_id)
    ).all()
    if included is not None:
        rows = [r for r in rows if r[0] in included or r[0] > trial_id_greater_than]
    if not rows:
        return []
    children: dict[str, dict[int, list[Any]]] = {}
    for model_name, columns, id_column in _CHILDREN:
        table = getattr(_models, model_name).__table__
        by_trial: dict[int, list[Any]] = {}
        query = (
            sa.select(table.c.trial_id, *(table.c[c] for c in columns))
            .join(trials_t, trials_t.c.trial_id == table.c.trial_id)
            .where(where)
            .order_by(table.c[id_column])
        )
        for row in conn.execute(query).all():  # fetchall: psycopg's fetchone per row is slow
            by_trial.setdefault(row[0], []).append(row)
        children[model_name] = by_trial
    dists: dict[str, Any] = {}
    value_of = _models.TrialValueModel.stored_repr_to_value
    step_value_of = _models.TrialIntermediateValueModel.stored_repr_to_intermediate_value
    out: list[FrozenTrial] = []
    for tid, number, state, start, complete in rows:
        values: list[float] | None = None
        value_rows = children["TrialValueModel"].get(tid)
        if value_rows:
            values = [0.0] * len(value_rows)
            for _, objective, value, value_type in value_rows:
                values[objective] = value_of(value, value_type)
        params: dict[str, Any] = {}
        distributions: dict[str, Any] = {}
        for _, name, internal, dist_json in children["TrialParamModel"].get(tid, ()):
            dist = dists.get(dist_json)
            if dist is None:
                dist = dists[dist_json] = optuna.distributions.json_to_distribution(dist_json)
            params[name] = dist.to_external_repr(internal)
            distributions[name] = dist
        out.append(
            FrozenTrial(
                number=number,
                state=state,
                value=None,
                values=values,
                datetime_start=_local(start),
                datetime_complete=_local(complete),
                params=params,
                distributions=distributions,
                user_attrs={
                    k: json.loads(v) for _, k, v in children["TrialUserAttributeModel"].get(tid, ())
                },
                system_attrs={
                    k: json.loads(v)
                    for _, k, v in children["TrialSystemAttributeModel"].get(tid, ())
                },
                intermediate_values={
                    step: step_value_of(v, kind)
                    for _, step, v, kind in children["TrialIntermediateValueModel"].get(tid, ())
                },
                trial_id=tid,
            )
        )
    return out


# --- an index Optuna's schema lacks ---------------------------------------------------------

STATE_INDEX = "hpsearch_trials_study_state"


def ensure_state_index(engine: sa.Engine) -> bool:
    """Add an index on the trials' (study_id, state, trial_id) unless there is one; returns
    whether the index is there now.

    Optuna indexes trials by study only, so every query of a study's RUNNING or WAITING trials,
    its counts by state (the claim loop's budget check) and the count that numbers a new trial
    read every row of the study: 30-50 ms each on 10,000 trials, several times a trial, which is
    how a worker's time per trial grows with the study (optuna#3053). With the index they read
    the few rows they need. Optuna ignores an index it did not make. A database that cannot
    take it (read-only, another process adding it at the same moment) is left as it is."""

    def there() -> bool:
        return any(i["name"] == STATE_INDEX for i in sa.inspect(engine).get_indexes(TRIALS_TABLE))

    if there():  # read first: CREATE INDEX IF NOT EXISTS locks the table against writes
        return True
    ddl = f"CREATE INDEX IF NOT EXISTS {STATE_INDEX} ON {TRIALS_TABLE} (study_id, state, trial_id)"
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(ddl))
    except sa.exc.DBAPIError:
        pass
    return there()
