"""How many trials to run side by side on one GPU: measured, not guessed.

``hpsearch run`` without ``--trials-per-gpu`` probes the study once on the first GPU, in a child
process so that the launcher holds no GPU memory afterwards:

- memory: the study's most memory-hungry trial (largest channels, kernels, dense layer and batch
  the space allows, Adam, batch norm and residuals if the space has them, at the smallest and the
  largest block count) trains two steps; the peak the caching allocator reserved, plus the data set
  each worker holds on the device, plus the CUDA context, is what one worker needs;
- utilisation: the seed-sized trial's steps are profiled; the share of wall time the GPU spends in
  kernels says how idle one worker leaves it (a small CNN at batch 32 keeps an H100 busy only a
  fraction of the time: Python and kernel launches are the limit, so more processes fill the gaps).

The rule: K = min(memory fit, ceil(1 / busy share), 8), and at least 1. ``memory fit`` keeps 10%
of the card free.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass

from hpsearch.config import StudyConfig
from hpsearch.engine.spec import TrialSpec
from hpsearch.errors import HpsearchError
from hpsearch.space import (
    FAMILIES,
    Choice,
    FloatRange,
    IntRange,
    ParamSpec,
    sample_values,
    seed_spec,
)

MAX_PER_GPU = 8
HEADROOM = 0.9  # share of the card's memory the workers may plan to use
OPTIMIZER_STATE = {"adam": 2, "adamw": 2, "rmsprop": 2, "sgd": 1}  # buffers per parameter


@dataclass(frozen=True)
class Probe:
    total_bytes: int  # the card's memory
    trial_bytes: int  # peak reserved by the largest trial's training steps
    data_bytes: int  # the data set one worker holds on the device
    context_bytes: int  # the CUDA context and libraries, outside the caching allocator
    busy_share: float  # share of a seed-sized trial's wall time the GPU spends in kernels


def trials_per_gpu(p: Probe) -> tuple[int, str]:
    """K from a probe, and the one-line reason the launcher prints."""
    per_worker = p.trial_bytes + p.data_bytes + p.context_bytes
    by_memory = max(1, int(HEADROOM * p.total_bytes // max(per_worker, 1)))
    by_busy = max(1, math.ceil(1 / max(p.busy_share, 1e-3)))
    k = max(1, min(by_memory, by_busy, MAX_PER_GPU))
    gib = 2**30
    why = (
        f"{k} trials per GPU: one worker needs {per_worker / gib:.1f} GiB "
        f"(largest trial {p.trial_bytes / gib:.1f}, data {p.data_bytes / gib:.1f}, "
        f"context {p.context_bytes / gib:.1f}) of {p.total_bytes / gib:.0f} GiB, so {by_memory} "
        f"fit; one trial keeps the GPU {p.busy_share:.0%} busy, so {by_busy} fill it"
    )
    return k, why


def _largest(name: str, spec: ParamSpec) -> int | float | str | bool:
    """The value of a searched parameter that needs the most memory."""
    family = name.rsplit("_b", 1)[0] if name not in FAMILIES else name
    if isinstance(spec, IntRange | FloatRange):
        return spec.high
    assert isinstance(spec, Choice)
    options = list(spec.choices)
    if family == "optimizer":
        return max(options, key=lambda o: OPTIMIZER_STATE.get(str(o), 0))
    if family == "head" and "flatten" in options:
        return "flatten"  # the dense layer sees the whole feature map, not one value per channel
    if all(isinstance(o, bool) for o in options):
        return True in options
    if all(isinstance(o, int | float) and not isinstance(o, bool) for o in options):
        return max(options, key=float)
    return options[0]


def largest_specs(cfg: StudyConfig) -> list[TrialSpec]:
    """The most memory-hungry trials of the space: with the fewest and with the most blocks.

    Fewer blocks leave a larger feature map to flatten into the dense layer; more blocks add
    activations; which one is bigger depends on the space, so both are probed.
    """
    from hpsearch.space import to_trial_spec

    specs = []
    n_spec = cfg.search.space.get("n_blocks")
    counts: list[int | None] = [None]
    if isinstance(n_spec, IntRange):
        counts = [n_spec.low, n_spec.high]
    elif isinstance(n_spec, Choice):
        counts = [int(min(n_spec.choices, key=float)), int(max(n_spec.choices, key=float))]
    for n in counts:

        def source(name: str, spec: ParamSpec, n: int | None = n) -> int | float | str | bool:
            if name == "n_blocks" and n is not None:
                return n
            return _largest(name, spec)

        values = sample_values(cfg.search, source)
        specs.append(to_trial_spec(values, cfg, seed=0))
    return specs


def probe_here(cfg: StudyConfig) -> Probe:
    """Measure on this process's first CUDA device (run it in a child process)."""
    import time
    from dataclasses import replace

    import torch

    from hpsearch.engine.data import DeviceData
    from hpsearch.engine.images import list_split
    from hpsearch.engine.train import fit

    dev = torch.device("cuda")
    torch.zeros(1, device=dev)  # create the context before reading free memory
    free0, total = torch.cuda.mem_get_info(dev)
    context = max(0, total - free0 - torch.cuda.memory_reserved(dev))
    size = cfg.data.image_size
    classes, train = list_split(cfg.data.root / "train", cfg.data.max_per_class)
    _, val = list_split(cfg.data.root / "val", cfg.data.val_max_per_class)
    data_bytes = (len(train) + len(val)) * size * size * 3

    def synthetic(n: int) -> DeviceData:
        imgs = torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8, device=dev)
        labels = torch.randint(0, len(classes), (n,), device=dev)
        return DeviceData(imgs, labels, imgs[:64], labels[:64], classes, size, dev)

    peak = 0
    for spec in largest_specs(cfg):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
        fit(replace(spec, epochs=1), synthetic(2 * spec.batch_size), eval_batch_size=64)
        peak = max(peak, torch.cuda.max_memory_reserved(dev))

    seed = seed_spec(1, 0, cfg.train.crop_scale, cfg.train.flip)
    data = synthetic(32 * 60)
    fit(replace(seed, epochs=1), synthetic(32 * 5), eval_batch_size=64)  # warm-up, cudnn autotune
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        fit(seed, data, eval_batch_size=64)
        wall = time.perf_counter() - t0
    kernels = sum(e.self_device_time_total for e in prof.key_averages()) / 1e6
    return Probe(total, peak, data_bytes, context, min(1.0, kernels / max(wall, 1e-9)))


def probe(study_file_args: list[str], gpu: str) -> Probe:
    """Run :func:`probe_here` in a child process pinned to ``gpu``."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": gpu}
    done = subprocess.run(
        [sys.executable, "-m", "hpsearch.search.gpu_plan", *study_file_args],
        env=env,
        capture_output=True,
        text=True,
    )
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise HpsearchError(f"could not measure a trial on GPU {gpu}: {last}")
    return Probe(**json.loads(lines[-1]))


def main(argv: list[str]) -> None:  # child process: argv = [study, overrides as key=value...]
    from dataclasses import asdict

    from hpsearch.config import load_study, parse_set

    cfg = load_study(argv[0], [parse_set(a) for a in argv[1:]])
    print(json.dumps(asdict(probe_here(cfg))))


if __name__ == "__main__":
    main(sys.argv[1:])
