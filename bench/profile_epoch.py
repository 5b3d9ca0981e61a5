"""Where an epoch's time goes: torch.profiler over the engine's training steps for the seed CNN.

Prints the operators by total self time, grouped into the model's own compute (convolutions,
matmuls, pooling, activations, their backward passes, the optimizer) and everything else (indexing,
normalisation, augmentation, copies, synchronisation), so that input-pipeline overhead is one
figure.

    python bench/profile_epoch.py --data ../shared/data/catdog --image-size 64 --steps 60
"""

from __future__ import annotations

import argparse
import os
import tempfile
from dataclasses import replace
from pathlib import Path

from torch.profiler import ProfilerActivity, profile

from hpsearch.engine.data import load_data
from hpsearch.engine.spec import DataConfig
from hpsearch.engine.train import fit, resolve_device
from hpsearch.space import seed_spec

SEED = seed_spec(epochs=1)
# Operators that belong to the input pipeline rather than to the model's forward/backward/step.
PIPELINE = (
    "aten::index",
    "aten::grid_sampler",
    "aten::affine_grid",
    "aten::addcmul",
    "aten::permute",
    "aten::_to_copy",
    "aten::copy_",
    "aten::rand",
    "aten::randperm",
    "aten::item",
    "aten::_local_scalar_dense",
    "aten::contiguous",
    "aten::clone",
    "aten::sqrt",
    "aten::exp",
    "aten::clamp",
    "aten::where",
    "aten::zeros",
    "aten::select",
    "aten::slice",
)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument(
        "--data", type=Path, default=Path(os.environ.get("HPSEARCH_DATA", "data/catdog"))
    )
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--device", default="auto")
    p.add_argument("--top", type=int, default=20)
    args = p.parse_args()
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as cache:
        os.environ.setdefault("HPSEARCH_CACHE", cache)
        data = load_data(DataConfig(args.data.resolve(), args.image_size, None, None), device)
    n = args.steps * SEED.batch_size
    sub = replace(
        data,
        train_images=data.train_images[:n],
        train_labels=data.train_labels[:n],
        val_images=data.val_images[: SEED.batch_size],
        val_labels=data.val_labels[: SEED.batch_size],
    )
    fit(
        SEED, replace(sub, train_images=sub.train_images[:160], train_labels=sub.train_labels[:160])
    )
    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        fit(SEED, sub)
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=sort, row_limit=args.top))
    events = prof.key_averages()
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    total = sum(getattr(e, attr) for e in events)
    pipe = sum(getattr(e, attr) for e in events if e.key in PIPELINE)
    print(
        f"{args.steps} steps on {device}: input pipeline and glue {pipe / 1e3:.1f} ms of "
        f"{total / 1e3:.1f} ms self time ({pipe / max(total, 1):.1%}); the rest is the model's "
        "forward, backward and optimizer step"
    )


if __name__ == "__main__":
    main()
