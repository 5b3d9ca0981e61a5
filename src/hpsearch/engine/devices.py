"""Which GPUs a process may use, and which device a training process trains on.

Placement follows one rule: GPUs are numbered as *this* process sees them. On a shared machine a
scheduler (Slurm, Kubernetes, a colleague's ``export``) often sets ``CUDA_VISIBLE_DEVICES`` to
the GPUs it allocated, e.g. ``2,3`` or ``GPU-8f2c...,GPU-1a7e...``; CUDA then numbers them 0 and
1. :func:`visible_gpus` returns those entries in that order, so ``--gpus 1`` means the second
GPU this process sees and the worker placed there gets the entry itself (``3``, or its UUID) as
its own ``CUDA_VISIBLE_DEVICES``: never a GPU outside the allocation.

A worker the launcher placed sees exactly one GPU (``HPSEARCH_GPU_ID`` is set): it trains on
``cuda`` whatever ``train.device`` says (``cuda:1`` chose the GPU for the launcher, not for the
worker). A process started by hand trains on ``train.device``; ``cuda:N`` (or ``worker --gpu
N``) is GPU N of those it sees, made the current device so that nothing lands on GPU 0.
"""

from __future__ import annotations

import os
import re

import torch

from hpsearch.errors import ConfigError

GPU_ID_ENV = "HPSEARCH_GPU_ID"  # set by the launcher: the GPU a worker was placed on
GPU_SHARERS_ENV = "HPSEARCH_GPU_SHARERS"  # set by the launcher: the workers placed on that GPU
_CUDA_N = re.compile(r"^cuda:(\d+)$")


def visible_gpus() -> list[str]:
    """The GPUs this process sees, in CUDA's numbering, each as an entry that a child's
    ``CUDA_VISIBLE_DEVICES`` accepts: the inherited ``CUDA_VISIBLE_DEVICES`` entries (ordinals
    or ``GPU-``/``MIG-`` UUIDs), or ``0 .. n-1`` when it is unset."""
    count = torch.cuda.device_count()
    inherited = os.environ.get("CUDA_VISIBLE_DEVICES")
    if inherited is None:
        return [str(i) for i in range(count)]
    entries = [e.strip() for e in inherited.split(",") if e.strip()]
    return entries[:count]  # CUDA ignores the entries after an invalid one


def describe_visible(gpus: list[str]) -> str:
    """``2 GPUs (CUDA_VISIBLE_DEVICES=2,3)``, for messages."""
    inherited = os.environ.get("CUDA_VISIBLE_DEVICES")
    where = f" (CUDA_VISIBLE_DEVICES={inherited})" if inherited is not None else ""
    return f"{len(gpus)} GPU{'s' if len(gpus) != 1 else ''}{where}"


def gpu_index(text: str, what: str, gpus: list[str]) -> int:
    """``text`` as the index of a GPU this process sees, or a ConfigError naming ``what``."""
    if not text.isdigit() or int(text) >= len(gpus):
        numbered = f", numbered 0-{len(gpus) - 1}" if gpus else ""
        raise ConfigError(
            f"{what}: {text!r} names no GPU this process sees: it sees "
            f"{describe_visible(gpus)}{numbered}"
        )
    return int(text)


def pinned() -> bool:
    """Whether the launcher placed this process on one GPU."""
    return bool(os.environ.get(GPU_ID_ENV))


def training_device(name: str, gpu: int | None = None) -> torch.device:
    """The device this process trains on, for ``train.device`` ``name`` (``auto``, ``cpu``,
    ``cuda``, ``cuda:N``) and a ``worker --gpu`` index ``gpu``. A GPU that is not there is a
    ConfigError, said in one line."""
    if name == "cpu":
        if gpu is not None:
            raise ConfigError(f"--gpu {gpu}: the study trains on the CPU (train.device: cpu)")
        return torch.device("cpu")
    gpus = visible_gpus()
    if not gpus:
        if name == "auto" and gpu is None:
            return torch.device("cpu")
        asked = f"--gpu {gpu}" if gpu is not None else f"train.device: {name}"
        raise ConfigError(f"{asked} requested but no CUDA device is available")
    if pinned():
        return torch.device("cuda", 0)  # the one GPU the launcher gave this worker
    m = _CUDA_N.match(name)
    index = gpu if gpu is not None else int(m.group(1)) if m else 0
    gpu_index(str(index), "--gpu" if gpu is not None else "train.device", gpus)
    torch.cuda.set_device(index)  # the context and every default-device call go there
    return torch.device("cuda", index)
