"""What ``hpsearch run`` and ``worker`` do, in this process: run (or resume) a search, join one
(``hpsearch train``, one configuration without a search, is :mod:`hpsearch.search.train_one`). The
command line parses its arguments into the options here and prints what these functions return; the
lines said while they work (the study joined, the data loaded) go through the ``say`` callback
they are given.

``run`` checks the storage (without writing to it) before anything slow, then plans the worker
slots (which may probe a GPU by training), decodes and validates the data, and only then opens
the storage and makes the study: a run that fails before that writes nothing.
"""

from __future__ import annotations

import logging
import os
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpsearch.config import Override, StudyConfig, load_study, parse_set
from hpsearch.errors import ConfigError, HpsearchError

if TYPE_CHECKING:
    import optuna
    import torch

    from hpsearch.engine.data import DeviceData
    from hpsearch.search.launcher import Slot
    from hpsearch.storage.budget import Share

Say = Callable[[str], None]  # one line for the user, said while the work goes on
log = logging.getLogger("hpsearch")


@dataclass(frozen=True)
class RunOptions:
    """``hpsearch run``: add ``trials`` trials to the study of study file ``study``."""

    study: str  # a study name under studies/ or a path to a study file
    trials: int
    overrides: tuple[str, ...] = ()  # KEY=VALUE, as --set takes them
    storage: str | None = None  # default: $HPSEARCH_STORAGE, else sqlite:///hpsearch.db
    study_name: str | None = None  # default: the study file's name
    sampler: str | None = None  # instead of the study file's search.sampler
    pruner: str | None = None  # instead of the study file's search.pruner
    heartbeat: int | None = None  # seconds; None: the study's (storage/heartbeat.py), else 10
    artifacts: str | None = None  # the checkpoint directory (default: see study.artifacts_dir)
    workers: int | None = None
    gpus: str | None = None  # "0,1,..."
    trials_per_gpu: int | None = None  # default: measured on the first GPU
    allow_other_study_file: bool = False
    command: str = ""  # the command line, recorded on each trial (passwords masked there)
    deadline: float | None = None  # --timeout: no trial starts after it (seconds since the epoch)


@dataclass(frozen=True)
class JoinOptions:
    """``hpsearch worker``: join the study that a run made and work until its budget is spent."""

    study: str
    overrides: tuple[str, ...] = ()
    storage: str | None = None
    study_name: str | None = None
    heartbeat: int | None = None  # None: the study's
    artifacts: str | None = None
    wait: int = 0  # seconds to wait for the study and its budget to appear
    allow_other_study_file: bool = False
    command: str = ""
    # Where a run's launcher started this worker (see hpsearch.search.launcher), else None:
    worker_id: int | None = None  # its index among the run's workers
    workers: int = 1  # how many the run started
    threads: int | None = None  # torch threads
    run_id: str | None = None  # the run whose share it works for
    gpu: int | None = None  # worker --gpu: the GPU (as this process numbers them) to train on
    deadline: float | None = None  # --timeout (or its run's): no trial starts after it


@dataclass(frozen=True)
class Best:
    number: int
    val_accuracy: float
    params: dict[str, Any]


@dataclass(frozen=True)
class RunSummary:
    """What a run did, for the lines that end it."""

    study_name: str
    url: str  # the storage URL, unmasked: mask it to print it
    finished_here: int  # trials that this run's workers finished
    finished: int  # finished trials in the study
    failed: int
    running: int
    best: Best | None  # the study's best trial within its deployment budget
    goal: int  # finished trials this run answers for
    done: bool  # the goal is reached (or the grid has no point left)
    worker_exits: tuple[tuple[int, int], ...] = ()  # (worker index, exit code) of failed workers
    trials: int = 0  # the trials the run added (--trials)
    deadline_reached: bool = False  # it ended at its deadline (--timeout) with trials unstarted
    given_back: int = 0  # trials of its share taken back when it ended (none started)
    seconds: float = 0.0  # how long it ran


def load(study: str, overrides: tuple[str, ...], extra: tuple[Override, ...] = ()) -> StudyConfig:
    """The study file ``study`` with ``--set`` ``overrides`` (KEY=VALUE) and ``extra``."""
    return load_study(study, [*(parse_set(item) for item in overrides), *extra])


def _auto_per_gpu(opts: RunOptions, say: Say) -> Callable[[str], int]:
    """The measured ``--trials-per-gpu`` default (see hpsearch.search.gpu_plan), said on one
    line."""

    def decide(gpu: str) -> int:
        from hpsearch.engine.images import list_split
        from hpsearch.search.gpu_plan import largest_memory, probe, trials_per_gpu

        cfg = load(opts.study, opts.overrides)
        classes, _ = list_split(cfg.data.root / "train", cfg.data.max_per_class)
        _, model = largest_memory(cfg, len(classes))
        say(f"measuring one trial of {opts.study} on GPU {gpu} to pick --trials-per-gpu...")
        try:
            k, why = trials_per_gpu(probe([opts.study, *opts.overrides], gpu), model)
        except HpsearchError as e:
            say(f"warning: {e}; running 1 trial per GPU (set --trials-per-gpu)")
            return 1
        say(why)
        return k

    return decide


def run_search(opts: RunOptions, say: Say) -> RunSummary:
    """Run (or resume) a search: ``opts.trials`` more finished trials, in this process on a
    CPU-only machine with one worker, else in worker processes (``hpsearch worker``)."""
    if opts.trials < 1:
        raise ConfigError(f"--trials: must be at least 1, got {opts.trials}")
    started = time.time()
    cfg = load(opts.study, opts.overrides)
    # --pruner percentile with --set 'search.pruner={name: percentile, percentile: 40}' keeps
    # those options: only a sampler or pruner other than the file's (after --set) replaces it
    extra = tuple(
        Override(f"search.{k}", getattr(opts, k), f"--{k}")
        for k in ("sampler", "pruner")
        if getattr(opts, k) is not None and getattr(opts, k) != getattr(cfg.search, k).name
    )
    if extra:
        cfg = load(opts.study, opts.overrides, extra)

    from hpsearch.storage.deadlines import iso_utc
    from hpsearch.storage.secrets import mask_url
    from hpsearch.storage.state import SETTINGS_ATTR
    from hpsearch.storage.study import check_before_opening, open_for_run
    from hpsearch.storage.urls import artifacts_dir, storage_url

    url = storage_url(opts.storage)
    name = opts.study_name or cfg.name
    check_before_opening(cfg, url, name)  # before the slow work below, and before any write
    artifacts_dir(url, opts.artifacts)  # a file where checkpoints go: refused now, not later
    from hpsearch.engine.determinism import before_cuda

    before_cuda(cfg.train.deterministic)  # before CUDA starts here or in a process started below
    from hpsearch.engine.data import load_data  # torch: imported once the checks have passed
    from hpsearch.search.launcher import launch, plan_slots

    slots = plan_slots(
        opts.workers, opts.gpus, opts.trials_per_gpu, _auto_per_gpu(opts, say), cfg.train.device
    )
    slots = _fit_storage(slots, url, opts.trials, say)
    local = len(slots) == 1 and slots[0].gpu is None
    device = device_for(cfg) if local else None
    import torch

    data = load_data(cfg.data, device or torch.device("cpu"))  # builds the cache once, here
    # only now: a run that fails above writes nothing
    opened = open_for_run(
        cfg,
        url,
        name,
        opts.trials,
        heartbeat=opts.heartbeat,
        allow_other_file=opts.allow_other_study_file,
        deadline=opts.deadline,
    )
    study, share, heartbeat = opened.study, opened.share, opened.heartbeat
    settings = [*opts.overrides, *(f"{e.key}={e.value}" for e in extra)]
    study.set_user_attr(SETTINGS_ATTR, settings)  # for workers started by hand
    if opened.heartbeat_note:
        say(opened.heartbeat_note)
    exits: list[tuple[int, int]] = []
    try:  # from here on, whatever stops the run gives back what is left of its share
        s = cfg.search
        say(
            f"study {name!r} in {mask_url(url)}: {share.finished_before} finished trials so far, "
            f"running {opts.trials} more "
            f"(sampler {s.sampler.name}, pruner {s.pruner.name}, up to {cfg.train.epochs} epochs)"
        )
        if opts.deadline is not None:
            say(_deadline_line(opts.deadline, "no trial starts after it"))
        if share.others:
            say(
                f"another hpsearch run is working on this study; the workers of both work "
                f"towards its target, now {share.target} finished trials"
            )
        say(
            f"data: {len(data.train_labels)} train / {len(data.val_labels)} val images of "
            f"{', '.join(data.classes)} at {data.image_size}px on "
            f"{device or f'{len(slots)} workers'}"
        )
        if local:
            assert device is not None
            store = artifacts_dir(url, opts.artifacts)
            total = share.target - share.finished_before
            _work(
                cfg,
                study,
                data,
                heartbeat,
                store,
                share.finished_before,
                total,
                share.run_id,
                command=opts.command,
                say=say,
                deadline=opts.deadline,
            )
        else:
            worker_args = [
                "--study",
                str(cfg.path),
                "--study-name",
                name,
                "--heartbeat",
                str(heartbeat),
                "--artifacts",
                str(artifacts_dir(url, opts.artifacts)),
            ]
            if opts.allow_other_study_file:
                worker_args.append("--allow-other-study-file")
            if opts.deadline is not None:  # the same moment for every worker, however late
                worker_args += ["--deadline", iso_utc(opts.deadline)]
            for o in settings:
                worker_args += ["--set", o]
            codes = launch(slots, worker_args, url, env={"HPSEARCH_RUN_ID": share.run_id})
            exits = [
                (slot.index, code) for slot, code in zip(slots, codes, strict=True) if code != 0
            ]
    finally:
        # what is left of this run's share goes back (none once it is done)
        given_back = opened.close()
    reached = opts.deadline is not None and time.time() >= opts.deadline and given_back > 0
    summary = _summary(cfg, study, share, url, tuple(exits))
    # workers that died with the share unfinished: giving the rest back lowered the target to
    # what finished, which must not read as a budget reached
    died = bool(exits) and given_back > 0 and not reached
    return replace(
        summary,
        # the deadline asked for ends it (even before any trial finished, when the study's
        # target went back to 0), unless a worker failed
        done=(summary.done and not died) or (reached and not exits),
        goal=share.target if died else summary.goal,
        trials=opts.trials,
        deadline_reached=reached,
        given_back=given_back,
        seconds=time.time() - started,
    )


def _deadline_line(deadline: float, what: str) -> str:
    from hpsearch.results.timing import until, utc_clock

    now = time.time()
    return f"deadline {utc_clock(deadline, now)} ({until(deadline, now)}): {what}"


def join_search(opts: JoinOptions, say: Say) -> str:
    """Join a study that ``hpsearch run`` made (waiting up to ``opts.wait`` seconds for it and
    its budget to appear) and run trials until its budget is spent or ``opts.deadline`` has
    passed; returns why it stopped (see :func:`hpsearch.search.workers.run_until_budget`). A
    worker's deadline stops this worker only: the budget stays the study's, for its other
    workers (a run's deadline gives back the run's unstarted trials when the run ends)."""
    cfg = load(opts.study, opts.overrides)

    from hpsearch.storage.secrets import mask_url
    from hpsearch.storage.state import SETTINGS_ATTR, run_settings
    from hpsearch.storage.study import join_study
    from hpsearch.storage.urls import artifacts_dir, storage_url

    url = storage_url(opts.storage)
    name = opts.study_name or cfg.name

    def joined(cfg: StudyConfig, wait: float) -> tuple[Any, int, int, str]:
        return join_study(
            cfg,
            url,
            name,
            heartbeat=opts.heartbeat,
            seed_offset=7919 * (opts.worker_id + 1) if opts.worker_id is not None else os.getpid(),
            wait=wait,
            allow_other_file=opts.allow_other_study_file,
            on_wait=say,
        )

    study, goal, heartbeat, note = joined(cfg, opts.wait)
    settings = run_settings(study)
    if not opts.overrides and settings:
        # a worker started by hand, with none of its own: the settings of the run
        try:
            cfg = load(opts.study, tuple(settings))
        except ConfigError as e:
            raise ConfigError(
                f"the settings the last run recorded in study {name!r} (user attribute "
                f"{SETTINGS_ATTR!r}: {settings}) do not apply to {opts.study}: {e}; pass this "
                "worker's own --set"
            ) from None
        study, goal, heartbeat, note = joined(cfg, 0)
        if opts.run_id is None:
            say(f"the run's settings: {' '.join('--set ' + shlex.quote(o) for o in settings)}")
    elif opts.overrides and settings is not None and list(opts.overrides) != settings:
        say(
            "note: this worker's --set differ from those of the last run on the study "
            f"({' '.join(settings) or 'none'}); its trials train with this worker's"
        )
    import torch  # once the study is found: a wrong --storage is one line in under a second

    from hpsearch.engine.data import load_data

    if opts.threads is not None:
        torch.set_num_threads(opts.threads)
    device = device_for(cfg, opts.gpu)
    data = load_data(cfg.data, device)
    say(f"worker joined study {name!r} in {mask_url(url)} on {device}; budget {goal} trials")
    if note and opts.run_id is None:  # a run's workers: the run says it
        say(note)
    if opts.deadline is not None and opts.run_id is None:  # a run's workers: the run says it
        say(_deadline_line(opts.deadline, "this worker starts no trial after it"))
    from hpsearch.engine.devices import pinned, visible_gpus

    if device.type == "cuda" and not pinned() and opts.gpu is None:
        gpus = visible_gpus()
        if len(gpus) > 1 and not cfg.train.device.startswith("cuda:"):
            say(
                f"note: GPU {device.index} of the {len(gpus)} this process sees; "
                "--gpu N picks another"
            )
    store = artifacts_dir(url, opts.artifacts)
    reason = _work(
        cfg,
        study,
        data,
        heartbeat,
        store,
        0,
        goal,
        opts.run_id,
        command=opts.command,
        say=say,
        workers=opts.workers,
        first=(opts.worker_id or 0) == 0,
        deadline=opts.deadline,
    )
    if reason == "deadline" and opts.run_id is None:
        from hpsearch.storage.state import count_states, target

        finished, running = count_states(study)
        say(
            f"deadline reached: this worker starts no new trial; the study has {finished} of "
            f"{target(study)} trials finished ({running} running), the rest is left to its "
            "other workers"
        )
    return reason


def _work(
    cfg: StudyConfig,
    study: optuna.Study,
    data: DeviceData,
    heartbeat: int,
    artifacts: Path,
    offset: int,
    total: int,
    run_id: str | None,
    *,
    command: str,
    say: Say,
    workers: int = 1,
    first: bool = True,
    deadline: float | None = None,
) -> str:
    """Run this process's share of the budget until it is spent or ``deadline`` has passed,
    printing progress (``first``: the run's first worker, which says the size of a trial;
    ``workers``: how many the run has); returns why it stopped."""
    from hpsearch.search.objective import (
        TrialOutOfMemory,
        make_keeper,
        make_objective,
    )
    from hpsearch.search.progress import Progress, RunSize
    from hpsearch.search.workers import run_until_budget
    from hpsearch.storage import optuna_private
    from hpsearch.storage.claims import claim_lock
    from hpsearch.storage.heartbeat import STALE_AFTER
    from hpsearch.storage.study import grid_check

    size = RunSize(
        data.image_size,
        cfg.train.epochs,
        len(data.train_labels) // max(len(data.classes), 1),
        2 ** _most_blocks(cfg),
    )
    progress = Progress(
        total,
        offset,
        workers=workers,
        size=size if first else None,  # one worker says it, not every one
        deadline=deadline,
    )
    progress.seed_best(study)
    progress.seed_time(study)
    progress.stale_after = float(STALE_AFTER * heartbeat)  # the storage's grace period
    keeper = make_keeper(cfg, data, artifacts)
    reason = run_until_budget(
        study,
        make_objective(cfg, data, progress.epoch, keeper, command=command),
        claim_lock(optuna_private.storage_of(study), study.study_name),
        callbacks=[
            progress.trial_done,
            *([keeper.settle] if keeper is not None else []),
            between_trials(data.device),
        ],
        catch=(TrialOutOfMemory,),
        poll_seconds=min(5.0, float(heartbeat)),
        grid_check=grid_check(cfg) if cfg.search.sampler.name == "grid" else None,
        on_requeue=progress.requeued,
        on_wait=progress.waiting,
        run_id=run_id,
        deadline=deadline,
        on_hold=progress.held,
        on_taken=progress.taken,
    )
    if reason == "grid exhausted":
        say("the grid is exhausted: every point has a finished trial")
    return reason


def between_trials(device: torch.device) -> Callable[[Any, Any], None]:
    """A ``study.optimize`` callback: on a GPU, the blocks the caching allocator kept for the
    trial that just ended go back to the driver, for the neighbours on this GPU (the plan counts
    one trial's worst case per worker, not the largest trial each worker ever ran)."""
    from hpsearch.search.objective import free_memory

    def give_back(study: Any, trial: Any) -> None:
        if device.type == "cuda":
            free_memory(device)

    return give_back


def _most_blocks(cfg: StudyConfig) -> int:
    """The most conv blocks the search space allows (each halves the image)."""
    from hpsearch.space import BASELINE, Choice, Fixed, FloatRange, IntRange

    spec = cfg.search.space.get("n_blocks", Fixed(BASELINE["n_blocks"]))
    if isinstance(spec, Fixed):
        return int(spec.value)
    if isinstance(spec, Choice):
        return max(int(c) for c in spec.choices)
    if isinstance(spec, IntRange | FloatRange):
        return int(spec.high)
    return int(BASELINE["n_blocks"])


def _summary(
    cfg: StudyConfig,
    study: optuna.Study,
    share: Share,
    url: str,
    exits: tuple[tuple[int, int], ...],
) -> RunSummary:
    """What the run did; ``done`` when its share of the budget (or the grid) is done."""
    import optuna

    from hpsearch.results.read import ranked
    from hpsearch.storage.budget import finished_by
    from hpsearch.storage.state import finished_count, target
    from hpsearch.storage.study import grid_check

    trials = study.get_trials(deepcopy=False)
    running = sum(t.state == optuna.trial.TrialState.RUNNING for t in trials)
    finished = finished_count(study)
    failed = sum(t.state == optuna.trial.TrialState.FAIL for t in trials)
    top = ranked(study)
    best = Best(top[0].number, top[0].values[0], dict(top[0].params)) if top else None
    # A run that joined later may have raised the target; this run answers for its own share
    # (or less, where one that stopped early took its part back).
    goal = min(share.target, target(study) or share.target)
    done = finished >= goal or (
        cfg.search.sampler.name == "grid" and grid_check(cfg)(study) == "exhausted"
    )
    return RunSummary(
        study_name=study.study_name,
        url=url,
        finished_here=finished_by(study, share.run_id),
        finished=finished,
        failed=failed,
        running=running,
        best=best,
        goal=goal,
        done=done,
        worker_exits=exits,
    )


MAX_SQLITE_WORKERS = 4  # the most workers the suite runs on one SQLite file


def _fit_storage(slots: list[Slot], url: str, trials: int, say: Say) -> list[Slot]:
    """No more workers than the trials asked for, and on SQLite, which lets one writer in at a
    time, no more than MAX_SQLITE_WORKERS: said in one line, with what to use instead."""
    keep = len(slots)
    why = []
    if url.startswith("sqlite") and keep > MAX_SQLITE_WORKERS:
        keep = MAX_SQLITE_WORKERS
        why.append(
            f"SQLite lets one writer in at a time and hpsearch is tested with up to "
            f"{MAX_SQLITE_WORKERS} workers on one file; for more, use PostgreSQL "
            "(--storage postgresql://...)"
        )
    if keep > trials:
        keep = trials
        why.append(f"--trials {trials} needs no more")
    if keep == len(slots):
        return slots
    say(f"note: running {keep} of {len(slots)} workers: {'; '.join(why)}")
    return _renumbered(slots[:keep])


def _renumbered(slots: list[Slot]) -> list[Slot]:
    """The threads of each kept worker, recomputed for their number."""
    cores = os.cpu_count() or 1
    return [replace(s, threads=max(1, cores // len(slots))) for s in slots]


def device_for(cfg: StudyConfig, gpu: int | None = None) -> torch.device:
    """The device this process trains on: the study's ``train.device`` (or ``worker --gpu``
    ``gpu``), as :func:`hpsearch.engine.devices.training_device` resolves it; a GPU that is not
    there is a ConfigError. Called before the process's first CUDA work, so it also readies
    ``train.deterministic``'s cuBLAS setting (``engine.determinism.before_cuda``)."""
    from hpsearch.engine.determinism import before_cuda
    from hpsearch.engine.devices import training_device

    before_cuda(cfg.train.deterministic)
    return training_device(cfg.train.device, gpu)
