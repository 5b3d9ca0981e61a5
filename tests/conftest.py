"""Shared fixtures: the real Dogs-vs-Cats photos in ../shared, real SQLite files, the real CLI."""

from __future__ import annotations

import os
import shlex
import shutil
import struct
import subprocess
import sys
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from hpsearch.engine.spec import ArchSpec

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("HPSEARCH_TEST_DATA", REPO.parent / "shared" / "data" / "catdog"))


@pytest.fixture(scope="session")
def data_root() -> Path:
    assert (DATA / "train" / "cat").is_dir(), f"test data missing: {DATA}"
    return DATA


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One decode cache for the whole session, so that each subset is decoded once."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session", autouse=True)
def _env(data_root: Path, cache_dir: Path) -> Iterator[None]:
    """Every test (and every CLI subprocess) reads the shared photos and the session's cache."""
    saved = {k: os.environ.get(k) for k in ("HPSEARCH_DATA", "HPSEARCH_CACHE", "HPSEARCH_STORAGE")}
    os.environ["HPSEARCH_DATA"] = str(data_root)
    os.environ["HPSEARCH_CACHE"] = str(cache_dir)
    os.environ.pop("HPSEARCH_STORAGE", None)
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def small_imagefolder(dst: Path, src: Path, per_class: int, val_per_class: int) -> Path:
    """A copy of the first few real photos of each class in a temp dir (never in the repo)."""
    for split, n in (("train", per_class), ("val", val_per_class)):
        for cls in ("cat", "dog"):
            out = dst / split / cls
            out.mkdir(parents=True)
            for f in sorted((src / split / cls).iterdir())[:n]:
                shutil.copy(f, out / f.name)
    return dst


def hpsearch(
    args: Sequence[str], cwd: Path, timeout: float = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the real ``hpsearch`` CLI in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "hpsearch.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})},
    )


def flat_png(width: int, height: int) -> bytes:
    """A real, decodable PNG of ``width`` x ``height`` black pixels (1 bit each), made row by
    row: 10000 x 10000 (a decompression bomb) is a 12 KB file and never 100 MB in memory."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    packer = zlib.compressobj(9)
    row = bytes(1 + (width + 7) // 8)  # filter byte 0, then the row's bits
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
        + chunk(b"IDAT", idat)
        + chunk(b"IEND", b"")
    )


def argv(line: str) -> list[str]:
    """A command line written as one string, split like a shell would."""
    return shlex.split(line)


def popen(args: Sequence[str], cwd: Path, *, merge_stderr: bool = True) -> subprocess.Popen[str]:
    """Start the real CLI in the background, unbuffered; stderr merged into stdout unless a
    test must read hpsearch's one stderr line on its own."""
    return subprocess.Popen(
        [sys.executable, "-m", "hpsearch.cli", *args],
        cwd=cwd,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
        env={**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONUNBUFFERED": "1"},
    )


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path


PG_ADMIN = os.environ.get("HPSEARCH_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh database on the real PostgreSQL server, dropped afterwards."""
    import uuid

    import psycopg

    name = f"hpsearch_test_{uuid.uuid4().hex[:10]}"
    admin = PG_ADMIN.replace("postgresql://", "postgresql://", 1)
    with psycopg.connect(admin, autocommit=True, connect_timeout=5) as con:
        con.execute(f'CREATE DATABASE "{name}"')
    base = admin.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as con:
            con.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def smoke_study(_env: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real smoke search through the CLI, shared (read-only) by the results tests: 3
    completed trials (no pruner), the 2 best keeping checkpoints in ``hpsearch-artifacts/``
    beside ``hpsearch.db``. About 15 s on 2 cores."""
    work = tmp_path_factory.mktemp("smoke-study")
    r = hpsearch(
        [
            "run",
            "--study",
            "smoke",
            "--trials",
            "3",
            "--pruner",
            "none",
            "--set",
            "search.keep_checkpoints=2",
        ],
        work,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    return work


def tiny_arch() -> ArchSpec:
    """One 8-channel conv block and an 8-unit dense layer: a real model that builds and saves in
    milliseconds, for tests of what happens around a trained model."""
    from hpsearch.engine.spec import ArchSpec

    return ArchSpec(
        channels=(8,),
        kernel_sizes=(3,),
        activation="relu",
        batch_norm=False,
        residual=False,
        dropout=0.0,
        dense_units=8,
    )
