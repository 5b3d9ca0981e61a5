"""Opening a study: samplers and pruners built from the study file, the study made (once, with
its seed baseline) or loaded, and what ``hpsearch run`` and ``hpsearch worker`` do to open one,
each a function to read top to bottom (:func:`open_for_run`, :func:`join_study`).

Storage URLs are :mod:`hpsearch.storage.urls`; everything past this module receives an
``optuna.Study``, never a URL string.
"""

from __future__ import annotations

import itertools
import logging
import random
import time
import uuid
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import optuna
from optuna.trial import TrialState

from hpsearch.config import NamedOptions, StudyConfig
from hpsearch.errors import ConfigError, StorageError
from hpsearch.space import baseline_params, near_baseline_params
from hpsearch.storage import optuna_private
from hpsearch.storage.budget import RunLease, Share, join, run_lease, withdraw
from hpsearch.storage.claims import Lock, claim_lock, held
from hpsearch.storage.compat import check_directions, check_reuse, record_study_file
from hpsearch.storage.existing import require_studies
from hpsearch.storage.heartbeat import DEFAULT_HEARTBEAT, agree_heartbeat
from hpsearch.storage.state import (
    BASELINE_ATTR,
    METRIC_ATTR,
    NEAR_BASELINE_ATTR,
    OBJECTIVES_ATTR,
    fresh_trials,
    target,
    trial_count,
)
from hpsearch.storage.urls import check_storage, open_storage

T = TypeVar("T")
log = logging.getLogger("hpsearch")
MAX_STUDY_NAME = 512  # Optuna's studies.study_name column is VARCHAR(512)


def accuracy(t: optuna.trial.FrozenTrial) -> float | None:
    """A trial's validation accuracy: its value, or its first value in a study with two
    objectives (``FrozenTrial.value`` raises there)."""
    return float(t.values[0]) if t.values else None


def is_feasible(t: optuna.trial.FrozenTrial) -> bool:
    """Within the study's deployment budget (``search.constraints``): every constraint Optuna
    recorded for the trial is <= 0 (a trial with none is feasible)."""
    return all(v <= 0 for v in t.constraints.values())


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
    # the names only: a study summary loads (and copies) every trial of every study
    names = set(optuna.study.get_all_study_names(storage))
    exists = study_name in names
    if not exists and not create:
        known = ", ".join(sorted(names)) or "none"
        raise StorageError(f"no study named {study_name!r} in this storage (studies: {known})")
    n_existing = 0
    if exists:
        study_id = storage.get_study_id_from_name(study_name)
        n_existing = trial_count(storage, study_id)
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
    # load_study for one that exists: create_study(load_if_exists=True) tries an INSERT first
    study = optuna.load_study(
        storage=storage,
        study_name=study_name,
        sampler=make_sampler(cfg, n_existing + seed_offset),
        pruner=make_pruner(cfg),
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


# --- what hpsearch run and hpsearch worker open --------------------------------------------------


def check_before_opening(cfg: StudyConfig, url: str, name: str) -> None:
    """Everything that would fail once the database is written, checked before anything is: the
    study name (Optuna's limit), the sampler's and pruner's options (Optuna's constructors), and
    the storage itself, read only (a mistyped or unreachable URL is one line before the slow
    work of a run: the GPU probe, the photos)."""
    if len(name) > MAX_STUDY_NAME:
        raise ConfigError(
            f"--study-name: at most {MAX_STUDY_NAME} characters (Optuna's limit), got {len(name)}"
        )
    make_sampler(cfg, 0)
    make_pruner(cfg)
    check_storage(url)


@dataclass(frozen=True)
class RunStudy:
    """A study opened by ``hpsearch run``, with this run's share of its budget."""

    study: optuna.Study
    share: Share
    lock: Lock  # the study's claim lock
    lease: RunLease  # held while this run works: other runs see it is still going
    heartbeat: int = DEFAULT_HEARTBEAT  # the study's interval (storage/heartbeat.py)
    heartbeat_note: str = ""  # why --heartbeat was not used, or ""

    def close(self) -> int:
        """Take back what is left of this run's share (nothing once it is done), so that the runs
        still going do not do its work, and let go of the lease; returns how many trials were
        taken back."""
        try:
            return withdraw(self.study, self.share, self.lock)
        except Exception as e:  # the reason the run stopped matters more
            log.warning("could not take back this run's unfinished trials: %s", e)
            return 0
        finally:
            self.lease.release()


def open_for_run(
    cfg: StudyConfig,
    url: str,
    name: str,
    trials: int,
    *,
    heartbeat: int | None,
    allow_other_file: bool,
    deadline: float | None = None,
) -> RunStudy:
    """Open (or make) the study ``name`` for ``hpsearch run`` and add ``trials`` to its budget.

    1. The storage: Optuna's tables are made here if the database is new (call
       :func:`check_before_opening` first, so that a run that fails its checks writes nothing).
    2. The study's claim lock and this run's lease.
    3. Under the lock, so that two runs started together make one study with one seed baseline
       and add up their budgets: the study made (its baseline enqueued) or loaded; the study
       file checked against the one the study was made from, and recorded; this run's trials
       added to the study's target of finished trials, and its ``deadline`` (``--timeout``)
       recorded; the study's heartbeat interval taken (or, new, ``heartbeat`` recorded).
    """
    storage = open_storage(url, heartbeat or DEFAULT_HEARTBEAT)
    lock = claim_lock(storage, name)
    lease = run_lease(storage, name)
    try:
        with held(lock):
            study = open_study(cfg, storage, name)
            check_reuse(study, cfg, allow_other_file=allow_other_file, record=True)
            index_states(storage)
            share = join(study, trials, lease, uuid.uuid4().hex[:12], deadline)
            interval, note = agree_heartbeat(study, heartbeat, record=True)
    except BaseException:
        lease.release()
        raise
    return RunStudy(study, share, lock, lease, interval, note)


def join_study(
    cfg: StudyConfig,
    url: str,
    name: str,
    *,
    heartbeat: int | None,
    seed_offset: int,
    wait: float,
    allow_other_file: bool,
    on_wait: Callable[[str], None] | None = None,
) -> tuple[optuna.Study, int, int, str]:
    """Open the study ``name`` that ``hpsearch run`` made, for ``hpsearch worker``; returns it,
    its target of finished trials, its heartbeat interval (storage/heartbeat.py) and a note
    when ``heartbeat`` was not used ("" otherwise).

    A worker never makes a database or a study. It waits up to ``wait`` seconds for the study
    and its budget to appear (a container started before ``hpsearch run``), telling ``on_wait``
    what it waits for each time that changes, then checks the study file against the one the
    study was made from (without recording it: that is run's).
    """
    storage = None
    deadline = time.monotonic() + wait
    told = ""
    while True:
        try:
            if storage is None:
                require_studies(url)  # never creates the database or Optuna's tables
                storage = open_storage(url, heartbeat or DEFAULT_HEARTBEAT)
            study = open_study(cfg, storage, name, create=False, seed_offset=seed_offset)
            goal = target(study)
            if goal is None:
                raise StorageError(
                    f"study {name!r} has no trial budget; start it with hpsearch run"
                )
            break
        except StorageError as e:
            if time.monotonic() >= deadline:
                raise
            if on_wait is not None and str(e) != told:
                told = str(e)
                on_wait(f"waiting (up to {wait:.0f} s in all) for hpsearch run: {e}")
            time.sleep(2)
    check_reuse(study, cfg, allow_other_file=allow_other_file, record=False)
    index_states(optuna_private.storage_of(study))
    interval, note = agree_heartbeat(study, heartbeat, record=False)
    return study, goal, interval, note


def index_states(storage: optuna.storages.BaseStorage) -> None:
    """Index the trials by study and state (see ``optuna_private.ensure_state_index``), once the
    study is one this command may add trials to (a refused command writes nothing)."""
    rdb = optuna_private.backend(storage)
    if isinstance(rdb, optuna.storages.RDBStorage):
        optuna_private.ensure_state_index(rdb.engine)
