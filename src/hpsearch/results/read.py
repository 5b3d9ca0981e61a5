"""Reading a finished (or running) study: open it, pick a trial, status, best, trials as CSV.

Nothing here writes to the database; a storage that does not exist yet is an error, not a new
empty file.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from hpsearch.errors import HpsearchError, StorageError
from hpsearch.files import atomic_write
from hpsearch.results.timing import (
    duration,
    mean_trial_seconds,
    search_seconds,
    time_left,
    until,
    utc_clock,
)
from hpsearch.storage.artifacts import AtomicArtifactStore, CheckpointError, checkpoint_path
from hpsearch.storage.compat import check_objective
from hpsearch.storage.deadlines import run_deadlines
from hpsearch.storage.existing import require_studies
from hpsearch.storage.secrets import mask_url
from hpsearch.storage.state import (
    CONFIRM_N,
    CONFIRM_RUNS,
    CONFIRM_TEST_DATA,
    CONFIRM_TEST_MEAN,
    CONFIRM_TEST_N,
    CONFIRM_TEST_STD,
    CONFIRM_VAL_MEAN,
    CONFIRM_VAL_STD,
    CONFIRMED_ATTR,
    FINISHED,
    RUN_ATTR,
    study_attr,
    target,
    trial_attr,
)
from hpsearch.storage.study import is_feasible, objectives_of
from hpsearch.storage.urls import open_storage


def study_name(study_arg: str, study_name_arg: str | None) -> str:
    """``--study-name``, else the study file's stem (``studies/smoke.yaml`` and ``smoke``)."""
    return study_name_arg or Path(study_arg).stem


def open_existing(url: str, name: str, any_objective: bool = False) -> optuna.Study:
    """Load study ``name``; no database or no such study is a StorageError naming both, and so
    is a study that does not maximize one value (unless ``any_objective``: the dashboard shows
    any Optuna study the way Optuna does)."""
    shown = mask_url(url)
    require_studies(url)  # never creates a database or its tables
    storage = open_storage(url)
    # the names only: a study summary loads (and copies) every trial of every study
    names = sorted(optuna.study.get_all_study_names(storage))
    if name not in names:
        known = ", ".join(names) or "none"
        raise StorageError(f"no study named {name!r} in {shown} (studies: {known})")
    study = optuna.load_study(
        study_name=name, storage=storage, sampler=optuna.samplers.RandomSampler()
    )
    if not any_objective:
        check_objective(study)
    return study


def ranked(study: optuna.Study) -> list[FrozenTrial]:
    """Completed trials within the deployment budget, best first (see ``_rank_key``; the same
    order that decides which checkpoints are kept)."""
    done = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.values and math.isfinite(t.values[0]) and is_feasible(t)
    ]
    return sorted(done, key=_rank_key)


def _rank_key(t: FrozenTrial) -> tuple[float, ...]:
    """Most accurate first; with two objectives, equal accuracy goes to the smaller second value
    (so that the first trial is on the Pareto front); then the earlier trial."""
    return (-float(t.values[0]), *(float(v) for v in t.values[1:]), t.number)


def pareto_front(study: optuna.Study) -> list[FrozenTrial]:
    """In a study with two objectives, the feasible completed trials that no other beats on
    both (Optuna's own ``best_trials``), most accurate first; otherwise the best trial."""
    if len(study.directions) < 2:
        return ranked(study)[:1]
    front = [t for t in study.best_trials if is_feasible(t)]
    return sorted(front, key=_rank_key)


def pick_trial(study: optuna.Study, number: int | None, any_state: bool = False) -> FrozenTrial:
    """The best completed trial, or trial ``number``: a COMPLETE one (it has a trained model),
    or with ``any_state`` one in any state (``hpsearch train`` trains its configuration anew)."""
    if number is None:
        best = ranked(study)
        if not best:
            trials = study.get_trials(deepcopy=False)
            n = len(trials)
            over = sum(1 for t in trials if t.state == TrialState.COMPLETE and not is_feasible(t))
            raise StorageError(
                f"study {study.study_name!r} has no completed trial "
                + (f"within its deployment budget ({over} completed over it, " if over else "yet (")
                + f"{n} trial{'' if n == 1 else 's'} in all)"
            )
        return best[0]
    for t in study.get_trials(deepcopy=False):
        if t.number == number:
            if t.state != TrialState.COMPLETE and not any_state:
                raise StorageError(
                    f"trial {number} of study {study.study_name!r} is {t.state.name}, not "
                    "COMPLETE: it has no trained model"
                )
            return t
    raise StorageError(f"study {study.study_name!r} has no trial {number}")


def confirmed_summary(c: dict[str, Any]) -> str:
    """``trial 3, val_accuracy 0.6233 ± 0.0153 over 3 seeds, test 0.6100 ± 0.0200``."""
    text = (
        f"trial {c.get('trial')}, val_accuracy {c.get('val_accuracy_mean', 0.0):.4f} "
        f"± {c.get('val_accuracy_std', 0.0):.4f} over {c.get('n')} seed"
        f"{'' if c.get('n') == 1 else 's'}"
    )
    if c.get("test_accuracy_mean") is not None:
        text += f", test {c['test_accuracy_mean']:.4f} ± {c.get('test_accuracy_std', 0.0):.4f}"
    return text


def confirmed_trial(study: optuna.Study) -> tuple[FrozenTrial, dict[str, Any]]:
    """The confirmed winner and what confirm recorded about it; a StorageError when confirm has
    not run on this study."""
    c = study_attr(study, CONFIRMED_ATTR, dict)
    if c is None or not isinstance(c.get("trial"), int) or isinstance(c["trial"], bool):
        raise StorageError(
            f"study {study.study_name!r} has no confirmed trial yet: run hpsearch confirm "
            f"--study {study.study_name} first"
        )
    return pick_trial(study, int(c["trial"])), c


def kept_checkpoints(study: optuna.Study, store_dir: Path) -> list[int]:
    """Numbers of the trials whose checkpoint file is in the store, best first."""
    out = []
    for t in ranked(study):
        try:
            checkpoint_path(t, store_dir)
        except CheckpointError:
            continue
        out.append(t.number)
    return out


def keep_hint(study: optuna.Study, store_dir: Path) -> str:
    kept = kept_checkpoints(study, store_dir)
    if not kept:
        return f"; no checkpoint is kept in {store_dir}"
    return "; checkpoints are kept for trial(s) " + ", ".join(map(str, kept))


def status_text(study: optuna.Study, url: str) -> str:
    """Trials by state, the best trial, trials per hour, time spent, and the time left for the
    budget (trials left x the mean time of the finished and pruned trials / the workers)."""
    trials = study.get_trials(deepcopy=False)
    states = Counter(t.state.name for t in trials)
    order = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")
    lines = [
        f"study {study.study_name!r} in {mask_url(url)}: {len(trials)} trials",
        "trials: " + ", ".join(f"{states.get(s, 0)} {s.lower()}" for s in order),
    ]
    over = [t for t in trials if t.state in FINISHED and not is_feasible(t)]
    if over or any(t.constraints for t in trials):
        lines.append(
            f"infeasible: {len(over)} finished trial{'' if len(over) == 1 else 's'} over the "
            "deployment budget (search.constraints); best, export and serve skip them"
        )
    best = ranked(study)
    if best:
        lines.append(f"best: val_accuracy {best[0].values[0]:.4f} in trial {best[0].number}")
        if len(study.directions) > 1:
            front = pareto_front(study)
            lines.append(
                f"pareto front: {len(front)} trial{'' if len(front) == 1 else 's'} "
                f"({', '.join(str(t.number) for t in front)}); "
                "hpsearch best lists them"
            )
    else:
        lines.append("best: no completed trial yet")
    finished = [t for t in trials if t.state in FINISHED and t.datetime_complete is not None]
    spent = search_seconds(trials)
    if finished and spent > 0:
        rate = len(finished) / (spent / 3600)
        lines.append(
            f"rate: {rate:.1f} finished trials per hour ({len(finished)} in "
            f"{duration(spent)} of search time)"
        )
    per_trial = mean_trial_seconds(trials)
    running = states.get("RUNNING", 0)
    goal = target(study)
    left = None if goal is None else goal - len(finished)
    time_line = f"time: {duration(spent)} spent searching (while any trial ran)"
    if left is not None and left > 0 and per_trial is not None:
        workers = max(running, 1)
        time_line += (
            f"; about {duration(time_left(left, per_trial, workers))} left for the budget "
            f"({left} trials x {duration(per_trial)}, the mean of the finished and pruned "
            f"trials, / {workers} worker{'s' if workers != 1 else ''}"
            + (" running now)" if running else ")")
        )
        now = time.time()
        soonest = min((at for at in run_deadlines(study).values() if at > now), default=None)
        if soonest is not None and time_left(left, per_trial, workers) > soonest - now:
            time_line += f", but a run's deadline stops it {until(soonest, now)}"
    lines.append(time_line)
    confirmed = study_attr(study, CONFIRMED_ATTR, dict)
    if confirmed is not None:
        lines.append("confirmed: " + confirmed_summary(confirmed))
    deadline = deadline_text(study, trials)
    if goal is None:
        lines.append("budget: none set (start the search with hpsearch run)")
    elif left is not None and left <= 0:
        lines.append(f"budget: {len(finished)} of {goal} trials finished; done")
    else:
        lines.append(f"budget: {len(finished)} of {goal} trials finished; {left} left{deadline}")
    return "\n".join(lines)


def deadline_text(study: optuna.Study, trials: list[FrozenTrial]) -> str:
    """``; deadline 21:30:00 UTC (in 42 min)`` for each run going with a ``--timeout``, or
    ``...(passed 2 min ago: its running trials finish, none starts)`` while the trials of a run
    past its deadline still run; a run past its deadline with none running has ended (or was
    killed), and its deadline no longer says anything."""
    now = time.time()
    running = {t.user_attrs.get(RUN_ATTR) for t in trials if t.state == TrialState.RUNNING}
    parts = []
    for run, at in sorted(run_deadlines(study).items(), key=lambda x: x[1]):
        if at > now:
            parts.append(f"deadline {utc_clock(at, now)} ({until(at, now)})")
        elif run in running:
            parts.append(
                f"deadline {utc_clock(at, now)} ({until(at, now)}: its running trials finish, "
                "none starts)"
            )
    return "".join(f"; {p}" for p in parts)


def confirm_doc(t: FrozenTrial) -> dict[str, Any] | None:
    """What confirm recorded on trial ``t`` (means, spread, runs), or None."""
    a = t.user_attrs
    if CONFIRM_VAL_MEAN not in a and CONFIRM_RUNS not in a:
        return None
    runs = trial_attr(t, CONFIRM_RUNS, list) or []
    for key in (CONFIRM_VAL_MEAN, CONFIRM_VAL_STD, CONFIRM_TEST_MEAN, CONFIRM_TEST_STD):
        trial_attr(t, key, float)
    doc: dict[str, Any] = {
        "val_accuracy_mean": a.get(CONFIRM_VAL_MEAN),
        "val_accuracy_std": a.get(CONFIRM_VAL_STD),
        "n": a.get(CONFIRM_N, 0),
    }
    if a.get(CONFIRM_TEST_MEAN) is not None:
        doc["test_accuracy_mean"] = a.get(CONFIRM_TEST_MEAN)
        doc["test_accuracy_std"] = a.get(CONFIRM_TEST_STD)
        doc["test_n"] = a.get(CONFIRM_TEST_N)
        doc["test_data"] = a.get(CONFIRM_TEST_DATA)
    doc["seeds"] = [r.get("seed") for r in runs if isinstance(r, dict)]
    return doc


def confirmed_checkpoint_path(c: dict[str, Any], store_dir: Path) -> Path:
    """The file of the confirmed winner's checkpoint, or a CheckpointError saying why not."""
    artifact_id = c.get("checkpoint")
    if not isinstance(artifact_id, str):
        raise CheckpointError(
            f"the confirmed trial {c.get('trial')} has no checkpoint (run hpsearch confirm again)"
        )
    path = AtomicArtifactStore(store_dir).path_of(artifact_id)
    if not path.is_file():
        raise CheckpointError(
            f"the checkpoint of the confirmed trial {c.get('trial')} is not in {store_dir} "
            f"(artifact {artifact_id}): are the artifacts elsewhere (--artifacts DIR)?"
        )
    return path


def best_text(study: optuna.Study, store_dir: Path, confirmed: bool = False) -> str:
    """The best trial (or with ``confirmed``, the confirmed winner) as YAML: number, value,
    parameters, what confirm measured, and its checkpoint."""
    winner = study_attr(study, CONFIRMED_ATTR, dict)
    c: dict[str, Any] = winner if winner is not None else {}
    if confirmed:
        t, c = confirmed_trial(study)
    else:
        t = pick_trial(study, None)
    doc: dict[str, Any] = {
        "study": study.study_name,
        "trial": t.number,
        "val_accuracy": t.values[0] if t.values else None,
    }
    confirm = confirm_doc(t)
    if confirm is not None:
        doc["confirm"] = confirm
    doc["params"] = dict(t.params)
    try:
        if confirmed:
            doc["checkpoint"] = str(confirmed_checkpoint_path(c, store_dir))
            doc["checkpoint_seed"] = c.get("seed")
        else:
            doc["checkpoint"] = str(checkpoint_path(t, store_dir))
    except CheckpointError as e:
        doc["checkpoint"] = None
        doc["checkpoint_problem"] = str(e)
    doc["kept_checkpoints"] = kept_checkpoints(study, store_dir)
    if not confirmed and c:
        doc["confirmed_winner"] = c.get("trial")
    objectives = objectives_of(study)
    if len(objectives) > 1:  # the whole front: the trade-off the user chooses from
        doc["pareto_front"] = [
            {
                "trial": p.number,
                "val_accuracy": p.values[0],
                objectives[1]: p.values[1],
                "checkpoint": p.number in doc["kept_checkpoints"],
            }
            for p in pareto_front(study)
        ]
    out: str = yaml.safe_dump(doc, sort_keys=False, default_flow_style=False, allow_unicode=True)
    return out.rstrip("\n")


def trials_frame(study: optuna.Study) -> Any:
    """Every trial: number, value, state, times, ``duration_s``, ``params_*``, ``user_attrs_*``
    (mappings such as ``config`` and ``versions`` as JSON text). A pandas DataFrame."""
    df = study.trials_dataframe(
        attrs=(
            "number",
            "value",
            "state",
            "datetime_start",
            "datetime_complete",
            "duration",
            "params",
            "user_attrs",
        )
    )
    # a study with metric names (hpsearch sets val_accuracy) names the column value_<metric>
    df = df.rename(columns={c: "value" for c in df.columns if str(c).startswith("value_")})
    if "duration" in df.columns:
        # while every trial is RUNNING or WAITING the column holds only None (dtype object)
        seconds = df["duration"].astype("timedelta64[ns]").dt.total_seconds()
        df.insert(df.columns.get_loc("duration"), "duration_s", seconds)
        df = df.drop(columns=["duration"])
    for col in df.columns:
        if df[col].dtype == object:
            df[col] = df[col].map(
                lambda v: json.dumps(v) if isinstance(v, dict | list | tuple) else v
            )
    return df


def write_trials_csv(study: optuna.Study, output: str) -> tuple[int, int]:
    """Write the trials table as CSV to ``output`` (``-`` for stdout); (rows, columns)."""
    df = trials_frame(study)
    if output == "-":
        try:
            df.to_csv(sys.stdout, index=False)
            sys.stdout.flush()
        except BrokenPipeError:  # e.g. piped into head: not an error
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return len(df), len(df.columns)
    if not output.strip() or output.endswith(("/", os.sep)):
        raise HpsearchError(f"--csv {output!r}: expected a file name (or - for stdout)")
    path = Path(output)
    if path.is_dir():
        raise HpsearchError(f"--csv {output}: is a directory; give a file name in it")
    if path.parent and not path.parent.is_dir():
        raise HpsearchError(f"--csv {output}: directory {path.parent} does not exist")
    try:
        with atomic_write(path) as tmp:
            df.to_csv(tmp, index=False)
    except OSError as e:
        raise HpsearchError(f"--csv {output}: cannot write: {e.strerror or e}") from None
    return len(df), len(df.columns)
