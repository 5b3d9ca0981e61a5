"""``hpsearch`` command line. User mistakes end in one line on stderr and a non-zero exit."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
import uuid
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from hpsearch import stopping
from hpsearch.cli_results import (
    HelpFormatter,
    add_results_commands,
    artifacts_arg,
    non_negative_int,
    positive_int,
    storage_args,
)
from hpsearch.cli_serve import add_serve_command
from hpsearch.config import Override, StudyConfig, load_study, parse_set
from hpsearch.errors import ConfigError, HpsearchError, StorageError, first_line
from hpsearch.stopping import Terminated

if TYPE_CHECKING:
    import optuna
    import torch

    from hpsearch.budget import Share
    from hpsearch.data import DeviceData

log = logging.getLogger("hpsearch")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line, like every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _study_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--study",
        required=True,
        metavar="NAME|PATH",
        help="a study name under studies/ (e.g. catdog, smoke) or a path to a YAML file",
    )
    storage_args(p)
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a study-file key, e.g. --set data.image_size=64 (repeatable)",
    )


def _worker_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--allow-other-study-file",
        action="store_true",
        help="add trials to an existing study although it was made from another study file "
        "(its trials then mix two configurations); the search spaces must still agree",
    )
    p.add_argument(
        "--heartbeat",
        type=positive_int,
        default=10,
        metavar="SECONDS",
        help="trial heartbeat interval; a trial silent for 3 intervals is failed and retried",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="hpsearch",
        description="Hyperparameter search for PyTorch CNNs on Optuna.",
        formatter_class=HelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser(
        "run",
        help="run (or resume) a search: N more trials",
        formatter_class=HelpFormatter,
    )
    _study_args(run)
    run.add_argument(
        "--trials", type=positive_int, required=True, metavar="N", help="trials to add"
    )
    run.add_argument(
        "--sampler",
        default=None,
        help="override search.sampler: tpe, random, grid, "
        "gp, cmaes, qmc (default: the study file's)",
    )
    run.add_argument(
        "--pruner",
        default=None,
        help="override search.pruner: median, "
        "successive_halving, hyperband, none (default: the study file's)",
    )
    _worker_args(run)
    artifacts_arg(run)
    run.add_argument(
        "--workers",
        type=positive_int,
        default=None,
        metavar="N",
        help="worker processes on this machine (default: --trials-per-gpu per GPU, or 1 on a "
        "CPU-only machine, which runs in this process)",
    )
    run.add_argument(
        "--gpus",
        default=None,
        metavar="0,1,...",
        help="GPUs to use (default: all visible)",
    )
    run.add_argument(
        "--trials-per-gpu",
        type=positive_int,
        default=None,
        metavar="K",
        help="concurrent trials (worker processes) per GPU (default: 1)",
    )
    run.set_defaults(func=cmd_run)

    worker = sub.add_parser(
        "worker",
        help="join an existing study (e.g. from another host) until its budget is spent",
        formatter_class=HelpFormatter,
    )
    _study_args(worker)
    _worker_args(worker)
    artifacts_arg(worker)
    worker.add_argument(
        "--wait",
        type=non_negative_int,
        default=0,
        metavar="SECONDS",
        help="wait this long for the study and its budget to appear (for containers started "
        "before hpsearch run)",
    )
    worker.set_defaults(func=cmd_worker)

    train = sub.add_parser(
        "train",
        help="train one configuration without a search",
        formatter_class=HelpFormatter,
    )
    _study_args(train)
    train.add_argument(
        "--trial",
        default="baseline",
        metavar="baseline|best|NUMBER",
        help="the seed baseline, the study's best trial, or a trial number",
    )
    train.set_defaults(func=cmd_train)
    _confirm_parser(sub)
    add_results_commands(sub)
    add_serve_command(sub)
    return parser


def _confirm_parser(sub: argparse._SubParsersAction[_Parser]) -> None:
    confirm = sub.add_parser(
        "confirm",
        help="retrain the K best trials with N new seeds; the winner is the best mean",
        description="Retrain each of the K best completed trials N more times with new seeds "
        "and its full epochs, record mean and std of validation (and --data test) accuracy "
        "in the study, and keep the winner's checkpoint (use it with --confirmed). Running "
        "it again resumes: recorded runs are not repeated.",
        formatter_class=HelpFormatter,
    )
    confirm.add_argument(
        "--study",
        required=True,
        metavar="NAME|PATH",
        help="the study: its name, or its study file (trials are retrained with the "
        "configuration each recorded)",
    )
    storage_args(confirm)
    artifacts_arg(confirm)
    confirm.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a key of the trials' recorded configuration, e.g. --set "
        "train.device=cuda or --set data.root=DIR (repeatable)",
    )
    confirm.add_argument(
        "--top", type=positive_int, default=3, metavar="K", help="how many best trials"
    )
    confirm.add_argument(
        "--seeds", type=positive_int, default=3, metavar="N", help="new seeds per trial"
    )
    confirm.add_argument(
        "--data",
        default=None,
        metavar="DIR",
        help="a test ImageFolder directory (DIR/<class>/<image> or DIR/val/<class>/<image>) "
        "with the study's classes: each retrained model's accuracy on it is recorded too",
    )
    confirm.add_argument(
        "--workers",
        type=positive_int,
        default=None,
        metavar="N",
        help="worker processes taking (trial, seed) runs (default: one per GPU, or 1 in this "
        "process)",
    )
    confirm.add_argument(
        "--gpus", default=None, metavar="0,1,...", help="GPUs to use (default: all visible)"
    )
    confirm.add_argument(
        "--trials-per-gpu",
        type=positive_int,
        default=None,
        metavar="K",
        help="worker processes per GPU (default: 1)",
    )
    confirm.add_argument("--worker-trials", default=None, help=argparse.SUPPRESS)
    confirm.set_defaults(func=_cmd_confirm)


def _cmd_confirm(args: argparse.Namespace) -> int:
    from hpsearch.confirm import cmd_confirm

    return cmd_confirm(args)


def _load(args: argparse.Namespace, extra: Sequence[Override] = ()) -> StudyConfig:
    overrides = [parse_set(item) for item in args.overrides]
    return load_study(args.study, [*overrides, *extra])


def _auto_per_gpu(args: argparse.Namespace) -> Callable[[str], int]:
    """The measured ``--trials-per-gpu`` default (see hpsearch.gpu_plan), said on one line."""

    def decide(gpu: str) -> int:
        from hpsearch.gpu_plan import probe, trials_per_gpu

        print(
            f"measuring one trial of {args.study} on GPU {gpu} to pick --trials-per-gpu...",
            flush=True,
        )
        try:
            k, why = trials_per_gpu(probe([args.study, *args.overrides], gpu))
        except HpsearchError as e:
            print(f"warning: {e}; running 1 trial per GPU (set --trials-per-gpu)", flush=True)
            return 1
        print(why, flush=True)
        return k

    return decide


def cmd_run(args: argparse.Namespace) -> int:
    if args.trials < 1:
        raise ConfigError(f"--trials: must be at least 1, got {args.trials}")
    extra = [
        Override(f"search.{k}", getattr(args, k), f"--{k}")
        for k in ("sampler", "pruner")
        if getattr(args, k) is not None
    ]
    cfg = _load(args, extra)

    from hpsearch.budget import join, run_lease, withdraw
    from hpsearch.compat import check_reuse
    from hpsearch.data import load_data
    from hpsearch.launcher import launch, plan_slots
    from hpsearch.study import artifacts_dir, mask_url, open_storage, open_study, storage_url
    from hpsearch.workers import claim_lock

    slots = plan_slots(args.workers, args.gpus, args.trials_per_gpu, _auto_per_gpu(args))
    url = storage_url(args.storage)
    local = len(slots) == 1 and slots[0].gpu is None
    device = _device(cfg) if local else None
    import torch

    data = load_data(cfg.data, device or torch.device("cpu"))  # builds the cache once, here
    name = args.study_name or cfg.name
    _check_before_storage(cfg, name)
    storage = open_storage(url, args.heartbeat)  # only now: a run that fails above writes nothing
    # Made, set up and given this run's share under the claim lock, so that two runs started
    # together make one study with one baseline and add up their budgets.
    lock = claim_lock(storage, name)
    lease = run_lease(storage, name)
    lock.acquire()
    try:
        study = open_study(cfg, storage, name)  # schema and study made once, before any worker
        check_reuse(study, cfg, allow_other_file=args.allow_other_study_file, record=True)
        share = join(study, args.trials, lease, uuid.uuid4().hex[:12])
    except BaseException:
        lease.release()
        raise
    finally:
        lock.release()
    s = cfg.search
    print(
        f"study {name!r} in {mask_url(url)}: {share.finished_before} finished trials so far, "
        f"running {args.trials} more "
        f"(sampler {s.sampler.name}, pruner {s.pruner.name}, up to {cfg.train.epochs} epochs)"
    )
    if share.others:
        print(
            f"another hpsearch run is working on this study; the workers of both work "
            f"towards its target, now {share.target} finished trials"
        )
    print(
        f"data: {len(data.train_labels)} train / {len(data.val_labels)} val images of "
        f"{', '.join(data.classes)} at {data.image_size}px on "
        f"{device or f'{len(slots)} workers'}",
        flush=True,
    )
    try:
        if local:
            assert device is not None
            store = artifacts_dir(url, args.artifacts)
            total = share.target - share.finished_before
            _work(
                cfg, study, data, args.heartbeat, store, share.finished_before, total, share.run_id
            )
        else:
            worker_args = [
                "--study",
                str(cfg.path),
                "--study-name",
                name,
                "--heartbeat",
                str(args.heartbeat),
                "--artifacts",
                str(artifacts_dir(url, args.artifacts)),
            ]
            if args.allow_other_study_file:
                worker_args.append("--allow-other-study-file")
            for o in [*args.overrides, *(f"{e.key}={e.value}" for e in extra)]:
                worker_args += ["--set", o]
            codes = launch(slots, worker_args, url, env={"HPSEARCH_RUN_ID": share.run_id})
            for slot, code in zip(slots, codes, strict=True):
                if code != 0:
                    how = f"signal {-code}" if code < 0 else f"exit code {code}"
                    print(f"[w{slot.index}] ended with {how}", file=sys.stderr)
    finally:
        try:
            withdraw(study, share, lock)  # a no-op once the share is done
        except Exception as e:  # the reason the run stopped matters more
            log.warning("could not take back this run's unfinished trials: %s", e)
        lease.release()
    return _summary(cfg, study, share, url)


def _check_before_storage(cfg: StudyConfig, name: str) -> None:
    """What open_study would find wrong after the database exists: an unusable study name and
    sampler or pruner options that Optuna's constructors refuse."""
    from hpsearch.study import MAX_STUDY_NAME, make_pruner, make_sampler

    if len(name) > MAX_STUDY_NAME:
        raise ConfigError(
            f"--study-name: at most {MAX_STUDY_NAME} characters (Optuna's limit), got {len(name)}"
        )
    make_sampler(cfg, 0)
    make_pruner(cfg)


def cmd_worker(args: argparse.Namespace) -> int:
    cfg = _load(args)

    import torch

    from hpsearch.compat import check_reuse
    from hpsearch.data import load_data
    from hpsearch.study import artifacts_dir, mask_url, open_storage, open_study, storage_url
    from hpsearch.study_state import target

    threads = os.environ.get("HPSEARCH_THREADS")
    if threads and threads.isdigit():
        torch.set_num_threads(int(threads))
    from hpsearch.existing import require_studies

    url = storage_url(args.storage)
    storage = None
    name = args.study_name or cfg.name
    wid = os.environ.get("HPSEARCH_WORKER_ID", "")
    seed_offset = 7919 * (int(wid) + 1) if wid.isdigit() else os.getpid()
    deadline = time.monotonic() + args.wait
    while True:
        try:
            if storage is None:
                require_studies(url)  # a worker joins a study; it never creates the database
                storage = open_storage(url, args.heartbeat)
            study = open_study(cfg, storage, name, create=False, seed_offset=seed_offset)
            goal = target(study)
            if goal is None:
                raise StorageError(
                    f"study {name!r} has no trial budget; start it with hpsearch run"
                )
            break
        except StorageError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(2)
    check_reuse(study, cfg, allow_other_file=args.allow_other_study_file, record=False)
    device = _device(cfg)
    data = load_data(cfg.data, device)
    print(
        f"worker joined study {name!r} in {mask_url(url)} on {device}; budget {goal} trials",
        flush=True,
    )
    store = artifacts_dir(url, args.artifacts)
    _work(cfg, study, data, args.heartbeat, store, 0, goal, os.environ.get("HPSEARCH_RUN_ID"))
    return 0


def _work(
    cfg: StudyConfig,
    study: optuna.Study,
    data: DeviceData,
    heartbeat: int,
    artifacts: Path,
    offset: int,
    total: int,
    run_id: str | None,
) -> None:
    """Run this process's share of the budget, printing progress."""
    from hpsearch import optuna_private
    from hpsearch.objective import TrialOutOfMemory, make_keeper, make_objective
    from hpsearch.progress import Progress, RunSize
    from hpsearch.study import grid_check
    from hpsearch.workers import claim_lock, run_until_budget

    workers = os.environ.get("HPSEARCH_WORKERS", "1")
    wid = os.environ.get("HPSEARCH_WORKER_ID", "0")
    size = RunSize(
        data.image_size,
        cfg.train.epochs,
        len(data.train_labels) // max(len(data.classes), 1),
        2 ** _most_blocks(cfg),
    )
    progress = Progress(
        total,
        offset,
        workers=int(workers) if workers.isdigit() else 1,
        size=size if wid == "0" else None,  # one worker says it, not every one
    )
    progress.seed_best(study)
    progress.seed_time(study)
    progress.stale_after = 3.0 * heartbeat  # the grace period open_storage gives Optuna
    keeper = make_keeper(cfg, data, artifacts)
    reason = run_until_budget(
        study,
        make_objective(cfg, data, progress.epoch, keeper),
        claim_lock(optuna_private.storage_of(study), study.study_name),
        callbacks=[progress.trial_done, *([keeper.settle] if keeper is not None else [])],
        catch=(TrialOutOfMemory,),
        poll_seconds=min(5.0, float(heartbeat)),
        grid_check=grid_check(cfg) if cfg.search.sampler.name == "grid" else None,
        on_requeue=progress.requeued,
        on_wait=progress.waiting,
        run_id=run_id,
    )
    if reason == "grid exhausted":
        print("the grid is exhausted: every point has a finished trial", flush=True)


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


def _summary(cfg: StudyConfig, study: optuna.Study, share: Share, url: str) -> int:
    """Print what the run did; exit code 0 when its share of the budget (or the grid) is done."""
    import optuna

    from hpsearch.budget import finished_by
    from hpsearch.study import grid_check, mask_url, storage_url
    from hpsearch.study_state import finished_count, target

    trials = study.get_trials(deepcopy=False)
    running = sum(t.state == optuna.trial.TrialState.RUNNING for t in trials)
    done = finished_count(study)
    failed = sum(t.state == optuna.trial.TrialState.FAIL for t in trials)
    print(
        f"done: {finished_by(study, share.run_id)} trials finished in this run; the study has "
        f"{done} finished ({failed} failed, {running} running)"
    )
    from hpsearch.results import ranked

    top = ranked(study)
    if top:
        best = top[0]
        print(
            f"best: val_accuracy {best.values[0]:.4f} in trial {best.number}: "
            f"{json.dumps(best.params)}"
        )
    else:
        print("best: no completed trial yet")
    storage_flag = "" if url == storage_url(None) else f" --storage {mask_url(url)}"
    print(f"browse: hpsearch dashboard --study {study.study_name}{storage_flag}")
    # A run that joined later may have raised the target; this run answers for its own share
    # (or less, where one that stopped early took its part back).
    goal = min(share.target, target(study) or share.target)
    if done < goal:
        if cfg.search.sampler.name == "grid" and grid_check(cfg)(study) == "exhausted":
            return 0
        print(
            f"hpsearch: error: the budget of {goal} finished trials was not reached",
            file=sys.stderr,
        )
        return 1
    return 0


def _device(cfg: StudyConfig) -> torch.device:
    import torch

    from hpsearch.train import resolve_device

    device = resolve_device(cfg.train.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"train.device: {cfg.train.device} requested but no CUDA device is available"
        )
    return device


def cmd_train(args: argparse.Namespace) -> int:
    cfg = _load(args)

    from hpsearch.data import load_data
    from hpsearch.space import (
        Recorder,
        baseline_value,
        params_source,
        sample_values,
        to_trial_spec,
        trial_seed,
    )
    from hpsearch.study_state import SEED_ATTR
    from hpsearch.train import fit

    label = str(args.trial)
    if label not in ("baseline", "best") and not label.isdigit():
        raise ConfigError(f"--trial: expected baseline, best or a trial number, got {label!r}")
    if label == "baseline":
        rec = Recorder(baseline_value)
        values = sample_values(cfg.search, rec)
        params = rec.params
        seed = trial_seed(cfg.search.seed, 0)
    else:
        t = _stored_trial(cfg, args, label)
        values = sample_values(cfg.search, params_source(t.params, f"trial {t.number}"))
        params = dict(t.params)
        seed = int(t.user_attrs.get(SEED_ATTR, trial_seed(cfg.search.seed, t.number)))
        label = f"trial {t.number}"
    spec = to_trial_spec(values, cfg, seed)
    device = _device(cfg)
    data = load_data(cfg.data, device)
    print(
        f"training {label} for {spec.epochs} epochs on {len(data.train_labels)} images at "
        f"{data.image_size}px on {device}",
        flush=True,
    )

    def show(m: object) -> None:
        from hpsearch.train import EpochMetrics

        assert isinstance(m, EpochMetrics)
        print(
            f"epoch {m.epoch}/{m.epochs}: loss {m.train_loss:.4f} train_acc {m.train_accuracy:.4f} "
            f"val_loss {m.val_loss:.4f} val_acc {m.val_accuracy:.4f} lr {m.lr:.2e} "
            f"({m.train_images_per_s:.0f} img/s, {m.epoch_seconds:.1f}s)",
            flush=True,
        )

    from hpsearch.objective import is_out_of_memory
    from hpsearch.train import NonFiniteLoss

    try:
        result = fit(spec, data, show, cfg.train.eval_batch_size)
    except NonFiniteLoss as e:
        raise HpsearchError(f"trial {label}: {e}") from None
    except (MemoryError, RuntimeError) as e:
        if not is_out_of_memory(e):
            raise
        raise HpsearchError(f"trial {label} ran out of memory: {first_line(e)}") from None
    print(
        json.dumps(
            {
                "trial": label,
                "val_accuracy": result.val_accuracy,
                "train_images_per_s": round(result.train_images_per_s, 1),
                "epoch_seconds": round(result.epoch_seconds, 3),
                "n_params": result.n_params,
                "params": params,
                "seed": seed,
                "device": str(device),
            }
        )
    )
    return 0


def _stored_trial(
    cfg: StudyConfig, args: argparse.Namespace, label: str
) -> optuna.trial.FrozenTrial:
    from hpsearch.results import open_existing
    from hpsearch.study import storage_url

    study = open_existing(storage_url(args.storage), args.study_name or cfg.name)
    if label == "best":
        from hpsearch.results import pick_trial

        return pick_trial(study, None)
    for t in study.get_trials(deepcopy=False):
        if t.number == int(label):
            return t
    raise StorageError(f"study {study.study_name!r} has no trial {label}")


class _QuietInterrupt(logging.Filter):
    """Optuna logs a trial stopped by Ctrl-C (or SIGTERM) as two warnings, "Trial N failed with
    parameters: ... KeyboardInterrupt()" with a traceback and "Trial N failed with value None.".
    The user asked for the stop and hpsearch says so in one line, so both are dropped; the
    numbers of the stopped trials are kept for that line."""

    _FAILED = re.compile(r"Trial (\d+) failed with ")

    def __init__(self) -> None:
        super().__init__()
        self.stopped: list[int] = []

    def filter(self, record: logging.LogRecord) -> bool:
        m = self._FAILED.match(record.getMessage())
        if m is None:
            return True
        if record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt):
            self.stopped.append(int(m[1]))
            return False
        return int(m[1]) not in self.stopped  # the "failed with value None." line that follows


_quiet_interrupt = _QuietInterrupt()


def main(argv: Sequence[str] | None = None) -> int:
    stopping.install()
    logging.basicConfig(format="hpsearch: %(levelname)s: %(message)s", level=logging.WARNING)
    args = build_parser().parse_args(argv)
    try:
        import optuna

        from hpsearch.optuna_private import OPTIMIZE_LOGGER

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        # Optuna calls features hpsearch builds on experimental (heartbeats, artifacts, metric
        # names, sampler options) and warns on each use; not news for this program's user. Set
        # here, by the program, not at import by a module that a library user may import.
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        # on the logger that writes them, so no handler (Optuna's or the root's) sees them
        logging.getLogger(OPTIMIZE_LOGGER).addFilter(_quiet_interrupt)
        code: int = args.func(args)
        return code
    except HpsearchError as e:
        print(f"hpsearch: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt as e:
        stopping.quiet()  # this line says it all; a second Ctrl-C now changes nothing
        what = "terminated" if isinstance(e, Terminated) else "interrupted"
        stopped = _quiet_interrupt.stopped
        if stopped:
            which = ", ".join(map(str, stopped))
            what += (
                f" during trial {which}; run the same command again to resume (trial {which} "
                "runs again with the same parameters)"
            )
        else:
            what += "; run the same command again to resume"
        print(f"hpsearch: {what}", file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130


if __name__ == "__main__":
    sys.exit(main())
