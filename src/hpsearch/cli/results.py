"""The ``hpsearch`` commands that read a study: dashboard, status, best, trials, export,
predict, evaluate, report. Parsing and printing only; the work is in the modules named below."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna
    import torch

    from hpsearch.storage.checkpoint import Checkpoint


def storage_args(p: argparse.ArgumentParser) -> None:
    """``--storage`` and ``--study-name``, shared by every command that opens a study."""
    p.add_argument(
        "--storage",
        metavar="URL",
        default=None,
        help="database URL (default: $HPSEARCH_STORAGE, else sqlite:///hpsearch.db in the "
        "working directory)",
    )
    p.add_argument(
        "--study-name",
        metavar="NAME",
        default=None,
        help="Optuna study name (default: the --study name or the study file's stem)",
    )


def artifacts_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--artifacts",
        metavar="DIR",
        default=None,
        help="checkpoint (artifact) directory (default: $HPSEARCH_ARTIFACTS, else beside an "
        "SQLite file: hpsearch.db -> hpsearch-artifacts/, else ./hpsearch-artifacts)",
    )


def results_args(p: argparse.ArgumentParser, study_required: bool = True) -> None:
    """What every results command takes: which study, in which storage, with which artifacts."""
    p.add_argument(
        "--study",
        required=study_required,
        default=None,
        metavar="NAME|PATH",
        help="the study: its name, or its study file (the Optuna study is named after the "
        "file's stem)",
    )
    storage_args(p)
    artifacts_arg(p)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` with each option's default where that says something: not after a help text
    that names its default already, and not for a default of None, False or [] (an option
    left unset, a switch, a repeatable option)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        default = action.default
        if "default" in (action.help or "") or default is None or default is False or default == []:
            return action.help
        return super()._get_help_string(action)


def positive_int(text: str) -> int:
    """argparse type of every count flag (--trials, --workers, --top, ...): a whole number of at
    least 1; anything else is a one-line usage error."""
    return _whole_number(text, 1)


def non_negative_int(text: str) -> int:
    """argparse type of a count where 0 means none (--wait): a whole number of at least 0."""
    return _whole_number(text, 0)


def _whole_number(text: str, lowest: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < lowest:
        raise argparse.ArgumentTypeError(f"must be at least {lowest}, got {value}")
    return value


MAX_CONFIRM_SEEDS = 1000  # each is a full training run of every confirmed trial


def seed_count(text: str) -> int:
    """argparse type of confirm's --seeds: 1 to MAX_CONFIRM_SEEDS (3,000,000 once allocated
    1.2 GB of jobs before anything else was checked)."""
    value = _whole_number(text, 1)
    if value > MAX_CONFIRM_SEEDS:
        raise argparse.ArgumentTypeError(
            f"at most {MAX_CONFIRM_SEEDS} (each seed trains every confirmed trial once), "
            f"got {value}"
        )
    return value


def trial_number(text: str) -> int:
    """argparse type: a trial number (0 or more)."""
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a trial number, got {text!r}")
    return int(text)


def _port(text: str, lowest: int = 1) -> int:
    """argparse type: a TCP port (1-65535; ``lowest`` 0 lets the system pick a free one)."""
    if not text.isdigit() or not lowest <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(
            f"expected a port number from {lowest} to 65535, got {text!r}"
        )
    return int(text)


def any_port(text: str) -> int:
    """argparse type: a TCP port, or 0 for any free one."""
    return _port(text, 0)


def add_results_commands(sub: argparse._SubParsersAction[Any]) -> None:
    """The commands that read a study: dashboard, status, best, trials, export, predict,
    evaluate, report."""
    fmt = HelpFormatter

    dash = sub.add_parser(
        "dashboard", help="optuna-dashboard on the study's storage", formatter_class=fmt
    )
    results_args(dash, study_required=False)
    dash.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)"
    )
    dash.add_argument("--port", type=_port, default=8080, help="port to listen on")
    dash.set_defaults(func=cmd_dashboard)

    status = sub.add_parser(
        "status",
        help="trials by state, best trial, trials per hour, time left for the budget",
        formatter_class=fmt,
    )
    results_args(status)
    status.set_defaults(func=cmd_status)

    best = sub.add_parser(
        "best", help="the best trial: value, parameters (YAML), checkpoint", formatter_class=fmt
    )
    results_args(best)
    confirmed_arg(best)
    best.set_defaults(func=cmd_best)

    trials = sub.add_parser(
        "trials",
        help="every trial as CSV: parameters, value, state, durations, user attributes",
        formatter_class=fmt,
    )
    results_args(trials)
    trials.add_argument("--csv", required=True, metavar="FILE", help="output file (- for stdout)")
    trials.set_defaults(func=cmd_trials)

    export = sub.add_parser(
        "export",
        help="the best (or a given) trial's model as TorchScript or ONNX, preprocessing built in",
        formatter_class=fmt,
    )
    results_args(export)
    export.add_argument("--format", required=True, choices=("torchscript", "onnx"))
    export.add_argument("--output", required=True, metavar="FILE", help="file to write")
    _trial_arg(export)
    export.set_defaults(func=cmd_export)

    predict = sub.add_parser(
        "predict", help="label and probability for image files", formatter_class=fmt
    )
    results_args(predict)
    predict.add_argument("images", nargs="+", metavar="IMAGE", help="image files (any size)")
    _trial_arg(predict)
    _device_arg(predict)
    predict.set_defaults(func=cmd_predict)

    evaluate = sub.add_parser(
        "evaluate",
        help="accuracy, per-class accuracy and confusion matrix on an ImageFolder directory",
        formatter_class=fmt,
    )
    results_args(evaluate)
    evaluate.add_argument(
        "--data",
        required=True,
        metavar="DIR",
        help="DIR/<class>/<image>, or a data-set root with DIR/val/<class>/<image>",
    )
    _trial_arg(evaluate)
    _device_arg(evaluate)
    evaluate.set_defaults(func=cmd_evaluate)

    report = sub.add_parser(
        "report", help="PNG plots and a markdown summary of the study", formatter_class=fmt
    )
    results_args(report)
    report.add_argument("--output", required=True, metavar="DIR", help="directory to write")
    report.set_defaults(func=cmd_report)


def _trial_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--trial",
        type=trial_number,
        default=None,
        metavar="N",
        help="a trial number (default: the best completed trial)",
    )
    confirmed_arg(p)


def confirmed_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--confirmed",
        action="store_true",
        help="the winner of hpsearch confirm (the best mean over new seeds) and its checkpoint",
    )


def _device_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")


def open_for(args: argparse.Namespace) -> tuple[optuna.Study, str, Path]:
    """(study, storage URL, artifact directory) for a results command."""
    from hpsearch.results.read import open_existing, study_name
    from hpsearch.storage.urls import artifacts_dir, storage_url

    url = storage_url(args.storage)
    study = open_existing(url, study_name(args.study, args.study_name))
    return study, url, artifacts_dir(url, args.artifacts)


def _checkpoint(args: argparse.Namespace) -> tuple[Checkpoint, str]:
    """The checkpoint of ``--trial`` (default: the best completed trial), or with
    ``--confirmed`` the confirmed winner's; and how to name it in a message."""
    study, _, store = open_for(args)
    _, ckpt, label = chosen(study, store, args)
    return ckpt, label


def chosen(
    study: optuna.Study, store: Path, args: argparse.Namespace
) -> tuple[optuna.trial.FrozenTrial, Checkpoint, str]:
    """The trial ``--trial``/``--confirmed`` names, its checkpoint, and how to name it."""
    from hpsearch.errors import ConfigError
    from hpsearch.results.read import (
        confirmed_checkpoint_path,
        confirmed_trial,
        keep_hint,
        pick_trial,
    )
    from hpsearch.storage.checkpoint import load_checkpoint

    if args.confirmed:
        if args.trial is not None:
            raise ConfigError("--confirmed and --trial: give one of them")
        trial, c = confirmed_trial(study)
        ckpt = load_checkpoint(trial, store, path=confirmed_checkpoint_path(c, store))
        label = (
            f"confirmed trial {ckpt.trial} (val_accuracy {c['val_accuracy_mean']:.4f} ± "
            f"{c['val_accuracy_std']:.4f} over {c['n']} seeds; this model, seed {c['seed']}: "
            f"{ckpt.value:.4f})"
        )
        return trial, ckpt, label
    trial = pick_trial(study, args.trial)
    ckpt = load_checkpoint(trial, store, keep_hint(study, store))
    return trial, ckpt, f"trial {ckpt.trial} (val_accuracy {ckpt.value:.4f})"


def chosen_device(name: str) -> torch.device:
    import torch

    from hpsearch.engine.train import resolve_device
    from hpsearch.errors import ConfigError

    try:
        device = resolve_device(name)
    except RuntimeError:
        raise ConfigError(f"--device: expected cpu, cuda, cuda:N or auto, got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: no CUDA device is available")
    return device


def cmd_dashboard(args: argparse.Namespace) -> int:
    from hpsearch.results.read import open_existing, study_name
    from hpsearch.serve.dashboard import bind, dashboard_url, serve
    from hpsearch.storage import optuna_private
    from hpsearch.storage.secrets import mask_url
    from hpsearch.storage.urls import artifacts_dir, open_storage, storage_url

    url = storage_url(args.storage)
    store = artifacts_dir(url, args.artifacts)
    study_id = None
    if args.study is not None or args.study_name is not None:
        study = open_existing(
            url, study_name(args.study or "", args.study_name), any_objective=True
        )
        study_id = optuna_private.study_id(study)
        storage = optuna_private.storage_of(study)
    else:
        from hpsearch.storage.existing import require_database

        # a server database with no studies yet is served (compose starts the dashboard before
        # the first run), but a mistyped SQLite path is not made into a new file
        require_database(url)
        storage = open_storage(url)
    server = bind(storage, args.host, args.port, store)
    print(
        f"optuna-dashboard for {mask_url(url)} (checkpoints in {store}) at "
        f"{dashboard_url(args.host, args.port, study_id)}; Ctrl-C stops it",
        flush=True,
    )
    serve(server)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from hpsearch.results.read import status_text

    study, url, _ = open_for(args)
    print(status_text(study, url))
    return 0


def cmd_best(args: argparse.Namespace) -> int:
    from hpsearch.results.read import best_text

    study, _, store = open_for(args)
    print(best_text(study, store, confirmed=args.confirmed))
    return 0


def cmd_trials(args: argparse.Namespace) -> int:
    from hpsearch.results.read import write_trials_csv

    study, _, _ = open_for(args)
    rows, cols = write_trials_csv(study, args.csv)
    if args.csv != "-":
        print(f"wrote {rows} trials ({cols} columns) to {args.csv}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    ckpt, label = _checkpoint(args)
    from hpsearch.results.export import export  # torch: once the study and trial are found

    out = Path(args.output).expanduser()
    export(ckpt, args.format, out)
    s = ckpt.image_size
    print(
        f"exported {label} as {args.format} to "
        f"{out}: input float (B, 3, {s}, {s}) RGB in [0, 1], output (B, {len(ckpt.classes)}) "
        f"logits for {', '.join(ckpt.classes)}"
    )
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    ckpt, _ = _checkpoint(args)
    from hpsearch.results.inference import predict  # torch: once the study and trial are found

    for p in predict(ckpt, args.images, chosen_device(args.device)):
        print(f"{p.path}: {p.label} {p.probability:.4f}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    ckpt, label = _checkpoint(args)
    from hpsearch.results.inference import evaluate  # torch: once the study and trial are found

    result = evaluate(ckpt, Path(args.data), chosen_device(args.device))
    where = "" if args.confirmed else " in the search"
    print(f"{label[:-1]}{where}), {ckpt.image_size}px")
    print(result.text())
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from hpsearch.results.report import write_report

    study, _, _ = open_for(args)
    out = Path(args.output).expanduser()
    files = write_report(study, out)
    print(f"wrote {len(files)} files to {out}: {', '.join(f.name for f in files)}")
    return 0
