"""The one place where storage URLs, samplers, pruners and studies are built from the config.

Everything else receives an ``optuna.Study``, never a URL string.
"""

from __future__ import annotations

import itertools
import os
import random
import re
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import optuna
import sqlalchemy
import sqlalchemy.exc
from optuna.trial import TrialState
from sqlalchemy.engine import make_url

from hpsearch.config import NamedOptions, StudyConfig
from hpsearch.errors import ConfigError, StorageError, first_line
from hpsearch.space import baseline_params, near_baseline_params
from hpsearch.storage import optuna_private
from hpsearch.storage.compat import check_directions, record_study_file
from hpsearch.storage.resilience import ResilientRDBStorage
from hpsearch.storage.state import (
    BASELINE_ATTR,
    METRIC_ATTR,
    NEAR_BASELINE_ATTR,
    OBJECTIVES_ATTR,
    fresh_trials,
)

T = TypeVar("T")
DEFAULT_STORAGE = "sqlite:///hpsearch.db"
SCHEMES = ("sqlite", "postgresql", "mysql")
MAX_STUDY_NAME = 512  # Optuna's studies.study_name column is VARCHAR(512)


def accuracy(t: optuna.trial.FrozenTrial) -> float | None:
    """A trial's validation accuracy: its value, or its first value in a study with two
    objectives (``FrozenTrial.value`` raises there)."""
    return float(t.values[0]) if t.values else None


def is_feasible(t: optuna.trial.FrozenTrial) -> bool:
    """Within the study's deployment budget (``search.constraints``): every constraint Optuna
    recorded for the trial is <= 0 (a trial with none is feasible)."""
    return all(v <= 0 for v in t.constraints.values())


def storage_url(cli_value: str | None) -> str:
    """``--storage``, else ``$HPSEARCH_STORAGE``, else an SQLite file in the working directory."""
    return cli_value or os.environ.get("HPSEARCH_STORAGE") or DEFAULT_STORAGE


def artifacts_dir(url: str, cli_value: str | None = None) -> Path:
    """Where checkpoints (Optuna artifacts) live: ``--artifacts``, else ``$HPSEARCH_ARTIFACTS``,
    else beside an SQLite file (``hpsearch.db`` -> ``hpsearch-artifacts/``), else
    ``./hpsearch-artifacts`` (PostgreSQL: give every host the same shared directory)."""
    chosen = cli_value or os.environ.get("HPSEARCH_ARTIFACTS")
    if chosen:
        return Path(chosen).expanduser().resolve()
    try:
        parsed = make_url(url)
    except sqlalchemy.exc.ArgumentError:
        parsed = None
    if parsed is not None and parsed.get_backend_name() == "sqlite":
        db = parsed.database
        if db and db != ":memory:" and not db.startswith("file:"):
            path = Path(db).expanduser().resolve()
            return path.with_name(f"{path.stem}-artifacts")
    return Path("hpsearch-artifacts").resolve()


_URL_PASSWORD = re.compile(r"(\b[A-Za-z][\w+.-]*://[^:/@\s]*:)[^\s/]*@")


def mask_secrets(text: str) -> str:
    """``text`` with the password of every URL in it replaced by ``***`` (command lines)."""
    return _URL_PASSWORD.sub(r"\1***@", text)


def mask_url(url: str) -> str:
    """The URL with its password replaced by ``***``, safe to print and log."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:
        return "<unparseable storage URL>"


def open_storage(url: str, heartbeat: int | None = None) -> optuna.storages.RDBStorage:
    """An RDB storage for ``url``; a bad URL or an unreachable database is a StorageError.

    With ``heartbeat`` (seconds), a running trial writes a heartbeat that often; one silent for
    three intervals is marked failed and retried (up to twice) by the next worker that claims.
    """
    shown = mask_url(url)
    url, engine_kwargs = _engine_args(url)
    try:
        beat: dict[str, Any] = {}
        if heartbeat:
            beat = {
                "heartbeat_interval": heartbeat,
                "grace_period": 3 * heartbeat,
                "heartbeat_stale_trial_callback": optuna.storages.RetryHeartbeatStaleTrialCallback(
                    max_retry=2
                ),
            }
        return _create_storage(url, engine_kwargs, beat)
    except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError, RuntimeError) as e:
        raise StorageError(f"cannot open storage {shown}: {_reason(e, url, shown)}") from None


def check_storage(url: str) -> None:
    """Find what :func:`open_storage` would refuse in ``url`` without writing anything, so that
    a mistyped or unreachable storage is reported before the slow work that precedes opening
    it (the GPU probe, the data decode): a URL that is no database URL or of an unknown scheme,
    an in-memory SQLite database, an SQLite file in a directory that does not exist or cannot be
    written, a file that is not a database, a server that does not answer or has no such
    database. Nothing is created: a new SQLite file is made by open_storage, later."""
    shown = mask_url(url)
    url, engine_kwargs = _engine_args(url)
    parsed = make_url(url)
    db = parsed.database or ""
    if parsed.get_backend_name() == "sqlite" and not db.startswith("file:"):
        path = Path(db).expanduser()
        if not path.exists():
            folder = path.parent.resolve()
            if not folder.is_dir():
                why = f"{folder} {'is not a directory' if folder.exists() else 'does not exist'}"
            elif not os.access(folder, os.W_OK | os.X_OK):
                why = f"cannot create a file in {folder}"
            else:
                return  # a new database, made where it can be
            raise StorageError(f"cannot open storage {shown}: {why}")
    try:
        engine = sqlalchemy.create_engine(url, **engine_kwargs)
        try:
            sqlalchemy.inspect(engine).has_table("studies")  # reads; creates nothing
        finally:
            engine.dispose()
    except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError, RuntimeError) as e:
        raise StorageError(f"cannot open storage {shown}: {_reason(e, url, shown)}") from None


def _engine_args(url: str) -> tuple[str, dict[str, Any]]:
    """The URL to connect to (PostgreSQL through psycopg 3) and SQLAlchemy's engine options;
    a URL that open_storage would refuse before connecting is a StorageError."""
    shown = mask_url(url)
    try:
        parsed = make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise StorageError(
            f"storage URL {shown} is not a database URL (e.g. {DEFAULT_STORAGE})"
        ) from None
    scheme = parsed.get_backend_name()
    if scheme not in SCHEMES:
        raise StorageError(
            f"storage URL {shown}: unknown scheme {scheme!r} (use sqlite or postgresql)"
        )
    engine_kwargs: dict[str, Any] = {}
    if scheme == "sqlite" and is_in_memory_sqlite(parsed.database, parsed.query):
        # Every connection (and so the heartbeat thread, and every worker) would get its own
        # empty database, and nothing would be kept when the command ends.
        raise StorageError(in_memory_message(url))
    if scheme == "sqlite":
        engine_kwargs["connect_args"] = {"timeout": 30}  # seconds to wait on a locked file
    elif scheme == "postgresql":
        if parsed.drivername == "postgresql":  # as users write it: use psycopg 3
            url = parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
        engine_kwargs.update(
            pool_pre_ping=True, pool_size=2, max_overflow=2, connect_args={"connect_timeout": 10}
        )
    return url, engine_kwargs


def _reason(e: BaseException, url: str, shown: str) -> str:
    """The first line of what the driver said, the URL in it masked."""
    return first_line(getattr(e, "orig", None) or e).replace(url, shown)


def _create_storage(
    url: str, engine_kwargs: dict[str, Any], beat: dict[str, Any]
) -> ResilientRDBStorage:
    """The storage; a schema that another process is creating at the same moment (two commands
    started together on a new database) is waited for rather than reported."""
    for attempt in range(10):
        try:
            return ResilientRDBStorage(url, engine_kwargs=dict(engine_kwargs), **beat)
        except sqlalchemy.exc.SQLAlchemyError as e:
            racing = isinstance(e, sqlalchemy.exc.IntegrityError) or "already exists" in str(e)
            if not racing or attempt == 9:
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def in_memory_message(shown: str) -> str:
    return (
        f"storage URL {shown} is an in-memory SQLite database: nothing would be kept and "
        f"workers could not share it; use a file, e.g. {DEFAULT_STORAGE}"
    )


def is_in_memory_sqlite(database: str | None, query: Mapping[str, Any]) -> bool:
    """``sqlite://``, ``sqlite:///:memory:`` and URI forms such as ``file::memory:`` or
    ``mode=memory``."""
    if not database or database == ":memory:":
        return True
    mode = query.get("mode")
    return database.startswith("file:") and (":memory:" in database or mode == "memory")


def make_sampler(cfg: StudyConfig, n_existing: int) -> optuna.samplers.BaseSampler:
    """The configured sampler, seeded with ``search.seed + n_existing`` so that a resumed study
    does not replay the random proposals of its first run."""
    s = cfg.search
    seed = s.seed + n_existing
    name = s.sampler.name
    samplers = optuna.samplers
    if name == "grid":
        return _construct(
            samplers.GridSampler, s.sampler, {"search_space": grid_space(cfg), "seed": s.seed}
        )
    defaults: dict[str, dict[str, Any]] = {
        "tpe": {"seed": seed, "multivariate": True, "constant_liar": True},
        "random": {"seed": seed},
        "gp": {"seed": seed},
        "cmaes": {"seed": seed, "warn_independent_sampling": False},
        "qmc": {"seed": seed, "warn_independent_sampling": False},
    }
    classes: dict[str, Callable[..., optuna.samplers.BaseSampler]] = {
        "tpe": samplers.TPESampler,
        "random": samplers.RandomSampler,
        "gp": samplers.GPSampler,
        "cmaes": samplers.CmaEsSampler,
        "qmc": samplers.QMCSampler,
    }
    return _construct(classes[name], s.sampler, defaults[name])


def grid_space(cfg: StudyConfig) -> dict[str, list[Any]]:
    return {name: list(values) for name, values in cfg.search.grid.items()}


def make_pruner(cfg: StudyConfig) -> optuna.pruners.BasePruner:
    p = cfg.search.pruner
    pruners = optuna.pruners
    if p.name == "median":
        return _construct(pruners.MedianPruner, p, {"n_startup_trials": 5, "n_warmup_steps": 0})
    if p.name == "percentile":
        if "percentile" not in p.options:
            raise ConfigError(
                "search.pruner: percentile: give the share of trials kept at each epoch, "
                "e.g. {name: percentile, percentile: 40}"
            )
        return _construct(pruners.PercentilePruner, p, {"n_startup_trials": 5, "n_warmup_steps": 0})
    if p.name == "successive_halving":
        return _construct(
            pruners.SuccessiveHalvingPruner, p, {"min_resource": 1, "reduction_factor": 3}
        )
    if p.name == "hyperband":
        return _construct(
            pruners.HyperbandPruner,
            p,
            {"min_resource": 1, "max_resource": cfg.train.epochs, "reduction_factor": 3},
        )
    return _construct(pruners.NopPruner, p, {})


def _construct(cls: Callable[..., T], named: NamedOptions, defaults: Mapping[str, Any]) -> T:
    kind = "sampler" if "sampler" in cls.__module__ else "pruner"
    try:
        return cls(**{**defaults, **named.options})
    except (TypeError, ValueError) as e:
        raise ConfigError(f"search.{kind}: {named.name}: {e}") from None


def open_study(
    cfg: StudyConfig,
    storage: optuna.storages.BaseStorage,
    study_name: str,
    *,
    create: bool = True,
    seed_offset: int = 0,
) -> optuna.Study:
    """Load the study, creating it (and enqueuing the seed baseline) when ``create`` and new."""
    names = {
        s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)
    }
    exists = study_name in names
    if not exists and not create:
        known = ", ".join(sorted(names)) or "none"
        raise StorageError(f"no study named {study_name!r} in this storage (studies: {known})")
    n_existing = 0
    if exists:
        study_id = storage.get_study_id_from_name(study_name)
        n_existing = len(storage.get_all_trials(study_id, deepcopy=False))
    else:
        # Whoever creates the study sets it up (the baseline is enqueued once): two commands
        # that both found no study race here, and the database lets one of them win.
        try:
            storage.create_new_study(_directions(cfg), study_name)
        except optuna.exceptions.DuplicatedStudyError:
            exists = True
    objectives = list(cfg.search.objectives)
    if exists:
        _check_objectives(storage, storage.get_study_id_from_name(study_name), study_name, cfg)
    study = optuna.create_study(
        storage=storage,
        study_name=study_name,
        directions=_directions(cfg),
        sampler=make_sampler(cfg, n_existing + seed_offset),
        pruner=make_pruner(cfg),
        load_if_exists=True,
    )
    if not exists:
        record_study_file(study, cfg)
        study.set_user_attr(METRIC_ATTR, "val_accuracy")
        study.set_user_attr(OBJECTIVES_ATTR, objectives)
        with warnings.catch_warnings():  # experimental in Optuna, stable enough for a label
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(objectives)  # the dashboard's axis titles
        if cfg.search.sampler.name != "grid":
            if cfg.search.enqueue_baseline:
                study.enqueue_trial(baseline_params(cfg.search), user_attrs={BASELINE_ATTR: True})
            rng = random.Random(cfg.search.seed)
            for _ in range(cfg.search.near_baseline):
                study.enqueue_trial(
                    near_baseline_params(cfg.search, rng), user_attrs={NEAR_BASELINE_ATTR: True}
                )
    return study


def _directions(cfg: StudyConfig) -> list[optuna.study.StudyDirection]:
    return [optuna.study.StudyDirection[d.upper()] for d in cfg.search.directions]


def objectives_of(study: optuna.Study) -> list[str]:
    """What the study's values are: ``["val_accuracy"]``, or with a second objective
    ``["val_accuracy", "latency_ms"]`` or ``[..., "params"]``."""
    names = study.user_attrs.get(OBJECTIVES_ATTR)
    return [str(n) for n in names] if isinstance(names, list) else ["val_accuracy"]


def _check_objectives(
    storage: optuna.storages.BaseStorage, study_id: int, name: str, cfg: StudyConfig
) -> None:
    """A study file's objectives must be the existing study's (its directions, and what hpsearch
    recorded they are)."""
    stored = storage.get_study_directions(study_id)
    recorded = storage.get_study_user_attrs(study_id).get(OBJECTIVES_ATTR)
    check_directions(name, list(stored), recorded)
    directions = [d.name.lower() for d in stored]
    wanted = list(cfg.search.objectives)
    if directions != cfg.search.directions or (recorded is not None and recorded != wanted):
        have = recorded if recorded is not None else directions
        raise StorageError(
            f"study {name!r} exists with objectives {have}; the study file asks for {wanted} "
            "(use another --study-name)"
        )


def grid_check(cfg: StudyConfig) -> Callable[[optuna.Study], str]:
    """For the grid sampler: "open" (points left to claim), "wait" (only running points left)
    or "exhausted" (every point finished, or nothing left that Optuna would not repeat)."""
    names = sorted(cfg.search.grid)
    points = set(itertools.product(*(cfg.search.grid[n] for n in names)))
    # GridSampler's own test of "a trial of this grid": the search space it recorded (a study
    # whose grid was changed keeps the old grid's trials, which must not count as visited)
    space = {n: list(cfg.search.grid[n]) for n in names}

    def check(study: optuna.Study) -> str:
        done: set[tuple[Any, ...]] = set()
        running = False
        visited: set[int] = set()  # GridSampler's view: ids with a finished or running trial
        for t in fresh_trials(study):
            if t.state == TrialState.WAITING:
                return "open"  # a retry or an enqueued trial is ready to run
            if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
                done.add(tuple(t.params.get(n) for n in names))
            running = running or t.state == TrialState.RUNNING
            attrs = t.system_attrs
            if optuna_private.GRID_ID in attrs and attrs.get(optuna_private.SEARCH_SPACE) == space:
                visited.add(attrs[optuna_private.GRID_ID])
        if points <= done:
            return "exhausted"
        if len(visited) >= len(points):
            return "wait" if running else "exhausted"
        return "open"

    return check
