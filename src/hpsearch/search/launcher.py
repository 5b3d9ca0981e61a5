"""``hpsearch run --workers N``: start worker processes on this machine and relay their output.

Each worker is ``hpsearch worker`` in its own process (and process session), pinned to one GPU
with ``CUDA_VISIBLE_DEVICES`` (an entry of the launcher's own list, so an allocation a scheduler
made is respected; ``HPSEARCH_GPU_ID`` and ``HPSEARCH_GPU_SHARERS`` tell it which GPU and how
many workers share it) or, without GPUs, given its share of the CPU cores. The storage URL
travels in the environment, never on a command line that ``ps`` would show.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from hpsearch.errors import ConfigError

STOP_GRACE_SECONDS = 10


@dataclass(frozen=True)
class Slot:
    index: int
    gpu: str | None  # this worker's CUDA_VISIBLE_DEVICES: an entry of the parent's; None: CPU
    threads: int  # torch intra-op threads
    label: str = ""  # the GPU's number as this process sees it (what --gpus names)


def plan_slots(
    workers: int | None,
    gpus: str | None,
    per_gpu: int | None,
    auto_per_gpu: Callable[[str], int] | None = None,
    device: str = "auto",
) -> list[Slot]:
    """Where each worker runs.

    GPUs are numbered as this process sees them (:mod:`hpsearch.engine.devices`): under an
    inherited ``CUDA_VISIBLE_DEVICES=2,3``, ``--gpus 1`` is physical GPU 3 and its workers get
    ``CUDA_VISIBLE_DEVICES=3``. With GPUs (``--gpus``, default all visible, or the one
    ``train.device: cuda:N`` names): ``per_gpu`` workers on each, or ``workers`` spread
    round-robin. Without either, ``auto_per_gpu(first GPU's entry)`` decides (default 1; the CLI
    passes the rule of :mod:`hpsearch.search.gpu_plan`). Without GPUs, or when the study trains
    on the CPU (``device`` ``cpu``): ``workers`` processes sharing the cores.
    """
    from hpsearch.engine.devices import gpu_index, visible_gpus

    if workers is not None and workers < 1:
        raise ConfigError(f"--workers: must be at least 1, got {workers}")
    if per_gpu is not None and per_gpu < 1:
        raise ConfigError(f"--trials-per-gpu: must be at least 1, got {per_gpu}")
    cores = os.cpu_count() or 1
    if device == "cpu":
        if gpus is not None or per_gpu is not None:
            flag = "--gpus" if gpus is not None else "--trials-per-gpu"
            raise ConfigError(f"{flag}: the study trains on the CPU (train.device: cpu)")
        n = workers or 1
        return [Slot(i, None, max(1, cores // n)) for i in range(n)]
    visible = visible_gpus()
    named = device.removeprefix("cuda:") if device.startswith("cuda:") else None
    if device.startswith("cuda") and not visible:
        raise ConfigError(f"train.device: {device} requested but no CUDA device is available")
    if not visible and (gpus is not None or per_gpu is not None):
        flag = "--gpus" if gpus is not None else "--trials-per-gpu"
        raise ConfigError(f"{flag}: CUDA sees no GPU here; use --workers N for CPU workers")
    if named is not None:
        gpu_index(named, "train.device", visible)
        if gpus is not None and [g.strip() for g in gpus.split(",")] != [named]:
            raise ConfigError(
                f"--gpus {gpus} and train.device: {device} disagree; drop one of them "
                "(train.device: cuda places the workers on --gpus)"
            )
        gpus = named
    if gpus is not None:
        parts = [g.strip() for g in gpus.split(",") if g.strip()]
        if not parts:
            raise ConfigError(f"--gpus: {gpus!r} names no GPU")
        indices = [gpu_index(g, "--gpus", visible) for g in parts]
        twice = sorted({i for i in indices if indices.count(i) > 1})
        if twice:
            raise ConfigError(f"--gpus: GPU {twice[0]} is named twice (use --trials-per-gpu)")
    else:
        indices = list(range(len(visible)))
    if indices:
        if workers is None and per_gpu is None:
            per_gpu = auto_per_gpu(visible[indices[0]]) if auto_per_gpu is not None else 1
        n = workers or (per_gpu or 1) * len(indices)
        threads = max(1, cores // n)
        order = [indices[i % len(indices)] for i in range(n)]
        return [Slot(i, visible[g], threads, str(g)) for i, g in enumerate(order)]
    n = workers or 1
    return [Slot(i, None, max(1, cores // n)) for i in range(n)]


def launch(
    slots: Sequence[Slot],
    worker_args: Sequence[str],
    storage_url: str,
    command: str = "worker",
    env: dict[str, str] | None = None,
) -> list[int]:
    """Run one ``hpsearch <command>`` (default ``worker``) per slot, with ``env`` added to its
    environment, until all exit; returns their exit codes.

    Ctrl-C (or SIGTERM) here is forwarded once to every worker as SIGINT: each marks its running
    trial failed and exits; any still alive after STOP_GRACE_SECONDS is killed.
    """
    out_lock = threading.Lock()
    procs: list[subprocess.Popen[str]] = []
    relays: list[threading.Thread] = []
    sharers = Counter(slot.gpu for slot in slots)
    for slot in slots:
        child_env = worker_env(slot, sharers[slot.gpu], len(slots), storage_url, env)
        p = subprocess.Popen(
            [sys.executable, "-m", "hpsearch.cli", command, *worker_args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=child_env,
            start_new_session=True,  # Ctrl-C reaches the launcher only; it forwards it once
        )
        procs.append(p)
        where = f"cpu, {slot.threads} threads"
        if slot.gpu is not None:
            physical = f" (CUDA_VISIBLE_DEVICES={slot.gpu})" if slot.gpu != slot.label else ""
            where = f"GPU {slot.label}{physical}, {sharers[slot.gpu]} on it"
        _say(out_lock, f"[w{slot.index}] started pid {p.pid} ({where})")
        t = threading.Thread(target=_relay, args=(p, f"[w{slot.index}] ", out_lock), daemon=True)
        t.start()
        relays.append(t)
    try:
        for p in procs:
            p.wait()
    except KeyboardInterrupt:
        _stop(procs)
        raise
    finally:
        for t in relays:
            t.join(timeout=5)
    return [p.returncode for p in procs]


def worker_env(
    slot: Slot, sharers: int, workers: int, storage_url: str, extra: dict[str, str] | None = None
) -> dict[str, str]:
    """The environment of the worker in ``slot``: this process's, with the storage URL, the
    worker's place among ``workers``, its threads, and its GPU: ``CUDA_VISIBLE_DEVICES`` set to
    the slot's entry (``HPSEARCH_GPU_ID`` too) and ``HPSEARCH_GPU_SHARERS`` to the ``sharers``
    placed on that GPU; a CPU worker sees no GPU."""
    from hpsearch.engine.devices import GPU_ID_ENV, GPU_SHARERS_ENV

    env = {
        **os.environ,
        "HPSEARCH_STORAGE": storage_url,
        "HPSEARCH_WORKER_ID": str(slot.index),
        "HPSEARCH_WORKERS": str(workers),
        "HPSEARCH_THREADS": str(slot.threads),
        "OMP_NUM_THREADS": str(slot.threads),
        "PYTHONUNBUFFERED": "1",
        **(extra or {}),
    }
    if slot.gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = slot.gpu
        env[GPU_ID_ENV] = slot.gpu
        env[GPU_SHARERS_ENV] = str(sharers)
        # freed blocks of any size can be reused: training and evaluation batches of different
        # shapes do not each keep a high-water mark reserved (unless the user set it already)
        env.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    else:
        env.pop(GPU_ID_ENV, None)
        env.pop(GPU_SHARERS_ENV, None)
        env["CUDA_VISIBLE_DEVICES"] = ""  # a CPU worker starts no CUDA context on any GPU
    return env


def _say(lock: threading.Lock, line: str) -> None:
    with lock:
        print(line, flush=True)


def _relay(p: subprocess.Popen[str], prefix: str, lock: threading.Lock) -> None:
    assert p.stdout is not None
    for line in p.stdout:
        _say(lock, prefix + line.rstrip("\n"))


def _stop(procs: Sequence[subprocess.Popen[str]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
    for p in procs:
        try:
            p.wait(timeout=STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
