"""Running out of memory: what counts as it (the errors CUDA, cuBLAS and cuDNN raise when
neighbours fill a card). No GPU here: CUDA is simulated with the exact exception classes and texts
torch raises, and the training itself runs on the CPU."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from optuna.trial import TrialState

import hpsearch.search.objective as objective
from hpsearch.config import StudyConfig, load_study, parse_set
from hpsearch.engine.data import DeviceData, load_data
from hpsearch.errors import HpsearchError
from hpsearch.search.objective import (
    TrialOutOfMemory,
    is_out_of_memory,
    make_objective,
    out_of_memory_where,
)

# What torch 2.14 raises, as it words it (the caching allocator's message, C10_CUDA_CHECK's
# "CUDA error: <cudaGetErrorString>" and its hint lines, TORCH_CUDABLAS_CHECK, cuDNN's checks).
ALLOCATOR = (
    "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB of "
    "which 1.06 GiB is free. Including non-PyTorch memory, this process has 40.12 GiB memory in "
    "use. Of the allocated memory 37.50 GiB is allocated by PyTorch, and 1.20 GiB is reserved by "
    "PyTorch but unallocated. If reserved but unallocated memory is large try setting "
    "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation."
)
HINTS = (
    "\nCUDA kernel errors might be asynchronously reported at some other API call, so the "
    "stacktrace below might be incorrect.\nFor debugging consider passing CUDA_LAUNCH_BLOCKING=1"
    "\nCompile with `TORCH_USE_CUDA_DSA` to enable device-side assertions.\n"
)

MEMORY: list[tuple[BaseException, str | None]] = [
    (torch.OutOfMemoryError(ALLOCATOR), "GPU"),
    (torch.AcceleratorError("CUDA error: out of memory" + HINTS), "GPU"),  # torch >= 2.8
    (RuntimeError("CUDA error: out of memory" + HINTS), "GPU"),  # the same before torch 2.8
    (torch.AcceleratorError("CUDA driver error: out of memory"), "GPU"),
    (
        RuntimeError(
            "CUDA ran out of memory outside PyTorch's allocator. If this workload uses many "
            "dynamic shapes, cuDNN may need additional device memory"
        ),
        "GPU",
    ),
    (
        RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"),
        "GPU",
    ),
    (
        RuntimeError(
            "CUDA error: CUBLAS_STATUS_NOT_INITIALIZED when calling `cublasCreate(handle)`"
        ),
        "GPU",
    ),
    (RuntimeError("cuDNN error: CUDNN_STATUS_INTERNAL_ERROR"), "GPU"),
    (RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"), "GPU"),  # cuDNN 8
    (
        RuntimeError(
            "cuDNN Frontend error: cudnnFinalize Descriptor Failed cudnn_status: "
            "CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED"
        ),
        "GPU",
    ),
    (
        RuntimeError("CUDA error: CUSOLVER_STATUS_ALLOC_FAILED when calling `cusolverDnCreate`"),
        "GPU",
    ),
    (
        RuntimeError(
            "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate "
            "memory: you tried to allocate 275000000000 bytes. Error code 12"
        ),
        "host",
    ),
    (MemoryError(), "host"),
]
NOT_MEMORY: list[BaseException] = [
    torch.AcceleratorError("CUDA error: an illegal memory access was encountered" + HINTS),
    torch.AcceleratorError("CUDA error: device-side assert triggered" + HINTS),
    RuntimeError("cuDNN error: CUDNN_STATUS_INTERNAL_ERROR_COMPILATION_FAILED"),
    RuntimeError("cuDNN error: CUDNN_STATUS_NOT_SUPPORTED"),
    RuntimeError("CUDA error: CUBLAS_STATUS_EXECUTION_FAILED when calling `cublasSgemm( handle)`"),
    RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x8 and 9x2)"),
    ValueError("out of memory"),  # not an error torch raises
]


@pytest.mark.parametrize("error, where", MEMORY, ids=lambda x: repr(x)[:60])
def test_what_runs_out_of_memory_looks_like(error: BaseException, where: str) -> None:
    assert out_of_memory_where(error) == where
    assert is_out_of_memory(error)


@pytest.mark.parametrize("error", NOT_MEMORY, ids=lambda x: repr(x)[:60])
def test_other_errors_are_not_out_of_memory(error: BaseException) -> None:
    assert out_of_memory_where(error) is None
    assert not is_out_of_memory(error)


# --- every trial the same size: the sampler has nothing to choose ------------------------------

FIXED = {
    "n_blocks": 2,
    "channels": 8,
    "kernel_size": 3,
    "activation": "relu",
    "batch_norm": "false",
    "residual": "false",
    "dropout": 0.0,
    "dense_units": 32,
    "optimizer": "adam",
    "lr": 0.001,
    "weight_decay": 0.0,
    "lr_decay_step": 10,
    "lr_decay_gamma": 1.0,
    "batch_size": 16,
}


@pytest.fixture(scope="module")
def cfg() -> StudyConfig:
    return load_study(
        "smoke",
        [parse_set(f"search.space.{k}={v}") for k, v in FIXED.items()]
        + [
            parse_set("search.enqueue_baseline=false"),
            parse_set("data.max_per_class=40"),
            parse_set("data.val_max_per_class=20"),
            parse_set("train.epochs=2"),
        ],
    )


@pytest.fixture(scope="module")
def data(cfg: StudyConfig) -> DeviceData:
    return load_data(cfg.data, torch.device("cpu"))


def one_trial(study: optuna.Study, obj: Callable[[optuna.Trial], Any]) -> optuna.trial.FrozenTrial:
    study.optimize(obj, n_trials=1, catch=(TrialOutOfMemory,))
    return study.trials[-1]


def test_a_cuda_error_that_says_out_of_memory_fails_the_trial_not_the_worker(
    cfg: StudyConfig, data: DeviceData, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fit(*args: object) -> None:
        raise torch.AcceleratorError("CUDA error: out of memory" + HINTS)

    monkeypatch.setattr(objective, "fit", fit)
    study = optuna.create_study(direction="maximize")
    t = one_trial(study, make_objective(cfg, data))
    assert t.state == TrialState.FAIL
    assert t.user_attrs["fail_reason"] == "out of GPU memory: CUDA error: out of memory"
    assert t.user_attrs["oom"] is True


def test_confirm_stops_in_one_line_on_a_cuda_out_of_memory(
    tmp_path: Path, cfg: StudyConfig, data: DeviceData, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hpsearch.search.confirm_runs as confirm_runs
    from hpsearch.search.confirm_jobs import Job

    def fit(*args: object) -> None:
        raise RuntimeError("cuDNN error: CUDNN_STATUS_INTERNAL_ERROR")

    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'c.db'}", direction="maximize")
    study.optimize(make_objective(cfg, data), n_trials=1)
    monkeypatch.setattr(confirm_runs, "fit", fit)
    job = Job(study.trials[0], cfg, 0, 7)
    worker = confirm_runs.Worker(study, [job], tmp_path, None, lambda line: None)
    with pytest.raises(HpsearchError) as info:
        worker._run(job, 0)
    assert str(info.value) == (
        "trial 0 run 1 (seed 7) ran out of memory: cuDNN error: CUDNN_STATUS_INTERNAL_ERROR"
    )
