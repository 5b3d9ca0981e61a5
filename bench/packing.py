"""Several trials on one device: aggregate training images/s with K worker processes side by side.

Each of K processes loads the decoded cache onto the device, waits at a common start line, then
trains with ``hpsearch.engine.train.fit`` for the same number of steps. The aggregate rate is all
images trained divided by the time from the first start to the last finish. It runs the seed CNN
and a large CNN from the catdog space, and prints each process's peak device memory, which is what
the ``--trials-per-gpu`` rule (hpsearch.search.gpu_plan) budgets for.

    python bench/packing.py --data ../shared/data/catdog --image-size 128 --ks 1,2,4,8 --steps 200
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import queue
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from hpsearch.engine.spec import ArchSpec
from hpsearch.space import seed_spec

MODELS = {
    "seed": seed_spec(epochs=1),
    "large": replace(
        seed_spec(epochs=1),
        arch=ArchSpec(
            channels=(64, 128, 256, 256),
            kernel_sizes=(5, 5, 3, 3),
            activation="gelu",
            batch_norm=True,
            residual=True,
            dropout=0.3,
            dense_units=1024,
        ),
        optim=replace(seed_spec().optim, optimizer="adamw"),
        batch_size=128,
    ),
}


def worker(args: Any, model: str, k: int, start: Any, out: Any) -> None:
    import torch

    from hpsearch.engine.data import load_data
    from hpsearch.engine.spec import DataConfig
    from hpsearch.engine.train import fit, resolve_device

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // k))
    device = resolve_device(args.device)
    data = load_data(DataConfig(args.data.resolve(), args.image_size, None, None), device)
    spec = MODELS[model]
    n = args.steps * spec.batch_size
    idx = torch.arange(n, device=device) % len(data.train_labels)  # a small set repeats
    sub = replace(
        data,
        train_images=data.train_images[idx],
        train_labels=data.train_labels[idx],
        val_images=data.val_images[:64],
        val_labels=data.val_labels[:64],
    )
    warm = replace(
        sub,
        train_images=sub.train_images[: 3 * spec.batch_size],
        train_labels=sub.train_labels[: 3 * spec.batch_size],
    )
    fit(spec, warm)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start.wait()
    t0 = time.time()
    result = fit(spec, sub)
    t1 = time.time()
    peak = torch.cuda.max_memory_reserved() if device.type == "cuda" else 0
    images = (n // spec.batch_size) * spec.batch_size
    out.put((t0, t1, images, result.train_images_per_s, peak))


def run(args: Any, model: str, k: int, timeout: float | None = None) -> dict[str, float]:
    """K processes of ``model`` side by side. A process that dies (out of memory, a crash) or a
    run past ``timeout`` seconds raises RuntimeError saying which, after stopping the others,
    instead of waiting for a result that never comes."""
    ctx = mp.get_context("spawn")
    start = ctx.Barrier(k)
    out = ctx.Queue()
    procs = [ctx.Process(target=worker, args=(args, model, k, start, out)) for _ in range(k)]
    for p in procs:
        p.start()
    rows: list[tuple[float, float, int, float, int]] = []
    until = None if timeout is None else time.monotonic() + timeout
    try:
        while len(rows) < k:
            try:
                rows.append(out.get(timeout=1.0))
                continue
            except queue.Empty:
                pass
            dead = [(i, p.exitcode) for i, p in enumerate(procs) if p.exitcode not in (None, 0)]
            if dead:
                i, code = dead[0]
                raise RuntimeError(
                    f"K={k}: process {i} of {k} exited with code {code} before its result"
                )
            if until is not None and time.monotonic() > until:
                raise RuntimeError(
                    f"K={k}: no result from {k - len(rows)} process(es) in {timeout:.0f} s"
                )
    finally:
        for p in procs:
            if len(rows) < k and p.is_alive():
                p.kill()
            p.join()
    span = max(r[1] for r in rows) - min(r[0] for r in rows)
    return {
        "aggregate": sum(r[2] for r in rows) / span,
        "per_process": sum(r[3] for r in rows) / k,
        "peak_mib": max(r[4] for r in rows) / 2**20,
    }


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--data", type=Path, default=Path(os.environ.get("HPSEARCH_DATA", "data/catdog"))
    )
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--ks", default="1,2,4,8")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--models", default="seed,large")
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    print(
        f"{'model':6s} {'K':>3s} {'aggregate img/s':>16s} {'x K=1':>6s} {'per process':>12s} "
        f"{'peak MiB':>9s}"
    )
    for model in args.models.split(","):
        base = 0.0
        for k in (int(x) for x in args.ks.split(",")):
            r = run(args, model, k)
            base = base or r["aggregate"]
            print(
                f"{model:6s} {k:3d} {r['aggregate']:16.1f} {r['aggregate'] / base:6.2f} "
                f"{r['per_process']:12.1f} {r['peak_mib']:9.0f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
