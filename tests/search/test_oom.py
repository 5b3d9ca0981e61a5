"""Running out of memory: what counts as it (the errors CUDA, cuBLAS and cuDNN raise when
neighbours fill a card), and a trial crowded out beside other trials on one GPU, which is trained
again alone before anything is concluded from it. No GPU here: CUDA is simulated with the exact
exception classes and texts torch raises, and the training itself runs on the CPU."""

from __future__ import annotations

import fcntl
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from optuna.trial import TrialState

import hpsearch.search.objective as objective
from hpsearch.config import StudyConfig, load_study, parse_set
from hpsearch.engine.data import DeviceData, load_data
from hpsearch.engine.train import EpochMetrics, FitResult
from hpsearch.errors import HpsearchError
from hpsearch.search.gpu_share import lock_dir, lock_stem
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
    assert t.user_attrs["oom"] is True and t.user_attrs["oom_alone"] is True
    # on a CPU: one worker, no free device memory to tell
    assert t.user_attrs["oom_events"] == [{"sharers": 1, "alone": True, "free_bytes": None}]


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


# --- several workers on one (simulated) GPU ----------------------------------------------------

FREE = 3 * 2**30  # what the simulated card says is free when a trial runs out


@pytest.fixture
def cuda(
    data: DeviceData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[DeviceData, list[str]]:
    """A simulated CUDA device: the data say "cuda", torch.cuda answers as a card would, and
    the training runs on the CPU. The GPU lock lives under ``tmp_path``. Returns the data and
    a log of each fit call ("shared"/"alone": how the GPU lock was held during it) and of each
    torch.cuda.empty_cache."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (FREE, 80 * 2**30))
    log: list[str] = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: log.append("empty_cache"))
    return replace(data, device=torch.device("cuda")), log


def lock_mode(gpu: str) -> str:
    """How other workers hold the GPU's lock now: "alone" (exclusive), "shared" or "free"."""
    fd = os.open(lock_dir() / f"{lock_stem(gpu)}.lock", os.O_RDONLY)
    try:
        for mode, name in ((fcntl.LOCK_SH, "alone"), (fcntl.LOCK_EX, "shared")):
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
            except BlockingIOError:
                return name
            fcntl.flock(fd, fcntl.LOCK_UN)
        return "free"
    finally:
        os.close(fd)


def crowding_fit(
    data: DeviceData, log: list[str], gpu: str | None, out_of_memory: Callable[[int], bool]
) -> Callable[..., FitResult]:
    """``fit`` on the CPU data, noting how the GPU lock was held; call n (from 0) reports a
    first epoch that the retry must replace, then runs out of memory, when
    ``out_of_memory(n)``."""
    real = objective.fit
    calls = 0

    def fit(spec: Any, _: DeviceData, on_epoch: Callable[[EpochMetrics], None], ebs: int) -> Any:
        nonlocal calls
        n, calls = calls, calls + 1
        log.append(lock_mode(gpu) if gpu is not None else "no lock")
        if out_of_memory(n):
            on_epoch(EpochMetrics(1, 2, 0.7, 0.5, 0.7, 0.0001, 0.001, 1.0, 1.0, 100.0))
            raise torch.OutOfMemoryError(ALLOCATOR)
        return real(spec, data, on_epoch, ebs)

    return fit


def test_a_trial_crowded_out_beside_others_is_retried_alone_and_predicts_nothing(
    tmp_path: Path,
    cfg: StudyConfig,
    data: DeviceData,
    cuda: tuple[DeviceData, list[str]],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cuda_data, log = cuda
    monkeypatch.setenv("HPSEARCH_GPU_SHARERS", "2")
    monkeypatch.setenv("HPSEARCH_GPU_ID", "GPU-8f2c1a2b")
    monkeypatch.setattr(objective, "fit", crowding_fit(data, log, "GPU-8f2c1a2b", lambda n: n == 0))
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'k.db'}", direction="maximize")
    obj = make_objective(cfg, cuda_data)
    with caplog.at_level(logging.WARNING, logger="hpsearch"):
        first = one_trial(study, obj)
    assert first.state == TrialState.COMPLETE
    a = first.user_attrs
    assert a["retried_alone"] is True and "oom" not in a and "oom_alone" not in a
    assert a["oom_events"] == [{"sharers": 2, "alone": False, "free_bytes": FREE}]
    assert a["device"] == "cuda:NVIDIA H100 80GB HBM3" and a["epochs_run"] == 2
    # the retry's epochs replaced the crowded-out attempt's
    assert sorted(first.intermediate_values) == [1, 2]
    assert first.intermediate_values[1] != 0.0001
    assert first.value == first.intermediate_values[2]
    # trained holding the GPU shared, then alone; the cache given back each time before the
    # lock was let go
    assert log == ["shared", "empty_cache", "empty_cache", "alone", "empty_cache"]
    assert "trial 0 ran out of GPU memory: CUDA out of memory" in caplog.text
    assert "trains again with the GPU to itself" in caplog.text
    # a trial of the same size is not predicted to run out: it trains, beside the others
    log.clear()
    second = one_trial(study, obj)
    assert second.state == TrialState.COMPLETE
    assert "pruned_reason" not in second.user_attrs and "retried_alone" not in second.user_attrs
    assert log == ["shared", "empty_cache"]


def test_a_trial_that_runs_out_alone_predicts_the_next_one_no_smaller(
    tmp_path: Path,
    cfg: StudyConfig,
    data: DeviceData,
    cuda: tuple[DeviceData, list[str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cuda_data, log = cuda
    monkeypatch.setenv("HPSEARCH_GPU_SHARERS", "2")
    monkeypatch.setenv("HPSEARCH_GPU_ID", "1")
    monkeypatch.setattr(objective, "fit", crowding_fit(data, log, "1", lambda n: True))
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'a.db'}", direction="maximize")
    obj = make_objective(cfg, cuda_data)
    first = one_trial(study, obj)
    assert first.state == TrialState.FAIL
    a = first.user_attrs
    assert a["oom"] is True and a["oom_alone"] is True and a["retried_alone"] is True
    assert a["fail_reason"].startswith("out of GPU memory: CUDA out of memory. Tried to allocate")
    assert a["oom_events"] == [
        {"sharers": 2, "alone": False, "free_bytes": FREE},
        {"sharers": 2, "alone": True, "free_bytes": FREE},
    ]
    assert [x for x in log if x != "empty_cache"] == ["shared", "alone"]
    second = one_trial(study, obj)
    assert second.state == TrialState.PRUNED
    assert second.user_attrs["pruned_reason"].startswith(
        "predicted out of memory: trial 0 ran out of memory"
    )


def test_one_worker_on_a_gpu_takes_no_lock_and_its_out_of_memory_predicts(
    tmp_path: Path,
    cfg: StudyConfig,
    data: DeviceData,
    cuda: tuple[DeviceData, list[str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cuda_data, log = cuda
    monkeypatch.delenv("HPSEARCH_GPU_SHARERS", raising=False)
    monkeypatch.delenv("HPSEARCH_GPU_ID", raising=False)
    monkeypatch.setattr(objective, "fit", crowding_fit(data, log, None, lambda n: n == 0))
    study = optuna.create_study(direction="maximize")
    obj = make_objective(cfg, cuda_data)
    first = one_trial(study, obj)
    assert first.state == TrialState.FAIL and first.user_attrs["oom_alone"] is True
    assert first.user_attrs["oom_events"] == [{"sharers": 1, "alone": True, "free_bytes": FREE}]
    assert "retried_alone" not in first.user_attrs
    assert log == ["no lock", "empty_cache"]  # recovering from the failure only
    assert not (tmp_path / "hpsearch-gpu-locks").exists()
    assert one_trial(study, obj).state == TrialState.PRUNED


def test_out_of_memory_trials_of_older_studies_count_as_alone() -> None:
    """Recorded before oom_alone existed: they predicted then, and still do."""
    from hpsearch.search.objective import predicted_oom

    size = {"device": "cuda:H100", "n_params": 1000, "batch_size": 64, "activations": 10}
    study = optuna.create_study(direction="maximize")
    for attrs in (
        {"oom": True, **size},  # older hpsearch
        {"oom": True, "oom_alone": False, **size},  # crowded out, not retried alone
    ):
        study.add_trial(optuna.trial.create_trial(state=TrialState.FAIL, user_attrs=attrs))
    old, crowded = study.get_trials(states=(TrialState.FAIL,))
    assert predicted_oom([old, crowded], 1000, 64, "cuda:H100", 10) is old
    assert predicted_oom([crowded], 1000, 64, "cuda:H100", 10) is None


def test_the_share_of_a_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CPU is never shared; a GPU is as the launcher says, named by CUDA's UUID when the
    launcher gave K but no name."""
    from types import SimpleNamespace

    from hpsearch.search.gpu_share import GpuShare
    from hpsearch.search.objective import device_share

    env = {"HPSEARCH_GPU_SHARERS": "3", "HPSEARCH_GPU_ID": "GPU-1234"}
    assert device_share(torch.device("cpu"), env) == GpuShare(1, None)
    assert device_share(torch.device("cuda"), env) == GpuShare(3, "GPU-1234")
    assert device_share(torch.device("cuda"), {}) == GpuShare(1, None)
    uuid = "8f2c1a2b-0c3d-4e5f-8a9b-0c1d2e3f4a5b"
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: SimpleNamespace(uuid=uuid))
    assert device_share(torch.device("cuda"), {"HPSEARCH_GPU_SHARERS": "3"}) == GpuShare(
        3, f"GPU-{uuid}"
    )


def test_crowded_out_on_a_gpu_that_cannot_be_named_fails_but_predicts_nothing(
    cfg: StudyConfig,
    data: DeviceData,
    cuda: tuple[DeviceData, list[str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """K > 1 but no lock to take (no HPSEARCH_GPU_ID, and CUDA gives no UUID): no retry, and
    the failure is not taken for the trial's size."""

    def no_properties(device: object) -> None:
        raise RuntimeError("CUDA error: invalid device ordinal")

    cuda_data, log = cuda
    monkeypatch.setenv("HPSEARCH_GPU_SHARERS", "2")
    monkeypatch.delenv("HPSEARCH_GPU_ID", raising=False)
    monkeypatch.setattr(torch.cuda, "get_device_properties", no_properties)
    monkeypatch.setattr(objective, "fit", crowding_fit(data, log, None, lambda n: n == 0))
    study = optuna.create_study(direction="maximize")
    obj = make_objective(cfg, cuda_data)
    first = one_trial(study, obj)
    assert first.state == TrialState.FAIL and first.user_attrs["oom_alone"] is False
    assert first.user_attrs["oom_events"] == [{"sharers": 2, "alone": False, "free_bytes": FREE}]
    assert one_trial(study, obj).state == TrialState.COMPLETE
