"""The GPU acceptance kit (bench/gpu_check.py) and its data (bench/make_subset.py), run here on the
CPU so that neither can rot before a GPU is lent: the kit end to end at --tiny size on the real
photos, the CUDA-only checks skipped with their reasons, bad input refused in one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from hpsearch.engine.data import load_data
from hpsearch.engine.spec import DataConfig

REPO = Path(__file__).resolve().parents[1]
KIT = REPO / "bench" / "gpu_check.py"
SUBSET = REPO / "bench" / "make_subset.py"
CHECKS = [
    "environment",
    "throughput",
    "largest_trial",
    "packing",
    "trials_per_gpu",
    "cuda_graphs",
    "search",
    "out_of_memory",
    "gpu_tests",
]
CUDA_ONLY = {"trials_per_gpu", "cuda_graphs", "gpu_tests"}


def script(path: Path, args: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(path), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU run; a GPU runs all checks")
def test_kit_runs_every_check_on_the_cpu_at_tiny_size(tmp_path: Path, data_root: Path) -> None:
    """What the issue checks: `gpu_check.py --device cpu --tiny --out report` lists every check,
    runs what a CPU can, and skips the CUDA ones saying why. About 2-5 minutes on 2 cores."""
    out = tmp_path / "report"
    args = ["--device", "cpu", "--tiny", "--out", str(out), "--data", str(data_root)]
    r = script(KIT, [*args, "--budget", "1500"], timeout=1700)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    checks = {c["name"]: c for c in report["checks"]}
    assert list(checks) == CHECKS
    for name, c in checks.items():
        if name in CUDA_ONLY:
            assert c["status"] == "skipped", (name, c)
            assert "CUDA" in c["reason"], (name, c["reason"])
        else:
            assert c["status"] == "ok", (name, c["reason"], c["summary"])
    assert report["kit"]["device"] == "cpu" and report["kit"]["tiny"] is True

    env = checks["environment"]["figures"]
    assert env["torch"] == torch.__version__ and env["device used"] == "cpu"
    assert env["gpu"].startswith("none")
    rows = checks["throughput"]["figures"]["rows"]
    assert set(rows) == {"seed", "tuned", "engine", "bound_engine"}
    assert all(row["rate"] > 0 for row in rows.values())
    assert [r["k"] for r in checks["packing"]["figures"]["rows"]] == [1, 2]
    assert len(checks["largest_trial"]["figures"]["rows"]) == 2
    search = checks["search"]["figures"]
    assert sum(search["states"].values()) == search["trials"] and "FAIL" not in search["states"]
    assert search["checkpoint"] and search["predict"].endswith(tuple("0123456789"))
    oom = checks["out_of_memory"]["figures"]
    assert oom["states"] == ["COMPLETE", "FAIL", "COMPLETE"]
    assert oom["fail_reason"].startswith("out of host memory")
    gpu_tests = checks["gpu_tests"]["figures"]
    assert "tests/engine/test_gpu.py" in gpu_tests["files"] and gpu_tests["counts"]["skipped"] >= 3
    assert checks["cuda_graphs"]["figures"]["eager_ms"] > 0

    md = (out / "report.md").read_text()
    for name in CHECKS:
        assert f"| {name} |" in md and f"## {name}: " in md
    assert md.count("Skipped: ") == len(CUDA_ONLY)
    assert "FAILED" not in md
    assert (out / "log.txt").stat().st_size > 0
    assert sorted(p.name for p in out.iterdir()) == ["log.txt", "report.json", "report.md"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--out", "/no/such/parent/report"], "its parent folder /no/such/parent does not exist"),
        (["--out", "{tmp}/r", "--data", "{tmp}/nothing"], "no data at"),
        (["--out", "{tmp}/r", "--checks", "throughput,bogus"], "--checks: unknown ['bogus']"),
        (["--out", "{tmp}/r", "--budget", "0"], "--budget must be positive"),
    ],
)
def test_kit_refuses_bad_input_in_one_line(
    tmp_path: Path, data_root: Path, args: list[str], message: str
) -> None:
    argv = [a.format(tmp=tmp_path) for a in args]
    if "--data" not in argv:
        argv += ["--data", str(data_root)]
    r = script(KIT, argv)
    assert r.returncode == 2
    assert r.stderr.startswith("gpu_check: error: ") and message in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is there")
def test_kit_refuses_cuda_without_a_device(tmp_path: Path, data_root: Path) -> None:
    r = script(KIT, ["--device", "cuda", "--out", str(tmp_path / "r"), "--data", str(data_root)])
    assert r.returncode == 2 and r.stderr.startswith("gpu_check: error: --device cuda: no CUDA")
    assert not (tmp_path / "r").exists()


def test_make_subset_writes_a_small_balanced_imagefolder(tmp_path: Path, data_root: Path) -> None:
    dst = tmp_path / "subset"
    where = ["--src", str(data_root), "--dst", str(dst)]
    r = script(SUBSET, [*where, "--train", "7", "--val", "4", "--size", "48"])
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"{dst}: 7 train + 4 val images at 48px")
    counts = {
        f"{split}/{cls}": len(list((dst / split / cls).iterdir()))
        for split in ("train", "val")
        for cls in ("cat", "dog")
    }
    assert counts == {"train/cat": 4, "train/dog": 3, "val/cat": 2, "val/dog": 2}
    for f in dst.rglob("*.jpg"):
        with Image.open(f) as im:
            assert im.format == "JPEG" and im.size == (48, 48) and im.mode == "RGB"
        assert f.name in {p.name for p in (data_root / f.parent.relative_to(dst)).iterdir()}
    manifest = json.loads((dst / "SUBSET.json").read_text())
    assert manifest["train"] == 7 and manifest["val"] == 4 and manifest["size"] == 48
    assert manifest["bytes"] == sum(f.stat().st_size for f in dst.rglob("*.jpg"))
    data = load_data(DataConfig(dst, 48, None, None), torch.device("cpu"))  # the engine reads it
    assert data.classes == ("cat", "dog") and len(data.train_labels) == 7

    again = script(SUBSET, [*where, "--train", "2", "--val", "2"])
    assert again.returncode == 0, again.stderr  # its own folder: replaced
    assert len(list(dst.rglob("*.jpg"))) == 4


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--src", "{tmp}/none", "--dst", "{tmp}/s"], 2, "no train/ and val/ folders"),
        (["--src", "{data}", "--dst", "{tmp}/foreign"], 2, "was not made by this script"),
        (["--src", "{data}", "--dst", "{tmp}/s", "--train", "1"], 2, "fewer than its 2 classes"),
        (["--src", "{data}", "--dst", "{tmp}/s", "--train", "100000"], 2, "asked for 50000"),
        (["--src", "{data}", "--dst", "{tmp}/s", "--train", "4", "--max-mib", "0.001"], 1, "over"),
    ],
)
def test_make_subset_refuses_bad_input_in_one_line(
    tmp_path: Path, data_root: Path, args: list[str], code: int, message: str
) -> None:
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "keep.txt").write_text("not ours")
    argv = [a.format(tmp=tmp_path, data=data_root) for a in args]
    if "--val" not in argv:
        argv += ["--val", "2"]
    r = script(SUBSET, argv)
    assert r.returncode == code, r.stderr
    assert r.stderr.startswith("make_subset: error: ") and message in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert (tmp_path / "foreign" / "keep.txt").exists()
    assert not (tmp_path / "s").exists()
