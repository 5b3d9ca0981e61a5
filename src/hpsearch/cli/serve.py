"""``hpsearch serve``: parsing and start-up; the server itself is ``hpsearch.serve.app``."""

from __future__ import annotations

import argparse
from typing import Any

from hpsearch.cli.results import (
    HelpFormatter,
    any_port,
    chosen,
    chosen_device,
    confirmed_arg,
    open_for,
    positive_int,
    results_args,
    trial_number,
)


def _best_or_number(text: str) -> int | None:
    """argparse type: ``best`` (None) or a trial number."""
    return None if text == "best" else trial_number(text)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number above 0, got {text!r}")
    return value


MAX_WAIT_MS = 10_000.0  # a batch's first request waiting longer for company is a hang


def _wait_ms(text: str) -> float:
    """argparse type of --max-wait-ms: a number of milliseconds from 0 to MAX_WAIT_MS (not
    inf, which would keep a request waiting for ever, nor nan)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number of milliseconds, got {text!r}"
        ) from None
    if not 0 <= value <= MAX_WAIT_MS:  # false for nan too
        raise argparse.ArgumentTypeError(
            f"expected milliseconds from 0 to {MAX_WAIT_MS:.0f}, got {text!r}"
        )
    return value


def add_serve_command(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a trial's model over HTTP: POST /predict, GET /model, GET /health, a page at /",
        formatter_class=HelpFormatter,
    )
    results_args(p)
    p.add_argument(
        "--trial",
        type=_best_or_number,
        default="best",  # argparse converts it: None, the best completed trial
        metavar="best|N",
        help="the trial whose checkpoint answers: the best completed one (within the study's "
        "deployment budget, if it has one), or its number",
    )
    confirmed_arg(p)
    p.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)"
    )
    p.add_argument(
        "--port", type=any_port, default=8000, help="port to listen on (0: any free one)"
    )
    p.add_argument(
        "--max-upload-mb",
        type=_positive_float,
        default=10.0,
        metavar="N",
        help="largest request body accepted, in MiB (larger: 413)",
    )
    p.add_argument(
        "--max-batch",
        type=positive_int,
        default=32,
        metavar="N",
        help="most images per forward pass; concurrent requests are batched up to it (1: off)",
    )
    p.add_argument(
        "--max-wait-ms",
        type=_wait_ms,
        default=5.0,
        metavar="MS",
        help="longest a batch's first request waits for requests arriving at the same time "
        f"(0 to {MAX_WAIT_MS:.0f})",
    )
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (CUDA if any)")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    from hpsearch.storage.secrets import mask_url
    from hpsearch.storage.state import CONFIRMED_ATTR, study_attr

    study, url, store = open_for(args)
    trial, ckpt, _ = chosen(study, store, args)
    confirmed = study_attr(study, CONFIRMED_ATTR, dict) if args.confirmed else None
    # the server (torch, FastAPI): once the study and the checkpoint are found
    from hpsearch.serve.app import Limits, Model, create_app, listen, model_info, run
    from hpsearch.serve.dashboard import dashboard_url

    model = Model(ckpt, chosen_device(args.device))
    limits = Limits(
        max_upload_bytes=int(args.max_upload_mb * 2**20),
        max_batch=args.max_batch,
        max_wait_s=args.max_wait_ms / 1000,
    )
    info = model_info(trial, model, mask_url(url), confirmed)
    app = create_app(model, info, limits)
    sock = listen(args.host, args.port)
    port = sock.getsockname()[1]
    base = dashboard_url(args.host, port).removesuffix("/dashboard")
    run_of = info["checkpoint"].get("confirm_run")
    which = f"confirm run {run_of['run']}, seed {run_of['seed']}, " if run_of else ""
    print(
        f"serving trial {ckpt.trial} of study {ckpt.study!r} ({which}val_accuracy "
        f"{ckpt.value:.4f}, {ckpt.image_size}px, {', '.join(ckpt.classes)}) on {model.device} "
        f"at {base}/ "
        f"(max batch {limits.max_batch}, max wait {args.max_wait_ms:g} ms); Ctrl-C stops it",
        flush=True,
    )
    run(app, sock)
    print("stopped", flush=True)
    return 0
