"""The bench scripts that no other test runs, each at toy size, so that none rots unnoticed (the
GPU kit and its subset: test_gpu_check.py, which also runs throughput.py and packing.py; the
search-quality benchmark: test_search_quality.py). Real photos, real servers, real databases;
their figures are not judged here, only that each runs and prints its table."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import PG_ADMIN, REPO

pytestmark = pytest.mark.slow


def bench(script: str, *args: str, cwd: Path, timeout: float = 300) -> str:
    r = subprocess.run(
        [sys.executable, str(REPO / "bench" / script), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    return r.stdout


@pytest.mark.parametrize("script", sorted(p.name for p in (REPO / "bench").glob("*.py")))
def test_help(script: str, tmp_path: Path) -> None:
    """Every bench script, a new one included, at least parses its arguments: ``--help`` exits 0
    and prints its usage (one that no longer imports or builds its parser fails here)."""
    out = bench(script, "--help", cwd=tmp_path, timeout=120)
    assert out.startswith("usage:"), out


def test_decode(data_root: Path, tmp_path: Path) -> None:
    out = bench("decode.py", "--data", str(data_root / "train"), "--n", "6", "--size", "16",
                "--rounds", "1", cwd=tmp_path)  # fmt: skip
    assert re.search(r"^\| 16 \| \d+ img/s \| \d+ img/s \| [\d.]+ \| [\d.]+ / 255 \|$", out, re.M)


def test_profile_epoch(data_root: Path, tmp_path: Path) -> None:
    out = bench("profile_epoch.py", "--data", str(data_root), "--image-size", "16", "--steps",
                "3", "--device", "cpu", "--top", "3", cwd=tmp_path)  # fmt: skip
    assert re.search(r"^3 steps on cpu: input pipeline and glue [\d.]+ ms of", out, re.M), out


def test_storage(tmp_path: Path) -> None:
    """Both backends: the PostgreSQL server the suite uses (a database of its own), SQLite."""
    out = bench("storage.py", "--workers", "1,2", "--prefill", "10", "--per-worker", "2",
                "--pg", PG_ADMIN, cwd=tmp_path)  # fmt: skip
    rows = re.findall(r"^(postgresql|sqlite)\s+10\s+(\d)\s.*\s(True|False)$", out, re.M)
    assert sorted(rows) == [
        ("postgresql", "1", "True"),
        ("postgresql", "2", "True"),
        ("sqlite", "1", "True"),
        ("sqlite", "2", "True"),
    ], out
    # the figures beside their targets: the join, the reads (as the CLI runs them), the capacity
    assert re.search(r"^join: a new worker on 10 trials starts its first trial after [\d.]+ s "
                     r"\(target < 1 s on 10000: (met|missed by .*)\)$", out, re.M), out  # fmt: skip
    for what in ("status", "best", "trials"):
        line = rf"^read: hpsearch {what} on 10 trials: [\d.]+ s \([\d.]+ s after start-up\) "
        assert re.search(line + r"\(target < 1 s: (met|missed by .*)\)$", out, re.M), out
    assert re.search(r"^\S+\s+10\s+2\s.*\s\d+\s+True$", out, re.M), out  # connections held
    last = out.strip().splitlines()[-1]
    assert re.fullmatch(r"capacity: [\d.]+ finished trials/s \(target >= 50: (met|missed by .*)\)",
                        last), out  # fmt: skip


def test_serve(data_root: Path, tmp_path: Path) -> None:
    out = bench("serve.py", "--data", str(data_root), "--requests", "12", "--warmup", "2",
                "--rounds", "1", "--concurrency", "1,4", "--photos", "4", "--image-size", "16",
                cwd=tmp_path)  # fmt: skip
    rows = re.findall(r"^\| (\d+) \| (on|off) \| [\d.]+ \|", out, re.M)
    assert rows == [("1", "off"), ("1", "on"), ("4", "off"), ("4", "on")], out


def test_memory_plan(tmp_path: Path) -> None:
    # the smoke study's largest trial on an 8 GiB card; no photos needed with --classes
    out = bench("memory_plan.py", "--study", "smoke", "--card-gib", "8", "--classes", "2",
                "--ks", "1,2", cwd=REPO)  # fmt: skip
    assert re.search(r"^  evaluation\s+[\d.]+ GiB$", out, re.M), out
    assert re.search(r"^  K=2 \s*[\d.]+ GiB of 8: (fits|does not fit)$", out, re.M), out
    assert re.search(r"^  memory fit: \d+ workers per card$", out, re.M), out
