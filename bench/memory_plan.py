"""The memory plan of a study's largest trials, predicted without a GPU, at K workers per card.

For each of the space's most memory-hungry trials (``hpsearch.search.gpu_plan.largest_specs``)
it prints what :mod:`hpsearch.engine.memory` predicts one worker needs on a CUDA device (bf16
autocast), by part, then, for K = 1, 2, 4, ..., what K such workers hold together on a
``--card-gib`` card and whether that fits in the 90% of the card the launcher plans with. The
data set each worker holds on the device and a CUDA context (``CONTEXT_BYTES``) are included.

    python bench/memory_plan.py --study catdog --card-gib 80
    python bench/memory_plan.py --study catdog --card-gib 80 --set train.eval_batch_size=100
"""

from __future__ import annotations

import argparse
import time

from hpsearch.config import load_study, parse_set
from hpsearch.engine.images import list_split
from hpsearch.engine.memory import trial_memory
from hpsearch.search.gpu_plan import CONTEXT_BYTES, HEADROOM, largest_specs

GIB = 2**30


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--study", default="catdog", help="study name or file (default: catdog)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--card-gib", type=float, default=80.0, help="the card's memory (GiB)")
    ap.add_argument("--ks", default="1,2,4,8", help="workers per card to show (default 1,2,4,8)")
    ap.add_argument("--classes", type=int, default=None, help="classes (default: the data's)")
    args = ap.parse_args(argv)
    cfg = load_study(args.study, [parse_set(o) for o in args.overrides])
    size = cfg.data.image_size
    if args.classes is not None:
        n_classes, n_images = args.classes, 0
    else:
        classes, train = list_split(cfg.data.root / "train", cfg.data.max_per_class)
        _, val = list_split(cfg.data.root / "val", cfg.data.val_max_per_class)
        n_classes, n_images = len(classes), len(train) + len(val)
    data = n_images * size * size * 3
    card = args.card_gib * GIB
    ks = [int(k) for k in args.ks.split(",")]
    print(
        f"study {cfg.name}: {size} px, eval_batch_size {cfg.train.eval_batch_size}, "
        f"{n_classes} classes, data on the device {data / GIB:.2f} GiB, context "
        f"{CONTEXT_BYTES / GIB:.2f} GiB; card {args.card_gib:g} GiB, plan within "
        f"{HEADROOM:.0%} = {HEADROOM * card / GIB:.1f} GiB"
    )
    for spec in largest_specs(cfg):
        t0 = time.perf_counter()
        m = trial_memory(spec, n_classes, size, cfg.train.eval_batch_size, "cuda")
        took = time.perf_counter() - t0
        a = spec.arch
        print(
            f"\ntrial: {a.n_blocks} blocks of {max(a.channels)} channels, {max(a.kernel_sizes)}x"
            f"{max(a.kernel_sizes)} kernels, head {a.head}, dense {a.dense_units}, batch "
            f"{spec.batch_size}, {spec.optim.optimizer} (predicted in {took:.2f} s)"
        )
        for part in (
            "weights",
            "gradients",
            "optimizer",
            "cast_weights",
            "train_step",
            "evaluation",
            "workspace",
        ):
            print(f"  {part:<13} {getattr(m, part) / GIB:7.2f} GiB")
        per_worker = m.total + data + CONTEXT_BYTES
        print(f"  {'one worker':<13} {per_worker / GIB:7.2f} GiB (trial {m.total / GIB:.2f})")
        fit = int(HEADROOM * card // per_worker)
        for k in ks:
            need = k * per_worker
            verdict = "fits" if need <= HEADROOM * card else "does not fit"
            print(f"  K={k:<2} {need / GIB:7.1f} GiB of {args.card_gib:g}: {verdict}")
        print(f"  memory fit: {fit} workers per card")


if __name__ == "__main__":
    main()
