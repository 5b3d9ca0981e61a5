"""``hpsearch run --workers N``: start worker processes on this machine and relay their output.

Each worker is ``hpsearch worker`` in its own process (and process session), pinned to one GPU
with ``CUDA_VISIBLE_DEVICES`` or, without GPUs, given its share of the CPU cores. The storage URL
travels in the environment, never on a command line that ``ps`` would show.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from hpsearch.errors import ConfigError

STOP_GRACE_SECONDS = 10


@dataclass(frozen=True)
class Slot:
    index: int
    gpu: str | None  # CUDA_VISIBLE_DEVICES for this worker; None on a CPU-only machine
    threads: int  # torch intra-op threads


def plan_slots(
    workers: int | None,
    gpus: str | None,
    per_gpu: int | None,
    auto_per_gpu: Callable[[str], int] | None = None,
) -> list[Slot]:
    """Where each worker runs.

    With GPUs (``--gpus``, default all visible): ``per_gpu`` workers on each, or ``workers``
    spread round-robin. Without either, ``auto_per_gpu(first GPU)`` decides (default 1; the CLI
    passes the measured rule of :mod:`hpsearch.search.gpu_plan`). Without GPUs: ``workers``
    processes sharing the cores.
    """
    import torch

    if workers is not None and workers < 1:
        raise ConfigError(f"--workers: must be at least 1, got {workers}")
    if per_gpu is not None and per_gpu < 1:
        raise ConfigError(f"--trials-per-gpu: must be at least 1, got {per_gpu}")
    if gpus is not None:
        ids = [g.strip() for g in gpus.split(",") if g.strip()]
        count = torch.cuda.device_count()
        bad = [g for g in ids if not g.isdigit() or int(g) >= count]
        if not ids or bad:
            raise ConfigError(f"--gpus: {gpus!r} names no visible GPU (this machine has {count})")
    else:
        ids = [str(i) for i in range(torch.cuda.device_count())]
    cores = os.cpu_count() or 1
    if ids:
        if workers is None and per_gpu is None:
            per_gpu = auto_per_gpu(ids[0]) if auto_per_gpu is not None else 1
        n = workers or (per_gpu or 1) * len(ids)
        threads = max(1, cores // n)
        return [Slot(i, ids[i % len(ids)], threads) for i in range(n)]
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
    for slot in slots:
        env = {
            **os.environ,
            "HPSEARCH_STORAGE": storage_url,
            "HPSEARCH_WORKER_ID": str(slot.index),
            "HPSEARCH_WORKERS": str(len(slots)),
            "HPSEARCH_THREADS": str(slot.threads),
            "OMP_NUM_THREADS": str(slot.threads),
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        if slot.gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = slot.gpu
        p = subprocess.Popen(
            [sys.executable, "-m", "hpsearch.cli", command, *worker_args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            start_new_session=True,  # Ctrl-C reaches the launcher only; it forwards it once
        )
        procs.append(p)
        where = f"GPU {slot.gpu}" if slot.gpu is not None else f"cpu, {slot.threads} threads"
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
