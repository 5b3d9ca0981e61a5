"""``hpsearch`` command line: parse the arguments, call the module that does the work
(:mod:`hpsearch.search.run` for run and worker, :mod:`hpsearch.search.train_one` for train), print
what it returns. User mistakes end in one line on stderr and a non-zero exit."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, NoReturn

from hpsearch.cli.data import add_data_command
from hpsearch.cli.results import (
    HelpFormatter,
    add_results_commands,
    artifacts_arg,
    non_negative_int,
    positive_int,
    seed_count,
    storage_args,
)
from hpsearch.cli.serve import add_serve_command
from hpsearch.cli.timeout import add_timeout_args, deadline_of
from hpsearch.errors import HpsearchError
from hpsearch.search import stopping
from hpsearch.search.stopping import Terminated

if TYPE_CHECKING:
    from hpsearch.engine.train import EpochMetrics
    from hpsearch.search.run import RunSummary


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
        default=None,
        metavar="SECONDS",
        help="trial heartbeat interval; a trial silent for 3 intervals is failed and retried. "
        "A study keeps the interval of the run that made it (default 10), for every process "
        "on it",
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
        help="override search.pruner: median, percentile (with --set "
        "'search.pruner={name: percentile, percentile: 40}'), successive_halving, hyperband, "
        "none (default: the study file's)",
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
        help="GPUs to use, numbered as this process sees them: under CUDA_VISIBLE_DEVICES=2,3, "
        "0 is physical GPU 2 (default: all visible, or the one train.device: cuda:N names)",
    )
    run.add_argument(
        "--trials-per-gpu",
        type=positive_int,
        default=None,
        metavar="K",
        help="concurrent trials (worker processes) per GPU (default: measured, see "
        "docs/workers-and-gpus.md)",
    )
    add_timeout_args(
        run, "no trial starts after it, and the unstarted trials are taken off the budget"
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
    worker.add_argument(
        "--gpu",
        type=non_negative_int,
        default=None,
        metavar="N",
        help="train on GPU N, numbered as this process sees them (after CUDA_VISIBLE_DEVICES); "
        "default: train.device (auto: GPU 0)",
    )
    add_timeout_args(worker, "this worker starts no trial after it (the budget stays the study's)")
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
    add_data_command(sub)
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
        "--seeds", type=seed_count, default=3, metavar="N", help="new seeds per trial (1-1000)"
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
        "--gpus",
        default=None,
        metavar="0,1,...",
        help="GPUs to use, numbered as this process sees them (default: all visible)",
    )
    confirm.add_argument(
        "--trials-per-gpu",
        type=positive_int,
        default=None,
        metavar="K",
        help="worker processes per GPU (default: 1)",
    )
    add_timeout_args(confirm, "no confirm run starts after it (the same command later resumes)")
    confirm.add_argument("--worker-trials", default=None, help=argparse.SUPPRESS)
    confirm.set_defaults(func=_cmd_confirm)


def _cmd_confirm(args: argparse.Namespace) -> int:
    deadline = deadline_of(args)
    from hpsearch.search.confirm import cmd_confirm

    return cmd_confirm(args, deadline)


def _say(line: str) -> None:
    print(line, flush=True)


def cmd_run(args: argparse.Namespace) -> int:
    deadline = deadline_of(args)  # from now: before the data is read or a GPU probed
    from hpsearch.search.run import RunOptions, run_search

    opts = RunOptions(
        study=args.study,
        trials=args.trials,
        overrides=tuple(args.overrides),
        storage=args.storage,
        study_name=args.study_name,
        sampler=args.sampler,
        pruner=args.pruner,
        heartbeat=args.heartbeat,
        artifacts=args.artifacts,
        workers=args.workers,
        gpus=args.gpus,
        trials_per_gpu=args.trials_per_gpu,
        allow_other_study_file=args.allow_other_study_file,
        command=args.command_line,
        deadline=deadline,
    )
    summary = run_search(opts, _say)
    return _print_summary(summary)


def _print_summary(summary: RunSummary) -> int:
    """Print what the run did; exit code 0 when its share of the budget (or the grid) is done."""
    from hpsearch.results.timing import duration
    from hpsearch.storage.secrets import mask_url
    from hpsearch.storage.urls import storage_url

    for index, code in summary.worker_exits:
        how = f"signal {-code}" if code < 0 else f"exit code {code}"
        print(f"[w{index}] ended with {how}", file=sys.stderr)
    if summary.deadline_reached:
        back = summary.given_back
        print(
            f"deadline reached after {duration(summary.seconds)}: {summary.finished_here} of "
            f"the {summary.trials} trials finished; {back} unstarted "
            f"trial{'' if back == 1 else 's'} given back"
        )
    print(
        f"done: {summary.finished_here} trial{'' if summary.finished_here == 1 else 's'} "
        "finished in this run; the study has "
        f"{summary.finished} finished ({summary.failed} failed, {summary.running} running)"
    )
    best = summary.best
    if best is not None:
        print(
            f"best: val_accuracy {best.val_accuracy:.4f} in trial {best.number}: "
            f"{json.dumps(best.params)}"
        )
    else:
        print("best: no completed trial yet")
    url = summary.url
    storage_flag = "" if url == storage_url(None) else f" --storage {mask_url(url)}"
    if mask_url(url) != url and storage_flag:  # a line with *** in it cannot be pasted
        storage_flag = " --storage URL (the --storage given here; its password is not shown)"
    print(f"browse: hpsearch dashboard --study {summary.study_name}{storage_flag}")
    if not summary.done:
        why = ""
        if summary.worker_exits and summary.given_back:
            n = len(summary.worker_exits)
            why = (
                f" ({n} worker{'' if n == 1 else 's'} failed, see above; "
                f"{summary.given_back} unstarted trial{'' if summary.given_back == 1 else 's'} "
                "given back)"
            )
        print(
            f"hpsearch: error: the budget of {summary.goal} finished trials was not reached{why}",
            file=sys.stderr,
        )
        return 1
    return 0


def _digits(name: str) -> int | None:
    """An environment variable that the launcher sets for its workers, as a number."""
    value = os.environ.get(name, "")
    return int(value) if value.isdigit() else None


def cmd_worker(args: argparse.Namespace) -> int:
    deadline = deadline_of(args)
    from hpsearch.search.run import JoinOptions, join_search

    opts = JoinOptions(
        study=args.study,
        overrides=tuple(args.overrides),
        storage=args.storage,
        study_name=args.study_name,
        heartbeat=args.heartbeat,
        artifacts=args.artifacts,
        wait=args.wait,
        allow_other_study_file=args.allow_other_study_file,
        command=args.command_line,
        worker_id=_digits("HPSEARCH_WORKER_ID"),
        workers=_digits("HPSEARCH_WORKERS") or 1,
        threads=_digits("HPSEARCH_THREADS") or None,
        run_id=os.environ.get("HPSEARCH_RUN_ID"),
        gpu=args.gpu,
        deadline=deadline,
    )
    join_search(opts, _say)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from hpsearch.search.train_one import TrainOptions, train_one

    opts = TrainOptions(
        study=args.study,
        trial=str(args.trial),
        overrides=tuple(args.overrides),
        storage=args.storage,
        study_name=args.study_name,
    )
    trained = train_one(opts, _say, _print_epoch)
    result = trained.result
    print(
        json.dumps(
            {
                "trial": trained.label,
                "val_accuracy": result.val_accuracy,
                "train_images_per_s": round(result.train_images_per_s, 1),
                "epoch_seconds": round(result.epoch_seconds, 3),
                "n_params": result.n_params,
                "params": trained.params,
                "seed": trained.seed,
                "device": str(trained.device),
            }
        )
    )
    return 0


def _print_epoch(m: EpochMetrics) -> None:
    print(
        f"epoch {m.epoch}/{m.epochs}: loss {m.train_loss:.4f} train_acc {m.train_accuracy:.4f} "
        f"val_loss {m.val_loss:.4f} val_acc {m.val_accuracy:.4f} lr {m.lr:.2e} "
        f"({m.train_images_per_s:.0f} img/s, {m.epoch_seconds:.1f}s)",
        flush=True,
    )


class _QuietInterrupt(logging.Filter):
    """Optuna logs a trial stopped by Ctrl-C (or SIGTERM) as two warnings, "Trial N failed with
    parameters: ... KeyboardInterrupt()" with a traceback and "Trial N failed with value None.".
    The user asked for the stop and hpsearch says so in one line, so both are dropped; the
    numbers of the stopped trials are kept for that line. The same two warnings for a trial
    that hpsearch's own one-line error stopped (a full disk under the database, say) are
    dropped too: the error propagates, and main prints it, once, in one line."""

    _FAILED = re.compile(r"Trial (\d+) failed with ")

    def __init__(self) -> None:
        super().__init__()
        self.stopped: list[int] = []
        self.failed: list[int] = []

    def filter(self, record: logging.LogRecord) -> bool:
        m = self._FAILED.match(record.getMessage())
        if m is None:
            return True
        if record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt):
            self.stopped.append(int(m[1]))
            return False
        if record.exc_info and isinstance(record.exc_info[1], HpsearchError):
            self.failed.append(int(m[1]))  # raised on by optimize: main says it in one line
            return False
        # the "failed with value None." line that follows
        return int(m[1]) not in self.stopped and int(m[1]) not in self.failed


_quiet_interrupt = _QuietInterrupt()


def main(argv: Sequence[str] | None = None) -> int:
    stopping.install()
    logging.basicConfig(format="hpsearch: %(levelname)s: %(message)s", level=logging.WARNING)
    words = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(words)
    args.command_line = " ".join(words)  # recorded on each trial that this command runs
    try:
        import optuna

        from hpsearch.storage.optuna_private import OPTIMIZE_LOGGER

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
