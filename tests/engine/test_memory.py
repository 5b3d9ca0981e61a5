"""The memory model of a trial (meta device) against what the CPU's allocator really holds."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from dataclasses import replace
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from hpsearch.engine.augment import random_resized_crop
from hpsearch.engine.infer import Normalizer
from hpsearch.engine.memory import ROUNDING, LiveBytes, _step_peak, trial_memory
from hpsearch.engine.model import build_model, param_count
from hpsearch.engine.spec import ArchSpec, OptimSpec, TrialSpec

GIB = 2**30


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            [
                "arena",
                "ordblks",
                "smblks",
                "hblks",
                "hblkhd",
                "usmblks",
                "fsmblks",
                "uordblks",
                "fordblks",
                "keepcost",
            ]
        )
    ]


def _glibc_in_use() -> Any:
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    if libc is None or not hasattr(libc, "mallinfo2"):
        pytest.skip("needs glibc's mallinfo2 to read the allocator")
    libc.mallinfo2.restype = _MallInfo2

    def in_use() -> int:
        info = libc.mallinfo2()
        return int(info.uordblks + info.hblkhd)  # heap blocks in use + mmapped blocks

    return in_use


class _AllocatorPeak(TorchDispatchMode):
    """The most bytes glibc's allocator held beyond ``base``, read after every operator."""

    def __init__(self, in_use: Any) -> None:
        super().__init__()
        self.in_use = in_use
        self.base = in_use()
        self.peak = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        self.peak = max(self.peak, self.in_use() - self.base)
        return out


def spec(channels: tuple[int, ...], kernel: int, batch: int, **arch: Any) -> TrialSpec:
    a = ArchSpec(
        channels=channels,
        kernel_sizes=(kernel,) * len(channels),
        activation=arch.get("activation", "relu"),
        batch_norm=arch.get("batch_norm", True),
        residual=arch.get("residual", True),
        dropout=0.2,
        dense_units=arch.get("dense_units", 128),
        head=arch.get("head", "flatten"),
    )
    o = OptimSpec(
        optimizer="adam",
        lr=1e-3,
        weight_decay=0.0,
        momentum=0.9,
        lr_decay_step=5,
        lr_decay_gamma=0.5,
    )
    return TrialSpec(
        arch=a, optim=o, batch_size=batch, epochs=1, seed=0, crop_scale=(0.35, 1.0), flip=True
    )


def measured_step(s: TrialSpec, size: int, train: bool) -> int:
    """The allocator's peak over one real fp32 step of ``fit`` on the CPU, in the steady state
    (the second step): normalise and crop the uint8 batch, forward, loss, backward (train), or
    a forward in inference mode."""
    in_use = _glibc_in_use()
    batch = s.batch_size
    model = build_model(s.arch, 2, size).to(memory_format=torch.channels_last).train(train)
    images = torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8)
    labels = torch.randint(0, 2, (batch,))
    norm = Normalizer(torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)

    def step() -> None:
        x = norm(images)
        if train:
            x = random_resized_crop(x, s.crop_scale, s.flip, gen)
        x = x.contiguous(memory_format=torch.channels_last)
        if train:
            F.cross_entropy(model(x), labels).backward()
        else:
            with torch.inference_mode():
                model(x)

    step()  # the first step also makes oneDNN's and OpenMP's one-off buffers: not per trial
    model.zero_grad(set_to_none=True)
    gc.collect()
    meter = _AllocatorPeak(in_use)
    with meter:
        step()
    return meter.peak


CASES = [
    spec((64, 128, 256), 5, 32),
    spec((32, 64), 7, 64, residual=False, activation="gelu"),
    spec((128, 128, 128, 128), 3, 16, batch_norm=False, head="gap", dense_units=512),
]


@pytest.mark.slow
@pytest.mark.parametrize("s", CASES, ids=lambda s: "x".join(map(str, s.arch.channels)))
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_the_meta_step_matches_the_cpu_allocator(s: TrialSpec, train: bool) -> None:
    size = 64
    real = measured_step(s, size, train)
    # the step's peak with the model's margin for rounding and the libraries' own buffers
    # (oneDNN's here, cuDNN's workspace on a GPU)
    predicted = _step_peak(s, 2, size, torch.float32, s.batch_size, train) * (1 + ROUNDING)
    # Not below what the allocator held, within the noise of reading it between operators (an
    # underestimate packs too many trials on a GPU), and not far above (that wastes the card).
    assert 0.9 * real <= predicted <= 1.5 * real, (predicted / 2**20, real / 2**20)


def test_live_bytes_counts_views_once_and_frees() -> None:
    counter = LiveBytes()
    with counter:
        a = torch.empty(1024, dtype=torch.float32, device="meta")
        b = a.view(32, 32)  # no new storage
        c = a * 2
        del c
        d = b + 1
    assert counter.peak == 2 * 4096  # a and c, then a and d: c was freed before d was made
    assert counter.live == 2 * 4096
    del a, b, d


def test_cuda_model_counts_bf16_autocast_and_int64_pool_indices() -> None:
    s = spec((64, 128), 3, 32)
    cuda = trial_memory(s, 2, 64, 200, "cuda")
    cpu = trial_memory(s, 2, 64, 200, "cpu")
    params = param_count(s.arch, 2, 64)
    assert cuda.weights == cpu.weights == 4 * params
    assert cuda.optimizer == 2 * 4 * params  # Adam: two fp32 buffers per parameter
    assert cuda.cast_weights == 2 * params and cpu.cast_weights == 0
    # bf16 halves the float activations; the max-pool's int64 indices stay 8 bytes, so the
    # training step is more than half of the fp32 one
    assert 0.5 * cpu.train_step < cuda.train_step < cpu.train_step
    assert cuda.total == (
        cuda.weights
        + cuda.gradients
        + cuda.optimizer
        + cuda.cast_weights
        + cuda.train_step
        + cuda.evaluation
        + cuda.workspace
    )


def test_evaluation_grows_with_the_eval_batch() -> None:
    s = spec((64, 128), 3, 32)
    small = trial_memory(s, 2, 64, 100, "cuda").evaluation
    large = trial_memory(s, 2, 64, 400, "cuda").evaluation
    assert 3.5 < large / small < 4.5
    bigger_batch = trial_memory(replace(s, batch_size=128), 2, 64, 100, "cuda").train_step
    assert bigger_batch > 3 * trial_memory(s, 2, 64, 100, "cuda").train_step


def test_the_largest_catdog_trial_at_full_size() -> None:
    # the figures docs/workers-and-gpus.md gives: 256 channels, 7x7 kernels at 128 px, batch
    # 128, evaluation at batch 500 (the issue measured 4.6 GiB of training activations)
    s = spec((256, 256, 256), 7, 128, dense_units=1024)
    m = trial_memory(s, 2, 128, 500, "cuda")
    assert 4.4 * GIB < m.train_step < 4.8 * GIB
    assert 12 * GIB < m.evaluation < 13.5 * GIB
