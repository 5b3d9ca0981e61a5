"""How many trials to run side by side on one GPU: predicted, then measured.

``hpsearch run`` without ``--trials-per-gpu`` decides K, the workers placed on each GPU:

- memory, predicted: :mod:`hpsearch.engine.memory` runs the study's most memory-hungry trials
  (the largest channels, kernels, dense layer and batch the space allows, Adam, batch norm and
  residuals if the space has them, at the fewest and the most blocks) on the ``meta`` device: a
  training step at the trial's batch and an evaluation pass at the study's
  ``train.eval_batch_size``, both of which a worker's caching allocator keeps reserved, plus the
  weights, gradients, optimizer state and cuDNN's workspace. No GPU is needed for this part.
- memory, measured: a child process on the first GPU (so that the launcher holds no GPU memory
  afterwards) trains those trials for two steps and evaluates them at ``eval_batch_size``; the
  peak the allocator reserved is compared with the prediction and the larger is planned for.
  The data set each worker holds on the device and the CUDA context are added.
- utilisation: the seed-sized trial's steady-state training steps are timed with CUDA events
  (after a warm-up, without the profiler), and the GPU's kernel time per step is read from a
  profiled window of the same steps; their ratio says how busy one worker keeps the GPU (a small
  CNN at batch 32 is launch-bound: more processes fill the gaps). If the profiler sees no
  kernels, K follows memory alone and the launcher says so.

The rule: K = min(memory fit, ceil(1 / busy share), 8), and at least 1. ``memory fit`` keeps 10%
of the card free.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING

from hpsearch.config import StudyConfig
from hpsearch.engine.spec import OPTIMIZER_STATE, TrialSpec
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

if TYPE_CHECKING:
    from hpsearch.engine.data import DeviceData
    from hpsearch.engine.memory import TrialMemory

MAX_PER_GPU = 8
HEADROOM = 0.9  # share of the card's memory the workers may plan to use
PROBE_TIMEOUT_S = 300  # the child that measures on the GPU
CONTEXT_BYTES = 600 * 2**20  # a CUDA context with cuDNN and cuBLAS loaded, when not measured
GIB = 2**30


@dataclass(frozen=True)
class Probe:
    """What the child measured on the GPU."""

    total_bytes: int  # the card's memory
    trial_bytes: int  # peak reserved by the largest trial: training steps, then evaluation
    data_bytes: int  # the data set one worker holds on the device
    context_bytes: int  # the CUDA context and libraries, outside the caching allocator
    busy_share: float | None  # share of steady-state step time the GPU spends in kernels;
    # None when the profiler saw no kernels


def trials_per_gpu(p: Probe, model: TrialMemory | None = None) -> tuple[int, str]:
    """K from a probe and the memory model of the largest trial, and the one-line reason the
    launcher prints."""
    trial = max(p.trial_bytes, model.total if model is not None else 0)
    per_worker = trial + p.data_bytes + p.context_bytes
    by_memory = max(1, int(HEADROOM * p.total_bytes // max(per_worker, 1)))
    by_busy = (
        MAX_PER_GPU if p.busy_share is None else max(1, math.ceil(1 / max(p.busy_share, 1e-3)))
    )
    k = max(1, min(by_memory, by_busy, MAX_PER_GPU))
    predicted = f"predicted {model.describe()}, " if model is not None else ""
    why = (
        f"{k} trials per GPU: one worker needs {per_worker / GIB:.1f} GiB (largest trial "
        f"{predicted}measured {p.trial_bytes / GIB:.1f}; data {p.data_bytes / GIB:.1f}; "
        f"context {p.context_bytes / GIB:.1f}) of {p.total_bytes / GIB:.0f} GiB, so {by_memory} "
        f"fit; "
    )
    if p.busy_share is None:
        why += "the profiler saw no GPU kernels, so K follows memory alone"
    else:
        why += f"one trial keeps the GPU {p.busy_share:.0%} busy, so {by_busy} fill it"
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


def largest_memory(
    cfg: StudyConfig, n_classes: int, device_type: str = "cuda"
) -> tuple[TrialSpec, TrialMemory]:
    """The largest trial of the space by predicted memory (:mod:`hpsearch.engine.memory`), and
    what it needs."""
    from hpsearch.engine.memory import trial_memory

    best: tuple[TrialSpec, TrialMemory] | None = None
    for spec in largest_specs(cfg):
        m = trial_memory(
            spec, n_classes, cfg.data.image_size, cfg.train.eval_batch_size, device_type
        )
        if best is None or m.total > best[1].total:
            best = (spec, m)
    assert best is not None  # largest_specs returns at least one
    return best


def busy_share(kernel_seconds: float, window_seconds: float) -> float | None:
    """The share of a window of steps the GPU spent in kernels; None when no kernel was seen
    (a profiler that records nothing: K then follows memory alone, on purpose)."""
    if kernel_seconds <= 0 or window_seconds <= 0:
        return None
    return min(1.0, kernel_seconds / window_seconds)


def step_loop(spec: TrialSpec, data: DeviceData) -> Callable[[], None]:
    """One training step of ``spec`` on a fixed batch of ``data``, the step ``fit`` runs
    (:class:`hpsearch.engine.step.TrainStep`), for timing steady-state steps."""
    import torch

    from hpsearch.engine.augment import crop_thetas
    from hpsearch.engine.model import build_model
    from hpsearch.engine.step import TrainStep
    from hpsearch.engine.train import make_optimizer

    dev = data.device
    model = build_model(spec.arch, len(data.classes), data.image_size)
    model = model.to(dev).to(memory_format=torch.channels_last).train()
    opt = make_optimizer(list(model.parameters()), spec.optim, dev)
    step = TrainStep(model, opt, data)
    gen = torch.Generator(device=dev)
    gen.manual_seed(spec.seed)
    bs = min(spec.batch_size, len(data.train_labels))
    idx = torch.arange(bs, device=dev)
    augment = spec.crop_scale != (1.0, 1.0) or spec.flip
    theta = crop_thetas(bs, spec.crop_scale, spec.flip, gen, dev) if augment else None
    lr = float(opt.param_groups[0]["lr"])
    return lambda: step(idx, theta, lr)


def measure_busy_share(step: Callable[[], None], warmup: int = 20, steps: int = 60) -> float | None:
    """Run ``step`` ``warmup`` times (cuDNN's autotuning, the allocator's first blocks), then
    time ``steps`` steady-state steps with CUDA events, without the profiler (which slows the
    host), and profile another ``steps`` for the GPU's kernel time."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    start = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
    end = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
    start.record()
    for _ in range(steps):
        step()
    end.record()
    end.synchronize()
    window = start.elapsed_time(end) / 1000
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    kernels = sum(e.self_device_time_total for e in prof.key_averages()) / 1e6
    return busy_share(kernels, window)


def probe_here(cfg: StudyConfig) -> Probe:
    """Measure on this process's first CUDA device (run it in a child process)."""
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
    eval_bs = cfg.train.eval_batch_size

    def synthetic(n: int, n_val: int) -> DeviceData:
        imgs = torch.randint(0, 256, (n + n_val, size, size, 3), dtype=torch.uint8, device=dev)
        labels = torch.randint(0, len(classes), (n + n_val,), device=dev)
        return DeviceData(imgs[:n], labels[:n], imgs[n:], labels[n:], classes, size, dev)

    peak = 0
    for spec in largest_specs(cfg):  # two training steps, then evaluation at eval_batch_size
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
        fit(
            replace(spec, epochs=1),
            synthetic(2 * spec.batch_size, eval_bs),
            eval_batch_size=eval_bs,
        )
        peak = max(peak, torch.cuda.max_memory_reserved(dev))
    torch.cuda.empty_cache()
    seed = seed_spec(1, 0, cfg.train.crop_scale, cfg.train.flip)
    share = measure_busy_share(step_loop(seed, synthetic(seed.batch_size, 0)))
    return Probe(total, peak, data_bytes, context, share)


def probe(study_file_args: list[str], gpu: str, timeout: float = PROBE_TIMEOUT_S) -> Probe:
    """Run :func:`probe_here` in a child process that sees only ``gpu`` (an entry of the
    parent's ``CUDA_VISIBLE_DEVICES``: an ordinal or a ``GPU-...`` UUID)."""
    # the allocator setting the launcher gives its workers (unless set already): the probe
    # measures under the conditions it plans for
    env = {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True", **os.environ}
    env["CUDA_VISIBLE_DEVICES"] = gpu
    try:
        done = subprocess.run(
            [sys.executable, "-m", "hpsearch.search.gpu_plan", *study_file_args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        raise HpsearchError(f"measuring a trial on GPU {gpu} took over {timeout:.0f} s") from None
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise HpsearchError(f"could not measure a trial on GPU {gpu}: {last}")
    try:
        found = json.loads(lines[-1])
        names = {f.name for f in fields(Probe)}
        if not isinstance(found, dict) or set(found) != names:
            raise ValueError(f"expected the fields {sorted(names)}")
        return Probe(**found)
    except ValueError as e:  # json.JSONDecodeError is a ValueError
        raise HpsearchError(
            f"could not read the measurement from GPU {gpu}: {lines[-1][:80]!r} ({e})"
        ) from None


def main(argv: list[str]) -> None:  # child process: argv = [study, overrides as key=value...]
    from hpsearch.config import load_study, parse_set

    cfg = load_study(argv[0], [parse_set(a) for a in argv[1:]])
    print(json.dumps(asdict(probe_here(cfg))))


if __name__ == "__main__":
    main(sys.argv[1:])
