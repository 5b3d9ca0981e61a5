"""Training throughput of the seed CNN: the seed's pipeline vs a tuned DataLoader vs the engine.

Runs in one process, one after the other, with the same model, batch size and number of optimizer
steps, and prints images per second with ratios to the seed pipeline (machines are noisy: compare
ratios, not absolute figures). Also prints the engine's cache build time and the memory its
tensors hold, and a no-pipeline bound (training on one fixed batch).

    python bench/throughput.py --data ../shared/data/catdog --image-size 64 --steps 150
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from hpsearch.config import DataConfig
from hpsearch.data import DeviceData, load_data
from hpsearch.model import build_model
from hpsearch.spec import ArchSpec, OptimSpec, TrialSpec
from hpsearch.train import IMAGENET_MEAN, IMAGENET_STD, fit, make_optimizer, resolve_device

SEED_ARCH = ArchSpec((32, 64, 128), (3, 3, 3), "relu", False, False, 0.0, 512)
SEED_OPTIM = OptimSpec("adam", 1e-3, 1e-4, 0.9, 10, 0.9)
BATCH = 32
WARMUP = 5


def loader_rate(root: Path, size: int, steps: int, device: torch.device, workers: int) -> float:
    """Images/s training the seed CNN from an ImageFolder DataLoader with PIL transforms."""
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
    model = build_model(SEED_ARCH, 2, size).to(device).to(memory_format=torch.channels_last)
    opt = make_optimizer(list(model.parameters()), SEED_OPTIM, device)
    amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            yield from dl

    it = batches()
    t0 = 0.0
    for i in range(WARMUP + steps):
        if i == WARMUP:
            _sync(device)
            t0 = time.perf_counter()
        x, y = next(it)
        x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        y = y.to(device, non_blocking=True)
        with amp:
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
    loss.item()
    _sync(device)
    return steps * BATCH / (time.perf_counter() - t0)


def engine_rate(data: DeviceData, steps: int) -> float:
    """Images/s of ``fit`` itself over exactly ``steps`` optimizer steps (after a warm-up)."""
    n = steps * BATCH
    idx = torch.randperm(len(data.train_labels), generator=torch.Generator().manual_seed(0))[:n]
    sub = replace(
        data,
        train_images=data.train_images[idx.to(data.device)],
        train_labels=data.train_labels[idx.to(data.device)],
        val_images=data.val_images[:BATCH],
        val_labels=data.val_labels[:BATCH],
    )
    spec = TrialSpec(SEED_ARCH, SEED_OPTIM, BATCH, 1, 0, (0.35, 1.0), True)
    warm = replace(
        sub,
        train_images=sub.train_images[: WARMUP * BATCH],
        train_labels=sub.train_labels[: WARMUP * BATCH],
    )
    fit(spec, warm)  # like the other pipelines, time no warm-up steps
    return fit(spec, sub).train_images_per_s


def bound_rate(size: int, steps: int, device: torch.device) -> float:
    """Images/s training on one fixed batch: no input pipeline at all."""
    model = build_model(SEED_ARCH, 2, size).to(device).to(memory_format=torch.channels_last)
    opt = make_optimizer(list(model.parameters()), SEED_OPTIM, device)
    x = torch.randn(BATCH, 3, size, size, device=device).contiguous(
        memory_format=torch.channels_last
    )
    y = torch.randint(0, 2, (BATCH,), device=device)
    amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    for i in range(WARMUP + steps):
        if i == WARMUP:
            _sync(device)
            t0 = time.perf_counter()
        with amp:
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
    _sync(device)
    return steps * BATCH / (time.perf_counter() - t0)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--data", type=Path, default=Path(os.environ.get("HPSEARCH_DATA", "data/catdog"))
    )
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=150, help="timed optimizer steps per pipeline")
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="DataLoader workers for the tuned pipeline",
    )
    args = p.parse_args()
    device = resolve_device(args.device)
    root = args.data.resolve()
    print(
        f"seed CNN, batch {BATCH}, {args.image_size}px, {args.steps} steps, device {device}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )

    with tempfile.TemporaryDirectory() as cache:
        os.environ["HPSEARCH_CACHE"] = cache
        t = time.perf_counter()
        data = load_data(DataConfig(root, args.image_size, None, None), device)
        build = time.perf_counter() - t
        held = sum(
            t.numel() * t.element_size()
            for t in (data.train_images, data.train_labels, data.val_images, data.val_labels)
        )
        print(
            f"engine cache: {len(data.train_labels) + len(data.val_labels)} images decoded and "
            f"loaded in {build:.1f}s, holding {held / 2**20:.0f} MiB on {device}"
        )
        rows = [
            (
                "seed pipeline (DataLoader, 0 workers)",
                loader_rate(root, args.image_size, args.steps, device, 0),
            ),
            (
                f"tuned DataLoader ({args.workers} workers)",
                loader_rate(root, args.image_size, args.steps, device, args.workers),
            ),
            ("hpsearch engine", engine_rate(data, args.steps)),
            (
                "bound: one fixed batch, no pipeline",
                bound_rate(args.image_size, args.steps, device),
            ),
        ]
    base = rows[0][1]
    tuned = rows[1][1]
    print(f"{'pipeline':42s} {'img/s':>9s} {'x seed':>8s} {'x tuned':>8s}")
    for name, rate in rows:
        print(f"{name:42s} {rate:9.1f} {rate / base:8.2f} {rate / tuned:8.2f}")


if __name__ == "__main__":
    main()
