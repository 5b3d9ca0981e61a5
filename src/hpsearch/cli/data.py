"""``hpsearch data prepare``: parsing and printing; the work is :mod:`hpsearch.engine.prepare`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from hpsearch.cli.results import HelpFormatter, non_negative_int
from hpsearch.config import DEFAULT_DATA_ROOT


def _share(text: str) -> float:
    """argparse type: a share strictly between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a share between 0 and 1, got {text!r}")
    return value


def add_data_command(sub: argparse._SubParsersAction[Any]) -> None:
    data = sub.add_parser(
        "data",
        help="lay out photos for a study: hpsearch data prepare train.zip --out data/catdog",
        formatter_class=HelpFormatter,
    )
    verbs = data.add_subparsers(
        dest="data_command", metavar="{prepare}", required=True, parser_class=type(data)
    )
    p = verbs.add_parser(
        "prepare",
        help="Kaggle's Dogs-vs-Cats train.zip (or a folder of cat.N.jpg/dog.N.jpg) as the "
        "train/val ImageFolder split a study reads",
        description="Lay out Kaggle's Dogs-vs-Cats photos (train.zip: train/cat.0.jpg ... "
        "train/dog.12499.jpg; or a folder of such files) as OUT/train/{cat,dog} and "
        "OUT/val/{cat,dog}, the same share of each class to val, by a seeded shuffle.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("source", type=Path, metavar="ZIP|DIR", help="train.zip, or a folder")
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="DIR",
        help="where to lay them out: a new or empty folder (the catdog study reads data/catdog)",
    )
    p.add_argument(
        "--val", type=_share, default=0.2, metavar="SHARE", help="share of each class to val"
    )
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of the split's shuffle")
    p.set_defaults(func=cmd_prepare)


def cmd_prepare(args: argparse.Namespace) -> int:
    from hpsearch.engine.prepare import prepare

    done = prepare(args.source, args.out, val=args.val, seed=args.seed)
    counts = {(done.train[c], done.val[c]) for c in done.train}
    if len(counts) == 1:
        (n_train, n_val) = counts.pop()
        each = f"{n_train} train + {n_val} val photos of each of {', '.join(done.train)}"
    else:
        each = ", ".join(f"{c}: {done.train[c]} train + {done.val[c]} val" for c in done.train)
    print(f"{done.out}: {each} ({args.val * 100:g}% of each class to val, seed {args.seed})")
    if done.out.resolve() == Path(DEFAULT_DATA_ROOT).resolve():
        print("hpsearch run --study catdog reads it there (the study's data.root)")
    else:
        print(f"use it with HPSEARCH_DATA={done.out} or --set data.root={done.out}")
    return 0
