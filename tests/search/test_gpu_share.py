"""Workers sharing one GPU: K and the GPU's name from the launcher's environment, and the per-GPU
lock, held shared while training and exclusive by a trial retried alone, contended for by real
processes."""

from __future__ import annotations

import fcntl
import os
import select
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hpsearch.errors import HpsearchError
from hpsearch.search.gpu_share import GpuLock, GpuShare, lock_dir, lock_stem, read_share


def test_the_share_comes_from_the_environment_with_defaults() -> None:
    assert read_share({}) == GpuShare(1, None)
    assert not read_share({}).locks
    share = read_share({"HPSEARCH_GPU_SHARERS": "3", "HPSEARCH_GPU_ID": "GPU-8f2c"})
    assert share == GpuShare(3, "GPU-8f2c") and share.locks
    assert not read_share({"HPSEARCH_GPU_SHARERS": "1", "HPSEARCH_GPU_ID": "0"}).locks
    assert not read_share({"HPSEARCH_GPU_SHARERS": "2"}).locks  # no GPU named: no lock
    for bad in ("0", "-1", "two", "1.5"):
        with pytest.raises(HpsearchError, match=r"^HPSEARCH_GPU_SHARERS must be an integer >= 1"):
            read_share({"HPSEARCH_GPU_SHARERS": bad})


def test_lock_names_are_safe_and_distinct() -> None:
    uuid = "GPU-8f2c1a2b-0c3d-4e5f-8a9b-0c1d2e3f4a5b"
    assert lock_stem(uuid) == f"gpu-{uuid}"
    assert lock_stem("0") == "gpu-0"
    odd = [lock_stem(x) for x in ("a/b", "a_b", "../../etc/passwd", "a b", "a\nb")]
    assert len(set(odd)) == len(odd)
    assert all("/" not in s and " " not in s and "\n" not in s for s in odd)


@pytest.fixture
def tmpdir_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """tempfile.gettempdir() is ``tmp_path`` for this test (and its child processes)."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    return tmp_path


def test_the_lock_directory_is_shared_like_tmp_and_never_a_link(tmpdir_here: Path) -> None:
    made = lock_dir()
    assert made == tmpdir_here / "hpsearch-gpu-locks"
    assert stat.S_IMODE(made.stat().st_mode) == 0o1777
    lock = GpuLock("GPU-x")
    assert lock.path.parent == made
    made.rmdir()
    (tmpdir_here / "elsewhere").mkdir()
    made.symlink_to(tmpdir_here / "elsewhere")
    with pytest.raises(HpsearchError, match="is not a directory"):
        lock_dir()


CHILD = """
import sys
from pathlib import Path
from hpsearch.search.gpu_share import GpuLock
lock = GpuLock(sys.argv[1], Path(sys.argv[2]))
for line in sys.stdin:
    cmd = line.strip()
    {"share": lock.share, "alone": lock.take_alone, "release": lock.release}[cmd]()
    print("done", cmd, flush=True)
"""


class Worker:
    """A real process holding the GPU lock as told (commands on stdin, one answer each)."""

    def __init__(self, gpu: str, folder: Path) -> None:
        self.p = subprocess.Popen(
            [sys.executable, "-c", CHILD, gpu, str(folder)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def send(self, cmd: str) -> None:
        assert self.p.stdin is not None
        self.p.stdin.write(cmd + "\n")
        self.p.stdin.flush()

    def answered(self, wait: float) -> str | None:
        assert self.p.stdout is not None
        ready, _, _ = select.select([self.p.stdout], [], [], wait)
        return self.p.stdout.readline().strip() if ready else None

    def do(self, cmd: str) -> None:
        self.send(cmd)
        assert self.answered(60) == f"done {cmd}"  # 60 s: only a guard against a hang

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait()


def held(path: Path, mode: int) -> bool:
    """Whether another process's lock on ``path`` keeps us from taking ``mode`` now."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


PROC_LOCKS = Path("/proc/locks")


def waits_on(worker: Worker, path: Path) -> bool:
    """Whether the kernel lists ``worker`` as blocked on a lock of ``path`` (``->`` lines of
    /proc/locks: "1: -> FLOCK  ADVISORY  WRITE <pid> <major>:<minor>:<inode> 0 EOF")."""
    inode = str(path.stat().st_ino)
    rows = [line.split() for line in PROC_LOCKS.read_text().splitlines()]
    return any(
        f[1:3] == ["->", "FLOCK"] and f[5] == str(worker.p.pid) and f[6].endswith(f":{inode}")
        for f in rows
        if len(f) > 6
    )


def wait_until(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 60  # a guard against a hang, not a timing assertion
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


@pytest.fixture
def three(tmp_path: Path) -> Iterator[tuple[Worker, Worker, Worker, GpuLock]]:
    if not PROC_LOCKS.exists():
        pytest.skip("no /proc/locks to see which process waits on a lock")
    workers = [Worker("GPU-test", tmp_path) for _ in range(3)]
    try:
        yield workers[0], workers[1], workers[2], GpuLock("GPU-test", tmp_path)
    finally:
        for w in workers:
            w.stop()


def test_processes_share_the_gpu_and_one_waits_for_it_alone(
    three: tuple[Worker, Worker, Worker, GpuLock],
) -> None:
    a, b, c, lock = three
    # two workers train side by side
    a.do("share")
    b.do("share")
    assert held(lock.path, fcntl.LOCK_EX) and not held(lock.path, fcntl.LOCK_SH)
    b.do("release")
    # b wants the GPU alone while a trains: it waits, holding the gate, so that no new trial
    # starts beside a in the meantime (a waiting exclusive taker is never starved)
    b.send("alone")
    wait_until(lambda: waits_on(b, lock.path), "b never waited for the GPU")
    # a third worker's next trial may not start beside a now: it waits at the gate
    c.send("share")
    wait_until(lambda: waits_on(c, lock.gate_path), "c never waited at the gate")
    a.do("release")  # a's trial ends
    assert b.answered(60) == "done alone"
    assert held(lock.path, fcntl.LOCK_SH)  # nobody else trains now
    # c, and a's next trial, wait until b's retry is over (one on the GPU's lock holding the
    # gate, the other at the gate behind it)
    a.send("share")
    wait_until(lambda: waits_on(a, lock.path) or waits_on(a, lock.gate_path), "a never waited")
    wait_until(lambda: waits_on(c, lock.path) or waits_on(c, lock.gate_path), "c never waited")
    assert a.answered(0) is None and c.answered(0) is None
    b.do("release")
    assert a.answered(60) == "done share"
    assert c.answered(60) == "done share"


def test_a_dead_workers_lock_is_dropped_by_the_kernel(
    three: tuple[Worker, Worker, Worker, GpuLock],
) -> None:
    a, b, _, lock = three
    a.do("share")
    b.send("alone")
    wait_until(lambda: waits_on(b, lock.path), "b never waited for the GPU")
    a.p.send_signal(signal.SIGKILL)
    assert b.answered(60) == "done alone"
    b.do("release")
    assert not held(lock.path, fcntl.LOCK_EX)
