"""The study's data contract: the attributes hpsearch records on trials and on the study, and
the queries of the study's state (its target, its trials as the database has them, counts), the
user attributes of finished trials read and written in the database (confirm's runs), and a running
trial's epoch recorded in one transaction.

The docs, the dashboard, ``hpsearch trials --csv``, ``status``/``best`` and other tools read
these attributes by name, so they are named once, here; a renamed constant changes what every
tool reads. No torch here, and nothing of the worker loop: the commands that only read a
study import this.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import optuna
import sqlalchemy as sa
from optuna.trial import FrozenTrial, TrialState

from hpsearch.errors import StorageError
from hpsearch.storage import optuna_private
from hpsearch.storage.resilience import retrying

# --- trial user attributes ---------------------------------------------------------------------
# Recorded by the objective on every trial it runs (see hpsearch.search.objective):
SEED_ATTR = "seed"  # the trial's training seed (a re-run or retry carries its original's)
CONFIG_ATTR = "config"  # the whole study config the trial ran with (a mapping)
DEVICE_ATTR = "device"  # the device it trained on
VERSIONS_ATTR = "versions"  # the versions of hpsearch, torch, optuna, ...
COMMAND_ATTR = "command"  # the hpsearch command line (secrets masked)
WORKER_ATTR = "worker"  # "<host>:<pid>" of the worker that ran it
N_PARAMS_ATTR = "n_params"  # the model's parameter count
BATCH_SIZE_ATTR = "batch_size"
ACTIVATIONS_ATTR = "activations"  # activations per image (the memory a batch needs)
EPOCHS_RUN_ATTR = "epochs_run"  # epochs trained (fewer than asked when pruned or stopped early)
VAL_ACCURACY_BY_EPOCH_ATTR = "val_accuracy_by_epoch"  # the learning curve
TRAIN_IMAGES_PER_S_ATTR = "train_images_per_s"
EPOCH_SECONDS_ATTR = "epoch_seconds"  # mean seconds per epoch
TRAIN_LOSS_ATTR = "train_loss"  # of the last epoch
VAL_LOSS_ATTR = "val_loss"  # of the last epoch
LATENCY_MS_ATTR = "latency_ms"  # measured inference latency per image
LATENCY_DEVICE_ATTR = "latency_device"  # the device latency_ms was measured on
PRUNED_REASON_ATTR = "pruned_reason"  # why a PRUNED trial was pruned
FAIL_REASON_ATTR = "fail_reason"  # why a FAIL trial failed (see STOPPED_PREFIX)
OOM_ATTR = "oom"  # True on a trial that ran out of GPU memory
# On a trial that ran out of memory: each time it did, {"sharers": K (workers placed on its GPU,
# 1 on a CPU), "alone": whether no other trial trained beside it, "free_bytes": free device
# memory then (torch.cuda.mem_get_info), null on a CPU}
OOM_EVENTS_ATTR = "oom_events"
# On an oom trial: True when it ran out with its GPU to itself (K = 1, or retried alone); only
# these predict that a trial no smaller runs out too. A trial recorded without it (hpsearch
# before oom_events) counts as alone, as it did then.
OOM_ALONE_ATTR = "oom_alone"
# True on a trial that ran out of memory beside other trials and was trained again with the GPU
# to itself (a COMPLETE trial with it needed the GPU alone)
RETRIED_ALONE_ATTR = "retried_alone"
STOPPED_PREFIX = "stopped by "  # fail_reason of a trial stopped by Ctrl-C or SIGTERM
# Marks of the trials a new study enqueues (see hpsearch.storage.study):
BASELINE_ATTR = "baseline"  # the seed baseline: the search space's defaults
NEAR_BASELINE_ATTR = "near_baseline"  # a start-up trial near the baseline
# Set by the worker loop (see hpsearch.search.workers and hpsearch.storage.budget):
RERUN_ATTR = "rerun_of"  # on a trial enqueued to re-run an interrupted one: that trial's number
RUN_ATTR = "run_id"  # the hpsearch run whose worker ran the trial
# Set by the checkpoint keeper (see hpsearch.storage.checkpoint and hpsearch.storage.artifacts):
CHECKPOINT_ATTR = "checkpoint"  # the artifact id of its checkpoint
CHECKPOINT_ERROR_ATTR = "checkpoint_error"  # why its checkpoint could not be kept
# What hpsearch confirm records (see hpsearch.search.confirm). On each confirmed trial:
CONFIRM_RUNS = "confirm_runs"  # one entry per finished retrain: seed, val_accuracy, ...
CONFIRM_VAL_MEAN = "confirm_val_accuracy_mean"
CONFIRM_VAL_STD = "confirm_val_accuracy_std"  # sample standard deviation (0 for one run)
CONFIRM_N = "confirm_n"  # runs in the mean (a diverged run is recorded but not averaged)
CONFIRM_TEST_MEAN = "confirm_test_accuracy_mean"  # with --data: accuracy on the test directory
CONFIRM_TEST_STD = "confirm_test_accuracy_std"
CONFIRM_TEST_N = "confirm_test_n"  # runs in the test mean (those trained with this --data)
CONFIRM_TEST_DATA = "confirm_test_data"  # the test directory of the test mean
CONFIRM_CHECKPOINT = "confirm_checkpoint"  # artifact id: the model of its best confirm run

# --- study user attributes ---------------------------------------------------------------------
TARGET_ATTR = "target_trials"  # how many trials must finish (COMPLETE or PRUNED)
METRIC_ATTR = "metric"  # the first objective's metric: "val_accuracy"
OBJECTIVES_ATTR = "objectives"  # what each of the trial's values is
STUDY_FILE_ATTR = "study_file"  # the resolved path of the study file it was made from
STUDY_FILE_SHA_ATTR = "study_file_sha256"  # that file's content, as last run there
KEPT_ATTR = "kept_checkpoints"  # trials whose checkpoint is kept, best first
CONFIRMED_ATTR = "confirmed"  # the confirmed winner (trial, its means, its checkpoint)
# {run_id: ISO 8601 UTC time}: the --timeout deadline of each hpsearch run that is going (see
# hpsearch.storage.budget); a run drops its own when it ends
DEADLINES_ATTR = "deadlines"
# seconds between a running trial's heartbeats, the same for every process on the study: each
# judges another's trial stale after 3 of its own intervals (see storage/heartbeat.py)
HEARTBEAT_ATTR = "heartbeat_seconds"
# the --set KEY=VALUE settings (with --sampler and --pruner) of the last run that added trials:
# a worker started with no --set of its own takes them
SETTINGS_ATTR = "run_settings"
CLAIMS_ATTR = "confirm_claims"  # {"<trial>:<run>": "<host>:<pid>"}: confirm runs being trained

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)  # the states that count toward the target
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)


# --- the study's state -------------------------------------------------------------------------


def target(study: optuna.Study) -> int | None:
    """The study's target of finished trials, or None when no hpsearch run set one."""
    value = study_attr(study, TARGET_ATTR, int)
    return int(value) if value is not None else None


_KINDS = {int: "a whole number", str: "text", dict: "a mapping", list: "a list", float: "a number"}


def _checked(value: Any, kind: type | tuple[type, ...], whose: str, key: str) -> Any:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if value is None or (isinstance(value, kinds) and not isinstance(value, bool)):
        return value
    if float in kinds and isinstance(value, int) and not isinstance(value, bool):
        return value
    expected = " or ".join(_KINDS.get(k, k.__name__) for k in kinds)
    raise StorageError(
        f"{whose} user attribute {key!r} is {value!r}, not {expected}; hpsearch writes it, so "
        "it was set by hand or by another tool (fix or remove it)"
    )


def study_attr(study: optuna.Study, key: str, kind: type | tuple[type, ...]) -> Any:
    """The study's user attribute ``key`` (None when absent), checked to be of ``kind``: a
    plain-Optuna study may hold anything under a name hpsearch reads. Else a one-line
    StorageError naming the attribute."""
    value = study.user_attrs.get(key)
    return _checked(value, kind, f"study {study.study_name!r}:", key)


def trial_attr(
    trial: FrozenTrial,
    key: str,
    kind: type | tuple[type, ...],
    attrs: Mapping[str, Any] | None = None,
) -> Any:
    """Trial ``trial``'s user attribute ``key`` (from ``attrs`` when given, e.g. a fresh read
    of the database; None when absent), checked as :func:`study_attr` does."""
    value = (trial.user_attrs if attrs is None else attrs).get(key)
    return _checked(value, kind, f"trial {trial.number}'s", key)


def winner_checkpoint(study: optuna.Study) -> str | None:
    """The artifact id of the confirmed winner's checkpoint that ``confirm`` recorded, or None."""
    confirmed = study_attr(study, CONFIRMED_ATTR, dict) or {}
    artifact = confirmed.get("checkpoint")
    return artifact if isinstance(artifact, str) else None


def finished_count(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def fresh_trials(study: optuna.Study) -> list[FrozenTrial]:
    """All trials as the database has them now, bypassing Optuna's in-process trial cache."""
    backend = optuna_private.study_backend(study)
    trials: list[FrozenTrial] = backend.get_all_trials(
        optuna_private.study_id(study), deepcopy=False
    )
    return trials


def running_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The RUNNING trials as the database has them now."""
    backend = optuna_private.study_backend(study)
    trials: list[FrozenTrial] = backend.get_all_trials(
        optuna_private.study_id(study), deepcopy=False, states=(TrialState.RUNNING,)
    )
    return trials


def state_counts(study: optuna.Study) -> dict[str, int]:
    """Trials by state name (``COMPLETE``, ``FAIL``, ...), counted by the database in one query."""
    backend = optuna_private.study_backend(study)
    if not isinstance(backend, optuna.storages.RDBStorage):
        counts: dict[str, int] = {}
        for t in study.get_trials(deepcopy=False):
            counts[t.state.name] = counts.get(t.state.name, 0) + 1
        return counts
    engine = backend.engine
    sid = optuna_private.study_id(study)

    def count() -> list[Any]:
        return optuna_private.state_count_rows(engine, sid)

    rows = retrying(count, "counting trials")
    return {str(state).rsplit(".", 1)[-1]: int(n) for state, n in rows}


def trial_count(storage: optuna.storages.BaseStorage, study_id: int) -> int:
    """How many trials the study has, in any state: counted by an SQL database in one query,
    without loading them."""
    backend = optuna_private.backend(storage)
    if not isinstance(backend, optuna.storages.RDBStorage):
        return len(storage.get_all_trials(study_id, deepcopy=False))
    engine = backend.engine
    rows = retrying(lambda: optuna_private.state_count_rows(engine, study_id), "counting trials")
    return sum(int(n) for _, n in rows)


def count_states(study: optuna.Study) -> tuple[int, int]:
    """(finished, running) trials, counted by the database in one query."""
    by_state = state_counts(study)
    return by_state.get("COMPLETE", 0) + by_state.get("PRUNED", 0), by_state.get("RUNNING", 0)


# --- the user attributes of finished trials, read and written in the database ------------------
# (Optuna's in-process cache never re-reads a finished trial, and set_user_attr refuses one)


def _engine(study: optuna.Study) -> sa.Engine:
    backend = optuna_private.study_backend(study)
    if not isinstance(backend, optuna.storages.RDBStorage):
        raise StorageError("hpsearch confirm needs an SQL storage (sqlite or postgresql)")
    return backend.engine


def read_attrs(study: optuna.Study, trial: FrozenTrial, keys: Sequence[str]) -> dict[str, Any]:
    """The trial's user attributes ``keys`` as the database has them now (Optuna's in-process
    cache never re-reads a finished trial)."""

    def read() -> dict[str, Any]:
        return optuna_private.read_trial_user_attrs(
            _engine(study), optuna_private.trial_id(trial), keys
        )

    return retrying(read, "reading confirm results")


def write_attrs(study: optuna.Study, trial: FrozenTrial, attrs: Mapping[str, Any]) -> None:
    """Set user attributes of a finished trial, in one transaction (insert or update)."""

    def write() -> None:
        optuna_private.write_trial_user_attrs(_engine(study), optuna_private.trial_id(trial), attrs)

    retrying(write, "recording a confirm run")


# --- a running trial's records, in one transaction -------------------------------------------


def record_on_trial(
    trial: optuna.Trial,
    attrs: Mapping[str, Any],
    step: int | None = None,
    value: float | None = None,
) -> None:
    """Set user attributes of the running ``trial`` and, with ``step``, report ``value`` there
    (replacing a value already reported at that step, unlike ``Trial.report``), as
    ``set_user_attr`` and ``report`` would. In an SQL storage that is one transaction (one commit,
    retried like every storage call when the connection drops) instead of one per call; any other
    storage gets the calls one by one."""
    if step is not None:
        if value is None:
            raise ValueError(f"step {step} needs a value to report")
        step, value = int(step), float(value)
    trial_id = optuna_private.running_trial_id(trial)
    backend = optuna_private.backend(trial.storage)
    if isinstance(backend, optuna.storages.RDBStorage):
        rdb = backend

        def write() -> None:
            optuna_private.write_running_trial(rdb, trial_id, attrs, step, value)

        retrying(write, "recording a trial", url=rdb.url)
    else:
        if step is not None and value is not None:
            trial.storage.set_trial_intermediate_value(trial_id, step, value)
        for key, v in attrs.items():
            trial.storage.set_trial_user_attr(trial_id, key, v)
    optuna_private.remember_on_trial(trial, attrs, step, value)


def forget_intermediate_values(trial: optuna.Trial) -> None:
    """Drop what the running ``trial`` reported (it trains again from its first epoch), so that
    the pruner never sees a step the new attempt has not reached. Another storage than SQL keeps
    the old values until the new attempt replaces them; the trial's own copy, which the pruner
    reads, drops them either way."""
    backend = optuna_private.backend(trial.storage)
    if isinstance(backend, optuna.storages.RDBStorage):
        rdb = backend
        trial_id = optuna_private.running_trial_id(trial)

        def delete() -> None:
            optuna_private.delete_intermediate_values(rdb, trial_id)

        retrying(delete, "clearing a trial's reports", url=rdb.url)
    optuna_private.forget_on_trial(trial)


def run_settings(study: optuna.Study) -> list[str] | None:
    """The ``--set`` settings the last run on the study recorded (``SETTINGS_ATTR``), or None
    when none did (a study made before, or by plain Optuna, or an entry not a list of text)."""
    value = study.user_attrs.get(SETTINGS_ATTR)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    return None
