"""``hpsearch confirm``: retrain the K best trials with new seeds, so that the winner is the best
configuration on average rather than the luckiest single run.

Each (trial, run) job trains the trial's parameters for its full epochs with a seed derived from
the trial's own seed and the run index (reproducible, never the trial's own). A finished run is
recorded at once in the trial's user attributes (``confirm_runs``, the means and spreads: see
``storage.state.CONFIRM_*``), so an interrupted confirm resumes where it stopped and ``best``, the
dashboard and ``trials --csv`` show the results. Optuna does not let its API change a finished
trial, so these attributes are written to Optuna's table of trial user attributes directly
(``storage.state.write_attrs``, under the claim lock, one transaction per run). Each trial keeps the
model of its best run in the artifact store (``confirm_checkpoint``); the study's ``confirmed``
attribute names the winner (the highest mean) and its checkpoint.

Several workers (``--workers``, ``--gpus``) take jobs one at a time: a job is claimed in the
study's ``confirm_claims`` attribute under the claim lock, and released when its run is recorded
or its worker is stopped. With ``--timeout`` no job starts after the deadline (the launched
workers get the same moment, ``--deadline``); the runs going then finish and are recorded, and
the same command later resumes with the rest.

This module is the command and the winner's record; the rows, the winner's pick and the table
are :mod:`hpsearch.results.confirmed` (``hpsearch report`` prints the same table), the jobs and
their claims :mod:`hpsearch.search.confirm_jobs`, a worker's training
:mod:`hpsearch.search.confirm_runs` (imported once everything the command checks has passed, so
a mistake is one quick line).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from hpsearch.config import StudyConfig
from hpsearch.engine.images import list_split
from hpsearch.errors import DataError, HpsearchError, StorageError
from hpsearch.files import what_is
from hpsearch.results.confirmed import (
    ALL_RUNS,
    Row,
    confirm_rows,
    pick_winner,
    spread_note,
    table,
)
from hpsearch.search.confirm_jobs import (
    TestSet,
    check_setup,
    clear_job_claims,
    pending,
    plan,
    trial_config,
)
from hpsearch.storage.checkpoint import remove_artifact
from hpsearch.storage.state import (
    CONFIG_ATTR,
    CONFIRM_CHECKPOINT,
    CONFIRM_N,
    CONFIRM_RUNS,
    CONFIRM_TEST_DATA,
    CONFIRM_TEST_MEAN,
    CONFIRM_TEST_N,
    CONFIRM_TEST_STD,
    CONFIRM_VAL_MEAN,
    CONFIRM_VAL_STD,
    CONFIRMED_ATTR,
    fresh_trials,
    winner_checkpoint,
)

# --- one run -----------------------------------------------------------------------------------


def check_test_dir(data_dir: Path, classes: Sequence[str], image_size: int) -> TestSet:
    """The test directory's layout and classes (a subset of the training classes), and every
    image decoded at ``image_size`` (into the cache the runs' evaluation reads), before any
    training: an undecodable photo is found now, not after each run's training."""
    from hpsearch.engine.data import load_split
    from hpsearch.engine.spec import DataConfig
    from hpsearch.results.inference import imagefolder_split

    split = imagefolder_split(data_dir.expanduser().resolve())
    try:
        found, _ = list_split(split)
    except DataError as e:
        raise DataError(
            f"--data {data_dir}: not an ImageFolder directory (DIR/<class>/<image> or "
            f"DIR/val/<class>/<image>): {e}"
        ) from None
    unknown = [c for c in found if c not in classes]
    if unknown:
        raise DataError(
            f"--data {data_dir}: class folder(s) {', '.join(unknown)} are not classes of the "
            f"study ({', '.join(classes)})"
        )
    load_split(DataConfig(split.parent, image_size, None, None), split.name)
    return TestSet(data_dir.expanduser().resolve())


def train_classes(cfg: StudyConfig) -> tuple[str, ...]:
    """The class names of the study's training split (listing only, no decoding)."""
    if not cfg.data.root.is_dir():
        raise DataError(
            f"data root {cfg.data.root} {what_is(cfg.data.root, 'a directory')} (set --set "
            "data.root=DIR to the "
            "ImageFolder directory the search trained on)"
        )
    classes, _ = list_split(cfg.data.root / "train", cfg.data.max_per_class)
    return classes


# --- the result --------------------------------------------------------------------------------


def record_winner(
    study: optuna.Study, winner: Row, top: int, seeds: int, store: Path
) -> dict[str, Any]:
    """Record ``winner`` as the study's confirmed trial; the previous winner's checkpoint, which
    the runs kept until now, is removed once no trial keeps it."""
    before = winner_checkpoint(study)
    a = winner.attrs
    runs = a.get(ALL_RUNS, a.get(CONFIRM_RUNS)) or []
    kept: dict[str, Any] = next((r for r in runs if r.get("kept")), {})
    doc = {
        "trial": winner.trial.number,
        "val_accuracy_mean": a.get(CONFIRM_VAL_MEAN),
        "val_accuracy_std": a.get(CONFIRM_VAL_STD),
        "n": a.get(CONFIRM_N),
        "test_accuracy_mean": a.get(CONFIRM_TEST_MEAN),
        "test_accuracy_std": a.get(CONFIRM_TEST_STD),
        "test_n": a.get(CONFIRM_TEST_N),
        "test_data": a.get(CONFIRM_TEST_DATA),
        "checkpoint": a.get(CONFIRM_CHECKPOINT),
        "seed": kept.get("seed"),
        "search_val_accuracy": winner.trial.values[0],
        "top": top,
        "seeds": seeds,
    }
    study.set_user_attr(CONFIRMED_ATTR, doc)
    if before is not None and before != doc["checkpoint"]:
        in_use = {t.user_attrs.get(CONFIRM_CHECKPOINT) for t in fresh_trials(study)}
        if before not in in_use:
            remove_artifact(store, before)
    return doc


# --- the command -------------------------------------------------------------------------------


def cmd_confirm(args: Any, deadline: float | None = None) -> int:
    """``hpsearch confirm``: see the module docstring. ``args`` is the parsed command line;
    ``deadline`` (seconds since the epoch) what its ``--timeout`` or ``--deadline`` asks."""
    started = time.time()
    from hpsearch.config import load_study, parse_set
    from hpsearch.results.read import open_existing, pick_trial, ranked, study_name
    from hpsearch.search.launcher import launch, plan_slots
    from hpsearch.storage.secrets import mask_url
    from hpsearch.storage.urls import artifacts_dir, storage_url

    overrides = [parse_set(item) for item in args.overrides]
    url = storage_url(args.storage)
    name = study_name(args.study, args.study_name)
    study = open_existing(url, name)
    store = artifacts_dir(url, args.artifacts)
    completed = ranked(study)
    if args.worker_trials is not None:
        top = [pick_trial(study, int(n)) for n in args.worker_trials.split(",")]
    else:
        top = completed[: args.top]
        if not top:
            trials = study.get_trials(deepcopy=False)
            n = len(trials)
            done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
            if done:
                raise StorageError(
                    f"study {name!r}: all {len(done)} completed trial"
                    f"{'' if len(done) == 1 else 's'} are over the deployment budget "
                    "(search.constraints), so none is confirmed; raise the budget or search more"
                )
            raise StorageError(
                f"study {name!r} has no completed trial to confirm ({n} trial"
                f"{'' if n == 1 else 's'} in all)"
            )
    fallback: list[StudyConfig] = []

    def config_of(t: FrozenTrial) -> StudyConfig:
        if not fallback and not isinstance(t.user_attrs.get(CONFIG_ATTR), dict):
            fallback.append(load_study(args.study, overrides))
        return trial_config(t, overrides, fallback[0] if fallback else None)

    configs = {t.number: config_of(t) for t in top}
    jobs = plan(top, configs, args.seeds)
    test = None
    if args.data is not None:
        if not args.data.strip():  # Path("") is the current directory
            raise DataError("--data: empty path (give the test ImageFolder directory)")
        first = configs[top[0].number]
        test = check_test_dir(Path(args.data), train_classes(first), first.data.image_size)

    # the training code (torch): once the study, its trials and --data have been checked
    from hpsearch.search.confirm_runs import Worker

    if args.worker_trials is not None:  # a worker started by the command below
        import torch

        threads = os.environ.get("HPSEARCH_THREADS")
        if threads and threads.isdigit():
            torch.set_num_threads(int(threads))
        workers = os.environ.get("HPSEARCH_WORKERS", "1")
        n = int(workers) if workers.isdigit() else 1
        Worker(study, jobs, store, test, _say, n, deadline).work()
        return 0

    check_setup(study, jobs)
    todo = pending(study, jobs)
    epochs = sorted({c.train.epochs for c in configs.values()})
    of = f"the {len(top)} best of {len(completed)} completed"
    if len(top) < args.top:
        of = f"all {len(completed)} completed trials; --top {args.top} asked for more"
    _say(
        f"confirm {name!r} in {mask_url(url)}: trials {', '.join(str(t.number) for t in top)} "
        f"({of}) x {args.seeds} seed{'s' if args.seeds != 1 else ''}, "
        f"{'/'.join(map(str, epochs))} epochs each; {len(jobs) - len(todo)} of {len(jobs)} runs "
        "recorded already" + (f"; test accuracy on {test.path}" if test is not None else "")
    )
    if deadline is not None and todo:
        from hpsearch.results.timing import until, utc_clock

        now = time.time()
        _say(
            f"deadline {utc_clock(deadline, now)} ({until(deadline, now)}): no confirm run "
            "starts after it"
        )
    if todo:
        clear_job_claims(study)
        device = configs[top[0].number].train.device
        slots = plan_slots(args.workers, args.gpus, args.trials_per_gpu, device=device)
        if len(slots) == 1 and (slots[0].gpu is None or args.gpus is None):
            Worker(study, jobs, store, test, _say, deadline=deadline).work()
        else:
            child = [
                "--study",
                args.study,
                "--study-name",
                name,
                "--artifacts",
                str(store),
                "--seeds",
                str(args.seeds),
                "--worker-trials",
                ",".join(str(t.number) for t in top),
            ]
            if test is not None:
                child += ["--data", str(test.path)]
            for item in args.overrides:
                child += ["--set", item]
            if deadline is not None:  # the same moment for every worker, however late
                from hpsearch.storage.deadlines import iso_utc

                child += ["--deadline", iso_utc(deadline)]
            codes = launch(slots, child, url, command="confirm")
            for slot, code in zip(slots, codes, strict=True):
                if code != 0:
                    how = f"signal {-code}" if code < 0 else f"exit code {code}"
                    _say(f"[w{slot.index}] ended with {how}")
    rows = confirm_rows(study, top, args.seeds)
    missing = pending(study, jobs)
    winner = pick_winner(rows)
    _say(table(rows, winner, args.seeds))
    if missing and deadline is not None and time.time() >= deadline:
        from hpsearch.results.timing import duration

        recorded = len(jobs) - len(missing)
        print(
            f"hpsearch: deadline reached after {duration(time.time() - started)}: {recorded} of "
            f"{len(jobs)} confirm runs recorded, {len(missing)} not started, so no winner is "
            "recorded yet; run the same command again to resume",
            file=sys.stderr,
        )
        return 1
    if missing:
        raise HpsearchError(
            f"{len(missing)} of {len(jobs)} confirm runs did not finish; run the same command "
            "again to resume"
        )
    if winner is None:
        raise HpsearchError("every confirm run diverged: no trial is confirmed")
    doc = record_winner(study, winner, len(top), args.seeds, store)
    test_text = ""
    if doc["test_accuracy_mean"] is not None:
        of_n = "" if doc["test_n"] == doc["n"] else f" over {doc['test_n']} of {doc['n']} runs"
        test_text = (
            f"; test accuracy {doc['test_accuracy_mean']:.4f} ± "
            f"{doc['test_accuracy_std']:.4f}{of_n} on {doc['test_data']}"
        )
    _say(
        f"winner: trial {doc['trial']}, confirmed val_accuracy {doc['val_accuracy_mean']:.4f} "
        f"± {doc['val_accuracy_std']:.4f} over {doc['n']} seed{'s' if doc['n'] != 1 else ''}"
        f"{test_text} (the search "
        f"measured {winner.trial.values[0]:.4f} once)"
    )
    note = spread_note(rows)
    if note:
        _say(note)
    if isinstance(doc["checkpoint"], str):
        from hpsearch.results.read import confirmed_checkpoint_path

        _say(
            f"checkpoint: {confirmed_checkpoint_path(doc, store)} (its run with seed "
            f"{doc['seed']}); use it with --confirmed, e.g. hpsearch export --study {args.study} "
            "--confirmed --format torchscript --output model.pt"
        )
    return 0


def _say(text: str) -> None:
    print(text, flush=True)
