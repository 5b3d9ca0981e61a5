"""Reading a finished (or running) study: open it, pick a trial, status, best, trials as CSV.

Nothing here writes to the database; a storage that does not exist yet is an error, not a new
empty file.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import make_url

from hpsearch.artifacts import CheckpointError, checkpoint_path
from hpsearch.errors import HpsearchError, StorageError
from hpsearch.study import mask_url, open_storage
from hpsearch.workers import TARGET_ATTR

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def study_name(study_arg: str, study_name_arg: str | None) -> str:
    """``--study-name``, else the study file's stem (``studies/smoke.yaml`` and ``smoke``)."""
    return study_name_arg or Path(study_arg).stem


def open_existing(url: str, name: str) -> optuna.Study:
    """Load study ``name``; no database or no such study is a StorageError naming both."""
    shown = mask_url(url)
    try:
        parsed = make_url(url)
    except Exception:
        parsed = None
    if parsed is not None and parsed.get_backend_name() == "sqlite":
        db = parsed.database
        if db and db != ":memory:" and not Path(db).expanduser().is_file():
            raise StorageError(
                f"no database at {shown} ({Path(db).expanduser().resolve()} does not exist; "
                "run hpsearch run first, or pass --storage URL)"
            )
    storage = open_storage(url)
    names = sorted(
        s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)
    )
    if name not in names:
        known = ", ".join(names) or "none"
        raise StorageError(f"no study named {name!r} in {shown} (studies: {known})")
    return optuna.load_study(
        study_name=name, storage=storage, sampler=optuna.samplers.RandomSampler()
    )


def ranked(study: optuna.Study) -> list[FrozenTrial]:
    """Completed trials, best first (the earlier trial first on equal values: the same order
    that decides which checkpoints are kept)."""
    done = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.value is not None and math.isfinite(t.value)
    ]
    return sorted(done, key=lambda t: (-float(t.value or 0.0), t.number))


def pick_trial(study: optuna.Study, number: int | None) -> FrozenTrial:
    """The best completed trial, or trial ``number``."""
    if number is None:
        best = ranked(study)
        if not best:
            n = len(study.get_trials(deepcopy=False))
            raise StorageError(
                f"study {study.study_name!r} has no completed trial yet "
                f"({n} trial{'' if n == 1 else 's'} in all)"
            )
        return best[0]
    for t in study.get_trials(deepcopy=False):
        if t.number == number:
            if t.state != TrialState.COMPLETE:
                raise StorageError(
                    f"trial {number} of study {study.study_name!r} is {t.state.name}, not "
                    "COMPLETE: it has no trained model"
                )
            return t
    raise StorageError(f"study {study.study_name!r} has no trial {number}")


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


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def status_text(study: optuna.Study, url: str) -> str:
    """Trials by state, the best trial, trials per hour and the time left for the budget."""
    trials = study.get_trials(deepcopy=False)
    states = Counter(t.state.name for t in trials)
    order = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")
    lines = [
        f"study {study.study_name!r} in {mask_url(url)}: {len(trials)} trials",
        "trials: " + ", ".join(f"{states.get(s, 0)} {s.lower()}" for s in order),
    ]
    best = ranked(study)
    if best:
        lines.append(f"best: val_accuracy {best[0].value:.4f} in trial {best[0].number}")
    else:
        lines.append("best: no completed trial yet")
    finished = [t for t in trials if t.state in FINISHED and t.datetime_complete is not None]
    starts = [t.datetime_start for t in trials if t.datetime_start is not None]
    rate = None
    if finished and starts:
        span = max(t.datetime_complete for t in finished if t.datetime_complete) - min(starts)
        seconds = span.total_seconds()
        if seconds > 0:
            rate = len(finished) / (seconds / 3600)
            lines.append(
                f"rate: {rate:.1f} finished trials per hour ({len(finished)} in "
                f"{_duration(seconds)}, first start to last finish)"
            )
    goal = study.user_attrs.get(TARGET_ATTR)
    if goal is None:
        lines.append("budget: none set (start the search with hpsearch run)")
    else:
        left = int(goal) - len(finished)
        if left <= 0:
            lines.append(f"budget: {len(finished)} of {goal} trials finished; done")
        elif rate:
            lines.append(
                f"budget: {len(finished)} of {goal} trials finished; {left} left, about "
                f"{_duration(left / rate * 3600)} at this rate"
            )
        else:
            lines.append(f"budget: {len(finished)} of {goal} trials finished; {left} left")
    return "\n".join(lines)


def best_text(study: optuna.Study, store_dir: Path) -> str:
    """The best trial as YAML: number, value, parameters, and its checkpoint."""
    t = pick_trial(study, None)
    doc: dict[str, Any] = {
        "study": study.study_name,
        "trial": t.number,
        "val_accuracy": t.value,
        "params": dict(t.params),
    }
    try:
        doc["checkpoint"] = str(checkpoint_path(t, store_dir))
    except CheckpointError as e:
        doc["checkpoint"] = None
        doc["checkpoint_problem"] = str(e)
    doc["kept_checkpoints"] = kept_checkpoints(study, store_dir)
    out: str = yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)
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
        df.insert(df.columns.get_loc("duration"), "duration_s", df["duration"].dt.total_seconds())
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
    path = Path(output)
    if path.parent and not path.parent.is_dir():
        raise HpsearchError(f"--csv {output}: directory {path.parent} does not exist")
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        df.to_csv(tmp, index=False)
        os.replace(tmp, path)
    except OSError as e:
        raise HpsearchError(f"--csv {output}: cannot write: {e.strerror or e}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return len(df), len(df.columns)
