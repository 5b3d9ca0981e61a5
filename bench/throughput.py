"""Training throughput of the seed CNN: the seed's pipeline vs a tuned DataLoader vs the engine.

Every row trains the seed baseline CNN (GUIDE section 1) with batch 32 for the same number of
optimizer steps, after the same warm-up, each in a fresh Python process so that no row inherits
another's threads, caches or allocator state:

- seed pipeline: the seed's code as written: ImageFolder + PIL RandomResizedCrop/flip/ToTensor/
  Normalize, a DataLoader with no workers, the model in the default (NCHW) memory format;
- tuned DataLoader: the same with workers = cores, pinned memory, persistent workers;
- hpsearch engine: ``hpsearch.engine.train.fit`` itself (decoded cache, batched augmentation,
  channels_last, host tuning, one sync per epoch);
- tuned DataLoader + engine's model settings: the tuned loader feeding the model as the engine
  runs it (channels_last, fused optimizer, host tuning), to separate the input pipeline's share
  of the speed-up from the model's;
- bounds: the same model trained on one fixed in-memory batch, no input pipeline at all, as the
  seed wrote it and as the engine runs it.

Rows run interleaved for ``--rounds`` rounds and the table shows each row's median. It prints
images per second with ratios to the seed pipeline and to the tuned DataLoader (machines are
noisy: compare ratios within one run), the engine's cache build time and the memory its tensors
hold.

    python bench/throughput.py --data ../shared/data/catdog --image-size 64 --steps 150
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from hpsearch.engine.data import load_data
from hpsearch.engine.infer import IMAGENET_MEAN, IMAGENET_STD
from hpsearch.engine.model import build_model
from hpsearch.engine.runtime import tune_host
from hpsearch.engine.spec import DataConfig
from hpsearch.engine.train import fit, make_optimizer, resolve_device
from hpsearch.space import seed_spec

SEED = seed_spec(epochs=1)
SEED_ARCH, SEED_OPTIM = SEED.arch, SEED.optim
BATCH = SEED.batch_size
WARMUP = 5
ROWS = {
    "seed": "seed pipeline as written (0 workers)",
    "tuned": "tuned DataLoader ({workers} workers)",
    "tuned_fast": "tuned DataLoader + engine's model settings",
    "engine": "hpsearch engine",
    "bound_nchw": "bound: fixed batch, NCHW",
    "bound_engine": "bound: fixed batch, engine's model settings",
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _train_steps(
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    size: int,
    steps: int,
    device: torch.device,
    engine_setup: bool,
) -> float:
    """Images/s of ``steps`` optimizer steps of the seed CNN after ``WARMUP`` untimed ones.

    Without ``engine_setup`` the model runs as the seed wrote it (NCHW, ``torch.optim.Adam``
    defaults); with it, as the engine runs it (channels_last, fused optimizer, host tuning).
    """
    fmt = torch.channels_last if engine_setup else torch.contiguous_format
    model = build_model(SEED_ARCH, 2, size).to(device).to(memory_format=fmt)
    opt: torch.optim.Optimizer
    if engine_setup:
        tune_host()
        opt = make_optimizer(list(model.parameters()), SEED_OPTIM, device)
    else:
        opt = torch.optim.Adam(
            model.parameters(), lr=SEED_OPTIM.lr, weight_decay=SEED_OPTIM.weight_decay
        )
    amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    t0 = 0.0
    for i in range(WARMUP + steps):
        if i == WARMUP:
            _sync(device)
            t0 = time.perf_counter()
        x, y = next(batches)
        x = x.to(device, non_blocking=True).contiguous(memory_format=fmt)
        y = y.to(device, non_blocking=True)
        with amp:
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
    loss.item()
    _sync(device)
    return steps * BATCH / (time.perf_counter() - t0)


def loader_rate(
    root: Path, size: int, steps: int, device: torch.device, workers: int, engine_setup: bool
) -> float:
    """The seed's pipeline: ImageFolder + PIL transforms + DataLoader."""
    tf = transforms.Compose(
        [
            transforms.RandomResizedCrop(size, scale=(0.35, 1.0)),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    ds = datasets.ImageFolder(str(root / "train"), transform=tf)
    tuned = workers > 0
    dl = DataLoader(
        ds,
        batch_size=BATCH,
        shuffle=True,
        num_workers=workers,
        pin_memory=tuned and device.type == "cuda",
        persistent_workers=tuned,
        drop_last=True,
    )

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            yield from dl

    return _train_steps(batches(), size, steps, device, engine_setup)


def bound_rate(size: int, steps: int, device: torch.device, engine_setup: bool) -> float:
    """Training on one fixed batch: what the model alone costs."""
    x = torch.randn(BATCH, 3, size, size, device=device)
    y = torch.randint(0, 2, (BATCH,), device=device)

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            yield x, y

    return _train_steps(batches(), size, steps, device, engine_setup)


def engine_rate(root: Path, size: int, steps: int, device: torch.device) -> dict[str, Any]:
    """``fit`` itself over exactly ``steps`` optimizer steps (after a warm-up), cold cache."""
    with tempfile.TemporaryDirectory() as cache:
        os.environ["HPSEARCH_CACHE"] = cache
        t = time.perf_counter()
        data = load_data(DataConfig(root, size, None, None), device)
        build = time.perf_counter() - t
    held = sum(
        t.numel() * t.element_size()
        for t in (data.train_images, data.train_labels, data.val_images, data.val_labels)
    )
    n = steps * BATCH
    gen = torch.Generator().manual_seed(0)
    m = len(data.train_labels)  # a small data set (the GPU kit's subset) repeats in memory
    idx = torch.cat([torch.randperm(m, generator=gen) for _ in range(-(-n // m))])[:n].to(device)
    sub = replace(
        data,
        train_images=data.train_images[idx],
        train_labels=data.train_labels[idx],
        val_images=data.val_images[:BATCH],
        val_labels=data.val_labels[:BATCH],
    )
    spec = SEED
    warm = replace(
        sub,
        train_images=sub.train_images[: WARMUP * BATCH],
        train_labels=sub.train_labels[: WARMUP * BATCH],
    )
    fit(spec, warm)  # like the other rows, time no warm-up steps
    rate = fit(spec, sub).train_images_per_s
    return {
        "rate": rate,
        "build_s": build,
        "images": len(data.train_labels) + len(data.val_labels),
        "held_mib": held / 2**20,
        "peak_cuda_mib": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else 0,
    }


def run_row(row: str, args: argparse.Namespace) -> dict[str, Any]:
    device = resolve_device(args.device)
    root = args.data.resolve()
    if row == "seed":
        return {"rate": loader_rate(root, args.image_size, args.steps, device, 0, False)}
    if row in ("tuned", "tuned_fast"):
        fast = row == "tuned_fast"
        return {"rate": loader_rate(root, args.image_size, args.steps, device, args.workers, fast)}
    if row == "engine":
        return engine_rate(root, args.image_size, args.steps, device)
    return {"rate": bound_rate(args.image_size, args.steps, device, row == "bound_engine")}


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--data", type=Path, default=Path(os.environ.get("HPSEARCH_DATA", "data/catdog"))
    )
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=150, help="timed optimizer steps per row")
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="DataLoader workers for the tuned pipeline (default: cores)",
    )
    p.add_argument(
        "--rows", default=",".join(ROWS), help="comma-separated subset of " + str(list(ROWS))
    )
    p.add_argument("--rounds", type=int, default=3, help="interleaved repeats; medians shown")
    p.add_argument("--row", help=argparse.SUPPRESS)  # internal: run one row, print JSON
    args = p.parse_args()
    if args.row:
        print(json.dumps(run_row(args.row, args)))
        return

    device = resolve_device(args.device)
    print(
        f"seed CNN, batch {BATCH}, {args.image_size}px, {args.steps} steps after {WARMUP} warm-up, "
        f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    rows = args.rows.split(",")
    for row in rows:
        if row not in ROWS:
            sys.exit(f"unknown row {row!r}; choose from {', '.join(ROWS)}")
    runs: dict[str, list[dict[str, Any]]] = {row: [] for row in rows}
    for r in range(args.rounds):  # interleaved, so that slow drifts of the machine hit every row
        for row in rows:
            cmd = [sys.executable, __file__, *sys.argv[1:], "--row", row]
            out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
            runs[row].append(json.loads(out.strip().splitlines()[-1]))
            rate = runs[row][-1]["rate"]
            print(f"  round {r + 1}: {ROWS[row].format(workers=args.workers)}: {rate:.1f} img/s")
    results = {
        row: {**rs[0], "rate": statistics.median(x["rate"] for x in rs)} for row, rs in runs.items()
    }

    if "engine" in results:
        e = results["engine"]
        held = f"holding {e['held_mib']:.0f} MiB on {device}"
        if device.type == "cuda":
            held += f" (peak {e['peak_cuda_mib']:.0f} MiB allocated while training)"
        print(f"engine cache: {e['images']} images decoded in {e['build_s']:.1f}s, {held}")
    base = results.get("seed", {}).get("rate")
    tuned = results.get("tuned", {}).get("rate")
    print(f"{'pipeline':42s} {'img/s':>9s} {'x seed':>8s} {'x tuned':>8s}")
    for row, r in results.items():
        rate = r["rate"]
        xs = f"{rate / base:8.2f}" if base else f"{'-':>8s}"
        xt = f"{rate / tuned:8.2f}" if tuned else f"{'-':>8s}"
        print(f"{ROWS[row].format(workers=args.workers):42s} {rate:9.1f} {xs} {xt}")
    if "engine" in results and "bound_engine" in results:
        share = results["engine"]["rate"] / results["bound_engine"]["rate"]
        print(f"engine reaches {share:.0%} of its no-pipeline bound")


if __name__ == "__main__":
    main()
