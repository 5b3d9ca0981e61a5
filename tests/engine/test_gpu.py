"""The GPU path on a real CUDA device: a training step (bf16 autocast seen inside fit), the
--trials-per-gpu probe, and a trial that runs out of GPU memory. Skipped without a device;
bench/gpu_check.py runs them when one is lent (``pytest -m gpu``)."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from hpsearch.config import load_study, parse_set
from hpsearch.engine.data import DeviceData, load_data
from hpsearch.engine.devices import visible_gpus
from hpsearch.engine.spec import DataConfig
from hpsearch.engine.train import EpochMetrics, fit
from hpsearch.search.gpu_plan import MAX_PER_GPU, largest_memory, probe, trials_per_gpu
from hpsearch.search.launcher import plan_slots
from hpsearch.search.objective import TrialOutOfMemory, make_objective
from hpsearch.space import seed_spec

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(), reason="no CUDA device (torch.cuda.is_available() is False)"
    ),
]

SEED = seed_spec(epochs=2)


@pytest.fixture(scope="module")
def cuda_data(data_root: Path) -> DeviceData:
    return load_data(DataConfig(data_root, 32, 64, 32), torch.device("cuda"))


def test_training_step_on_cuda(cuda_data: DeviceData) -> None:
    """fit() on the GPU: the data and the model live there, channels_last, and fit's own
    training forward passes run under bf16 autocast: a global forward hook records what every
    convolution and linear layer returned while fit() trained (the weights stay fp32)."""
    assert cuda_data.train_images.is_cuda and cuda_data.train_images.dtype == torch.uint8
    seen_dtypes: list[tuple[str, bool, torch.dtype, bool]] = []

    def record(module: torch.nn.Module, args: object, output: object) -> None:
        if isinstance(module, torch.nn.Conv2d | torch.nn.Linear) and isinstance(
            output, torch.Tensor
        ):
            autocast = torch.is_autocast_enabled("cuda")
            seen_dtypes.append((type(module).__name__, module.training, output.dtype, autocast))

    seen: list[EpochMetrics] = []
    hook = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        result = fit(SEED, cuda_data, seen.append, eval_batch_size=64)
    finally:
        hook.remove()
    assert [m.epoch for m in seen] == [1, 2]
    assert all(math.isfinite(m.train_loss) and 0 <= m.val_accuracy <= 1 for m in seen)
    training = [(name, dtype, on) for name, train, dtype, on in seen_dtypes if train]
    assert {name for name, _, _ in training} == {"Conv2d", "Linear"}, seen_dtypes[:5]
    assert all(dtype == torch.bfloat16 and on for _, dtype, on in training), set(training)
    params = list(result.model.parameters())
    assert all(p.is_cuda and p.dtype == torch.float32 for p in params)
    conv = params[0]
    assert conv.dim() == 4 and conv.is_contiguous(memory_format=torch.channels_last)


def test_trials_per_gpu_probe(data_root: Path) -> None:
    """The probe measures the smoke study's largest trial on the first GPU this process sees (an
    entry of an inherited CUDA_VISIBLE_DEVICES, or 0) in a child process; the rule, with the
    memory model's prediction, gives 1..8 workers, and run's slot plan puts that many there."""
    cfg = load_study("smoke", [parse_set(f"data.root={data_root}")])
    _, model = largest_memory(cfg, 2)
    gpu = visible_gpus()[0]
    p = probe(["smoke", f"data.root={data_root}"], gpu)
    assert 0 < p.trial_bytes < p.total_bytes
    assert p.data_bytes > 0 and p.data_bytes % (32 * 32 * 3) == 0  # uint8 images at 32px
    assert p.busy_share is not None, "the profiler saw no GPU kernels"
    assert 0 < p.busy_share <= 1
    k, why = trials_per_gpu(p, model)
    assert 1 <= k <= MAX_PER_GPU and why.startswith(f"{k} trials per GPU")
    slots = plan_slots(None, "0", None, lambda entry: k)
    assert [s.gpu for s in slots] == [gpu] * k


def test_cuda_out_of_memory_fails_the_trial_returns_memory_and_the_next_runs(
    cuda_data: DeviceData,
) -> None:
    """A trial whose first activation (bf16, 4096 channels, one batch) is 40% of the card runs
    out of memory mid-step: it fails with the reason, memory_reserved drops back, the next trial
    runs."""
    total = torch.cuda.get_device_properties(0).total_memory
    rows = math.ceil(0.4 * total / (32 * 32 * 2 * 4096))
    idx = torch.arange(rows, device="cuda") % len(cuda_data.train_labels)
    data = replace(
        cuda_data,
        train_images=cuda_data.train_images[idx],
        train_labels=cuda_data.train_labels[idx],
    )
    sets = [
        "train.epochs=1",
        "search.enqueue_baseline=false",
        *(f"search.space.{k}={v}" for k, v in (("n_blocks", 1), ("kernel_size", 3))),
        *(f"search.space.{k}=false" for k in ("residual", "batch_norm")),
        "search.space.head=gap",
        "search.space.optimizer=adam",
        "search.space.lr=0.001",
        "search.space.channels=[8, 4096]",
        "search.space.dense_units=[16, 32]",
        f"search.space.batch_size=[16, {rows}]",
    ]
    cfg = load_study("smoke", [parse_set(s) for s in sets])
    study = optuna.create_study(direction="maximize")
    small = {"channels_b1": 8, "dense_units": 16, "batch_size": 16}
    for params in (small, {"channels_b1": 4096, "dense_units": 32, "batch_size": rows}, small):
        study.enqueue_trial(params)
    objective = make_objective(cfg, data)
    study.optimize(objective, n_trials=1)
    before = torch.cuda.memory_reserved()
    torch.cuda.reset_peak_memory_stats()
    study.optimize(objective, n_trials=1, catch=(TrialOutOfMemory,))
    peak, after = torch.cuda.max_memory_reserved(), torch.cuda.memory_reserved()
    study.optimize(objective, n_trials=1)
    assert [t.state for t in study.trials] == [
        TrialState.COMPLETE,
        TrialState.FAIL,
        TrialState.COMPLETE,
    ]
    attrs = study.trials[1].user_attrs
    assert attrs["oom"] is True and attrs["fail_reason"].startswith("out of GPU memory: ")
    assert peak > 0.3 * total  # it really filled the card before failing
    assert after <= before + 64 * 2**20
