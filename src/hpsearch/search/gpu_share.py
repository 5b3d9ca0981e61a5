"""Workers that share one GPU, and the lock that gives one trial the GPU to itself.

The launcher places K workers on a GPU and tells each, in its environment, which physical GPU
it is on (``HPSEARCH_GPU_ID``: the GPU's UUID, or the launcher's ordinal for it) and how many
workers share it (``HPSEARCH_GPU_SHARERS``, K). A trial that runs out of memory beside other
trials may only have been crowded out, so before anything is concluded from it, it is trained
again with the GPU to itself (see :mod:`hpsearch.search.objective`).

The lock is two ``flock`` files per GPU in a directory everyone on the host shares
(``<tempdir>/hpsearch-gpu-locks/``): every worker holds ``gpu-<id>.lock`` *shared* while it
trains, and a worker that needs the GPU alone takes it *exclusive*, which waits for the
neighbours' running trials to end while they wait before starting their next. The second file,
``gpu-<id>.gate``, keeps a waiting exclusive taker from being starved: a sharer passes the gate
(held exclusive for a moment) before it takes its shared lock, and the exclusive taker holds the
gate while it waits, so no new sharer gets in ahead of it. Shared is released before exclusive
is asked for (two workers upgrading at once would wait on each other forever). The kernel drops
a dead process's locks. No torch here.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import stat
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from hpsearch.errors import HpsearchError

GPU_ID_ENV = "HPSEARCH_GPU_ID"  # a stable identity of the worker's physical GPU on this host
GPU_SHARERS_ENV = "HPSEARCH_GPU_SHARERS"  # K: how many workers the launcher put on that GPU
LOCK_DIR_NAME = "hpsearch-gpu-locks"


@dataclass(frozen=True)
class GpuShare:
    """How this worker shares its GPU: ``sharers`` workers (K, 1 = alone) on the GPU named
    ``gpu_id`` (None: unknown, so no lock can be taken)."""

    sharers: int = 1
    gpu_id: str | None = None

    @property
    def locks(self) -> bool:
        """Whether trials take the GPU lock: several workers on one GPU that can be named."""
        return self.sharers > 1 and self.gpu_id is not None


def read_share(environ: Mapping[str, str] | None = None) -> GpuShare:
    """K and the GPU's identity from the environment the launcher gives a worker; without the
    variables, K = 1 and no GPU is named. A K that is not an integer >= 1 is an HpsearchError."""
    env = os.environ if environ is None else environ
    raw = env.get(GPU_SHARERS_ENV, "").strip()
    sharers = 1
    if raw:
        try:
            sharers = int(raw)
        except ValueError:
            sharers = 0
        if sharers < 1:
            raise HpsearchError(f"{GPU_SHARERS_ENV} must be an integer >= 1, got {raw!r}")
    gpu_id = env.get(GPU_ID_ENV, "").strip() or None
    return GpuShare(sharers, gpu_id)


def lock_stem(gpu_id: str) -> str:
    """``gpu-<id>``, the id reduced to letters, digits, ``.``, ``_`` and ``-`` (at most 80); an id
    that had to be changed gets a short hash of itself, so two ids never share a lock."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", gpu_id)[:80]
    if safe != gpu_id:
        safe += "-" + hashlib.sha256(gpu_id.encode()).hexdigest()[:8]
    return f"gpu-{safe}"


def lock_dir() -> Path:
    """``<tempdir>/hpsearch-gpu-locks``, made on first use like ``/tmp`` itself (every user may
    add files, only a file's owner may remove it); a path there that is not a real directory
    (a symbolic link, a file) is refused."""
    path = Path(tempfile.gettempdir()) / LOCK_DIR_NAME
    try:
        path.mkdir(mode=0o1777, exist_ok=True)
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode):
            raise HpsearchError(f"{path} is not a directory; remove it to let workers share GPUs")
        if st.st_uid == os.getuid() and stat.S_IMODE(st.st_mode) != 0o1777:
            os.chmod(path, 0o1777)  # after mkdir: the umask would have cut the mode
    except OSError as e:
        raise HpsearchError(f"cannot use the GPU lock directory {path}: {e.strerror}") from None
    return path


class GpuLock:
    """The lock of one GPU on this host (see the module docstring). One instance per worker
    process; ``share``, ``take_alone`` and ``release`` block and are not re-entrant."""

    def __init__(self, gpu_id: str, directory: Path | None = None) -> None:
        folder = lock_dir() if directory is None else directory
        stem = lock_stem(gpu_id)
        self.path = folder / f"{stem}.lock"
        self.gate_path = folder / f"{stem}.gate"
        self._fd: int | None = None
        self._gate: int | None = None
        self.held: str | None = None  # "shared", "alone" or None

    @staticmethod
    def _open(path: Path) -> int:
        # read-only is enough for flock; no O_TRUNC, and never through a symbolic link
        flags = os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(path, flags, 0o644)
        except OSError as e:
            raise HpsearchError(f"cannot open the GPU lock {path}: {e.strerror}") from None
        return fd

    def _fds(self) -> tuple[int, int]:
        if self._fd is None or self._gate is None:
            self._gate = self._open(self.gate_path)
            self._fd = self._open(self.path)
        return self._fd, self._gate

    def _through_gate(self, mode: int) -> None:
        fd, gate = self._fds()
        fcntl.flock(gate, fcntl.LOCK_EX)
        try:
            fcntl.flock(fd, mode)
        finally:
            fcntl.flock(gate, fcntl.LOCK_UN)

    def share(self) -> None:
        """Hold the GPU shared, as every worker on it does while it trains: waits while a worker
        has it alone or waits to."""
        assert self.held is None, self.held
        self._through_gate(fcntl.LOCK_SH)
        self.held = "shared"

    def take_alone(self) -> None:
        """Hold the GPU exclusive: waits until no other worker trains on it. Call it holding
        nothing (release shared first)."""
        assert self.held is None, self.held
        self._through_gate(fcntl.LOCK_EX)
        self.held = "alone"

    def release(self) -> None:
        """Let go of the GPU (unconditionally: a stop that landed just after the lock was
        granted must not leave it held)."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        self.held = None

    def close(self) -> None:
        """Release and close the files (the kernel does both when the process ends)."""
        self.release()
        for fd in (self._fd, self._gate):
            if fd is not None:
                os.close(fd)
        self._fd = self._gate = None
