"""The GPU acceptance kit (bench/gpu_check.py) and its data (bench/make_subset.py), run here on the
CPU so that neither can rot before a GPU is lent: the kit end to end at --tiny size on the real
photos, the CUDA-only checks skipped with their reasons, a check that fails making the kit fail
(exit 1, the reason in the report), the checks' limits within the budget, the rules the checks
judge by (as pure functions), bad input refused in one line."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

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
    "auto_k",
    "out_of_memory",
    "gpu_tests",
]
CUDA_ONLY = {"trials_per_gpu", "cuda_graphs", "auto_k", "gpu_tests"}
GIB = 2**30


def load_kit() -> ModuleType:
    """bench/gpu_check.py as a module (bench/ is no package), for its pure functions."""
    spec = importlib.util.spec_from_file_location("gpu_check", KIT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up while being made
    spec.loader.exec_module(module)
    return module


kit = load_kit()


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
    """What the issue checks: `gpu_check.py --device cpu --tiny --out report` (its default
    budget) lists every check with its pass condition, runs what a CPU can and passes, and skips
    the CUDA ones saying why. About 3-5 minutes on 2 cores."""
    out = tmp_path / "report"
    args = ["--device", "cpu", "--tiny", "--out", str(out), "--data", str(data_root)]
    r = script(KIT, args, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert r.stdout.strip().splitlines()[-1].startswith("gpu_check: passed: 6 of 10 checks ok")
    report = json.loads((out / "report.json").read_text())
    checks = {c["name"]: c for c in report["checks"]}
    assert list(checks) == CHECKS
    for name, c in checks.items():
        assert c["condition"] or name in {"trials_per_gpu", "auto_k"}, name
        if name in CUDA_ONLY:
            assert c["status"] == "skipped", (name, c)
            assert "CUDA" in c["reason"], (name, c["reason"])
        else:
            assert c["status"] == "ok", (name, c["reason"], c["summary"])
    kit_meta = report["kit"]
    assert kit_meta["device"] == "cpu" and kit_meta["tiny"] is True and kit_meta["passed"]
    assert kit_meta["min_images_per_s"] is None  # no img/s target on a CPU
    assert max(kit_meta["limits_s"].values()) <= kit_meta["budget_s"] == 900  # --tiny's default

    env = checks["environment"]["figures"]
    assert env["torch"] == torch.__version__ and env["device used"] == "cpu"
    assert env["gpu"].startswith("none")
    rows = checks["throughput"]["figures"]["rows"]
    assert set(rows) == {"seed", "tuned", "engine", "bound_engine"}
    assert all(row["rate"] > 0 for row in rows.values())
    assert [r["k"] for r in checks["packing"]["figures"]["rows"]] == [1, 2]
    largest = checks["largest_trial"]["figures"]["rows"]
    assert len(largest) == 2
    for row in largest:  # measured with glibc's allocator against the CPU plan
        assert row["within_plan"] and 0 < row["measured"]["total"] <= row["predicted"]["total"]
        assert row["measured"]["weights"] == row["predicted"]["weights"]  # fp32 parameters
        assert row["eval_batch_size"] == 32 and row["batch_size"] == 8
    search = checks["search"]["figures"]
    assert sum(search["states"].values()) == search["trials"] and "FAIL" not in search["states"]
    assert search["checkpoint"] and search["predict"].endswith(tuple("0123456789"))
    oom = checks["out_of_memory"]["figures"]
    assert oom["states"] == ["COMPLETE", "FAIL", "COMPLETE"]
    assert oom["fail_reason"].startswith("out of host memory")
    gpu_tests = checks["gpu_tests"]["figures"]
    assert "tests/engine/test_gpu.py" in gpu_tests["files"] and gpu_tests["counts"]["skipped"] >= 3
    assert not gpu_tests["counts"].get("error") and not gpu_tests["counts"].get("failed")
    assert checks["cuda_graphs"]["figures"]["eager_ms"] > 0

    md = (out / "report.md").read_text()
    for name in CHECKS:
        assert f"| {name} |" in md and f"## {name}: " in md
    assert md.count("Skipped: ") == len(CUDA_ONLY)
    assert md.count("Pass condition: ") == len(CHECKS) - 2  # the two the kit skips unstarted
    assert "FAILED" not in md and "**Verdict**: passed: 6 of 10 checks ok" in md
    assert (out / "log.txt").stat().st_size > 0
    assert sorted(p.name for p in out.iterdir()) == ["log.txt", "report.json", "report.md"]


@pytest.mark.slow
def test_a_check_that_fails_fails_the_kit_and_says_why(tmp_path: Path, data_root: Path) -> None:
    """An impossible throughput target: the check fails, the kit exits 1, and its last lines,
    report.json and report.md say which check failed and why, beside the condition."""
    out = tmp_path / "report"
    args = ["--device", "cpu", "--tiny", "--out", str(out), "--data", str(data_root)]
    r = script(KIT, [*args, "--checks", "throughput", "--min-images-per-s", "1e12"], timeout=600)
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-3000:]
    last = r.stdout.strip().splitlines()[-2:]
    assert last[0] == "gpu_check: FAILED: 1 of 1 checks failed: throughput"
    assert last[1].startswith("  throughput: engine ")
    assert last[1].endswith(" img/s is below the target of 1,000,000,000,000 img/s")
    report = json.loads((out / "report.json").read_text())
    (c,) = report["checks"]
    assert c["name"] == "throughput" and c["status"] == "failed"
    assert "below the target of 1,000,000,000,000 img/s" in c["reason"]
    assert c["figures"]["target_met"] is False and c["figures"]["rows"]["engine"]["rate"] > 0
    assert c["condition"] == "every row ran, and the engine row trained >= 1,000,000,000,000 img/s"
    assert report["kit"]["passed"] is False
    assert report["kit"]["verdict"] == [last[0].removeprefix("gpu_check: "), last[1]]
    md = (out / "report.md").read_text()
    assert "| throughput | **FAILED** |" in md and f"Failed: {c['reason']}" in md
    assert f"Pass condition: {c['condition']}." in md
    assert "**Verdict**: FAILED: 1 of 1 checks failed: throughput" in md


def test_the_checks_limits_add_up_to_no_more_than_the_budget() -> None:
    """The kit runs on a lent GPU for about 10 minutes of a 15-minute lease: its checks' own
    limits add up to the default budget at most, so every check gets its own limit and the last
    ends within the budget, whatever --budget scales them to."""
    limits = [c.limit_s for c in kit.CHECKS]
    assert [c.name for c in kit.CHECKS] == CHECKS
    assert all(limit > 0 for limit in limits)
    assert sum(limits) <= kit.DEFAULT_BUDGET_S <= 450
    for budget in (kit.DEFAULT_BUDGET_S, 100.0, 1500.0):
        ends = kit.deadlines(limits, budget)
        assert ends[-1] <= budget + 1e-9
        own = [b - a for a, b in zip([0.0, *ends], ends, strict=False)]
        assert own == pytest.approx([x * budget / kit.DEFAULT_BUDGET_S for x in limits])


@pytest.mark.parametrize(
    ("probe_k", "aggregate", "ok", "said"),
    [
        (4, {1: 100, 2: 180, 4: 300, 8: 420}, False, "is 4 from the best measured K=8"),
        (8, {1: 100, 2: 180, 4: 300, 8: 420}, True, "within one of the best measured K=8"),
        (7, {1: 100, 2: 180, 4: 300, 8: 420}, True, "within one of the best measured K=8"),
        (3, {1: 100, 2: 180, 4: 300, 8: 250}, True, "within one of the best measured K=4"),
        (5, {1: 100, 2: 180, 4: 300, 8: 250}, True, "within one of the best measured K=4"),
        (2, {1: 100, 2: 180, 4: 300, 8: 250}, False, "is 2 from the best measured K=4"),
        (1, {1: 100, 2: 180, 4: 300, 8: 250}, False, "is 3 from the best measured K=4"),
        (1, {1: 100, 2: 99, 4: 98, 8: 60}, True, "K in [1, 2, 4]"),  # flat: launch-free GPU
        (4, {1: 100, 2: 180, 4: 300, 8: 310}, True, "K in [4, 8] (within 5% of the top)"),
        (3, {1: 100, 2: 290, 4: 300, 8: 310}, True, "K in [4, 8]"),  # 2 is 6.5% below: no
        (6, {1: 100, 2: 180, 4: 300, 8: 310}, False, "is 2 from the best measured K in [4, 8]"),
        (1, {1: 100}, True, "within one of the best measured K=1"),
        (3, {}, False, "no measured K"),
    ],
)
def test_the_probes_k_must_be_within_one_of_the_best_measured_k(
    probe_k: int, aggregate: dict[int, float], ok: bool, said: str
) -> None:
    got, why = kit.judge_k(probe_k, aggregate)
    assert got is ok and said in why, why


def test_the_packing_rule_without_noise_is_strict() -> None:
    ok, why = kit.judge_k(4, {4: 300.0, 8: 310.0}, noise=0.0)
    assert not ok and "is 4 from the best measured K=8" in why


@pytest.mark.parametrize(
    ("predicted", "measured", "ok", "said"),
    [
        (4 * GIB, 3 * GIB, True, "measured 3.00 GiB, planned 4.00 GiB (75%): within the plan"),
        (4 * GIB, 4 * GIB, True, "(100%): within the plan"),
        (4 * GIB, 4 * GIB + 1, False, "above the plan, which would pack too many"),
        (2 * GIB, 5 * GIB, False, "measured 5.00 GiB, planned 2.00 GiB (250%): above the plan"),
        (4 * GIB, GIB // 100, True, "(0%): within the plan"),  # wasteful, still within
        (4 * GIB, None, False, "nothing was measured"),
        (4 * GIB, 0, False, "nothing was measured"),
        (0, GIB, False, "the plan predicts 0 bytes"),
    ],
)
def test_the_largest_trial_must_be_within_the_plan(
    predicted: int, measured: int | None, ok: bool, said: str
) -> None:
    got, why = kit.within_plan(predicted, measured)
    assert got is ok and said in why, why


@pytest.mark.parametrize(
    ("counts", "code", "cuda", "status", "said"),
    [
        ({"passed": 3}, 0, True, "ok", "3 passed"),
        ({"skipped": 3}, 0, False, "skipped", "3 skipped"),
        ({"skipped": 3}, 0, True, "failed", "on a GPU every gpu test must run"),
        ({"passed": 2, "skipped": 1}, 0, True, "failed", "on a GPU every gpu test must run"),
        ({"passed": 2, "skipped": 1}, 0, False, "ok", "2 passed, 1 skipped"),
        ({}, 5, True, "failed", "collected no test (exit code 5)"),
        ({"deselected": 4}, 5, False, "failed", "collected no test"),
        ({"passed": 2, "failed": 1}, 1, True, "failed", "pytest exit code 1: 2 passed, 1 failed"),
        ({"skipped": 2, "error": 1}, 2, False, "failed", "pytest exit code 2"),
        ({"passed": 3}, None, True, "failed", "timed out"),
    ],
)
def test_the_gpu_tests_fail_unless_they_ran(
    counts: dict[str, int], code: int | None, cuda: bool, status: str, said: str
) -> None:
    got, why = kit.judge_gpu_tests(counts, code, cuda)
    assert got == status and said in why, why


ENTRY = "GPU-8f2c3d4e-1111-2222-3333-444455556666"


@pytest.mark.parametrize(
    ("lines", "k", "problem"),
    [
        (
            [
                "measuring one trial of smoke on GPU GPU-8f2c... to pick --trials-per-gpu...",
                "3 trials per GPU: one worker needs 1.2 GiB (...) of 80 GiB, so 60 fit; ...",
                f"[w0] started pid 11 (GPU 0 (CUDA_VISIBLE_DEVICES={ENTRY}), 3 on it)",
                f"[w1] started pid 12 (GPU 0 (CUDA_VISIBLE_DEVICES={ENTRY}), 3 on it)",
                f"[w2] started pid 13 (GPU 0 (CUDA_VISIBLE_DEVICES={ENTRY}), 3 on it)",
            ],
            3,
            None,
        ),
        (
            [
                "8 trials per GPU: ...",
                "note: running 4 of 8 workers: SQLite lets one writer in at a time ...",
                *(
                    f"[w{i}] started pid 1{i} (GPU 0 (CUDA_VISIBLE_DEVICES={ENTRY}), 4 on it)"
                    for i in range(4)
                ),
            ],
            8,
            None,
        ),
        (
            [
                "2 trials per GPU: ...",
                f"[w0] started pid 11 (GPU 0 (CUDA_VISIBLE_DEVICES={ENTRY}), 2 on it)",
            ],
            2,
            "1 workers started, expected min(K=2, 4, 6) = 2",
        ),
        (
            [
                "2 trials per GPU: ...",
                "[w0] started pid 11 (GPU 0, 2 on it)",
                "[w1] started pid 12 (GPU 0, 2 on it)",
            ],
            2,
            f"a worker not on CUDA_VISIBLE_DEVICES={ENTRY}",
        ),
        (
            [
                "warning: could not measure a trial on GPU 0: boom; running 1 trial per GPU "
                "(set --trials-per-gpu)",
                f"[w0] started pid 11 (GPU 0 (CUDA_VISIBLE_DEVICES={ENTRY}), 1 on it)",
            ],
            None,
            "the probe failed: warning: could not measure",
        ),
    ],
)
def test_the_automatic_k_run_is_read_from_what_it_printed(
    lines: list[str], k: int | None, problem: str | None
) -> None:
    problems, got = kit.judge_auto_k("\n".join(lines), ENTRY, 6, 4)
    assert got == k
    if problem is None:
        assert problems == []
    else:
        assert any(problem in p for p in problems), problems


@pytest.mark.parametrize(
    ("device", "tiny", "asked", "target"),
    [
        ("cuda", False, None, 20_000.0),  # the seed CNN at 128px on one H100
        ("cuda", True, None, None),  # 32px says nothing about that target
        ("cpu", False, None, None),
        ("cpu", True, 50.0, 50.0),
        ("cuda", False, 1e12, 1e12),
    ],
)
def test_the_throughput_target(
    device: str, tiny: bool, asked: float | None, target: float | None
) -> None:
    assert kit.throughput_target(device, tiny, asked) == target


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


def test_the_product_graph_path_the_kit_measures_runs_on_the_cpu() -> None:
    """The cuda_graphs check's measure of train.cuda_graphs (CUDA only in the kit) runs here: on
    the CPU both ways are eager, so the fits' losses are the same and nothing was graphed."""
    out = kit.product_graphs(torch.device("cpu"), 16, 3)
    assert out["graphed"] is False
    assert out["eager_loss"] == out["graph_loss"]
    assert out["eager_ms"] > 0 and out["graph_images_per_s"] > 0
