"""bench/search_quality.py at toy size, so that the benchmark cannot rot: real photos, real
searches, every output file."""

from __future__ import annotations

import argparse
import json
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "search_quality.py"


def bench(args: list[str], data_root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--data", str(data_root), *args],
        capture_output=True,
        text=True,
        timeout=900,
    )


def one_arm_toy(
    data_root: Path, tmp_path: Path, *, repeats: int, trials: int, epochs: int
) -> tuple[Path, list[str]]:
    """The output folder and command line of a toy benchmark with one arm (TPE, median)."""
    out = tmp_path / "sq"
    args = [sys.executable, str(SCRIPT), "--data", str(data_root), "--arm", "a=tpe/median"]
    args += ["--repeats", str(repeats), "--trials", str(trials), "--epochs", str(epochs)]
    args += ["--image-size", "32", "--per-class", "20", "--val-per-class", "10", "--quiet"]
    return out, [*args, "--out", str(out)]


@pytest.mark.slow
def test_toy_benchmark_writes_table_plot_and_json(tmp_path: Path, data_root: Path) -> None:
    out = tmp_path / "sq"
    arms = ["tpe=tpe/median", "rnd=random/none+search.near_baseline=0", "grid=grid/median"]
    r = bench(
        [
            *(a for arm in arms for a in ("--arm", arm)),
            *["--repeats", "2", "--trials", "3", "--epochs", "2", "--image-size", "32"],
            *["--per-class", "20", "--val-per-class", "10", "--quiet", "--out", str(out)],
        ],
        data_root,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    table = (out / "results.md").read_text()
    for name in ("tpe", "rnd", "grid", "seed baseline (trial 0)"):
        assert f"| {name} |" in table
    assert "+search.near_baseline=0" in table
    assert table in r.stdout
    assert "the 2 repeats at this pace: about" in r.stdout  # the figure that sizes a run
    assert (out / "best_vs_epochs.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    doc = json.loads((out / "results.json").read_text())
    results = doc["results"]
    assert sorted((x["arm"], x["repeat"]) for x in results) == sorted(
        (a, r) for a in ("tpe", "rnd", "grid") for r in (0, 1)
    )
    for x in results:
        assert sum(x["states"].values()) == 3  # the budget, trial for trial
        assert x["epochs"] == x["curve"][-1][0] and 3 <= x["epochs"] <= 6
        if x["best"] is not None:
            assert 0.0 <= x["best"] <= 1.0 and 0.0 <= x["retrained"] <= 1.0
        # the seed baseline is trial 0 of the TPE and random searches, never of the grid's
        assert (x["baseline"] is not None) == (x["arm"] != "grid")
    # the repeats differ: another sampler seed draws other parameters after the baseline
    tpe = [x for x in results if x["arm"] == "tpe"]
    assert [t["params"] for t in tpe[0]["trials"]][1:] != [t["params"] for t in tpe[1]["trials"]][
        1:
    ]
    assert tpe[0]["trials"][0]["params"] == tpe[1]["trials"][0]["params"]  # the seed baseline
    assert doc["baseline_mean"] == pytest.approx((tpe[0]["baseline"] + tpe[1]["baseline"]) / 2)
    # the comparisons the table is for, each from the arms that answer it
    assert "- tpe: best beats the seed baseline by" in table
    assert "- tpe vs random" not in table  # rnd differs in its overrides: not a twin of tpe
    # --replot rewrites the same table from the JSON alone
    (out / "results.md").unlink()
    (out / "best_vs_epochs.png").unlink()
    again = subprocess.run(
        [sys.executable, str(SCRIPT), "--replot", str(out)], capture_output=True, text=True
    )
    assert again.returncode == 0, again.stderr
    assert (out / "results.md").read_text() == table
    assert (out / "best_vs_epochs.png").exists()
    # after each repeat but the last, the table so far is written: a run stopped later keeps it
    lines = r.stdout.splitlines()
    written = lines.index(f"results of repeats 0-0 so far: {out}/results.md")
    assert written < min(i for i, line in enumerate(lines) if " repeat 1: best" in line)
    assert doc["repeats_done"] == 2 and not table.startswith("Partial")
    # such a partial JSON redraws as partial
    doc["results"] = [x for x in results if x["repeat"] == 0]
    doc["repeats_done"] = 1
    (out / "results.json").write_text(json.dumps(doc))
    again = subprocess.run(
        [sys.executable, str(SCRIPT), "--replot", str(out)], capture_output=True, text=True
    )
    assert again.returncode == 0, again.stderr
    partial = (out / "results.md").read_text()
    assert partial.startswith("Partial: the first 1 of 2 repeats.")
    assert "| tpe |" in partial and partial != table


@pytest.mark.slow
def test_ctrl_c_keeps_the_finished_repeats_and_the_same_command_continues(
    tmp_path: Path, data_root: Path
) -> None:
    out, args = one_arm_toy(data_root, tmp_path, repeats=3, trials=3, epochs=2)
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:  # stop it once repeat 0's table is written, inside repeat 1
        if line.startswith("results of repeats 0-0 so far"):
            proc.send_signal(signal.SIGINT)
            break
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-2000:]
    assert err.strip().splitlines() == [
        f"search_quality: interrupted; the results of repeats 0-0 are in {out}/results.md; "
        "the same command continues where it stopped"
    ]
    assert (out / "results.md").read_text().startswith("Partial: the first 1 of 3 repeats.")
    assert json.loads((out / "results.json").read_text())["repeats_done"] == 1
    again = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    doc = json.loads((out / "results.json").read_text())
    assert doc["repeats_done"] == 3 and [x["repeat"] for x in doc["results"]] == [0, 1, 2]
    for x in doc["results"]:  # each search reached its budget of finished trials
        finished = x["states"].get("complete", 0) + x["states"].get("pruned", 0)
        assert finished == 3
        assert x["baseline"] is not None
    assert not (out / "results.md").read_text().startswith("Partial")


@pytest.mark.slow
def test_trials_a_killed_run_left_running_run_again_the_seed_baseline_first(
    tmp_path: Path, data_root: Path
) -> None:
    out, args = one_arm_toy(data_root, tmp_path, repeats=1, trials=2, epochs=1)
    first = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    before = json.loads((out / "results.json").read_text())["results"][0]["trials"]
    # as a kill -9 leaves them: both trials RUNNING, no value
    with sqlite3.connect(out / "studies.db") as db:
        ids = [i for (i,) in db.execute("SELECT trial_id FROM trials")]
        db.execute("UPDATE trials SET state = 'RUNNING', datetime_complete = NULL")
        db.execute(f"DELETE FROM trial_values WHERE trial_id IN ({','.join(map(str, ids))})")
    again = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    x = json.loads((out / "results.json").read_text())["results"][0]
    assert x["states"] == {"fail": 2, "complete": 2}
    runs = {t["number"]: t for t in x["trials"]}
    assert runs[2]["params"] == before[0]["params"]  # the seed baseline, run again first
    assert runs[3]["params"] == before[1]["params"]
    assert x["baseline"] is not None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--arm", "tpe-median"], "expected NAME=SAMPLER/PRUNER"),
        (["--arm", "a=tpe/median", "--arm", "a=random/none"], "arm names must differ"),
        (["--arm", "a=annealing/median"], "unknown sampler 'annealing'"),
        (["--arm", "a=tpe/median+search.bogus=1"], "search.bogus"),
        (  # the arm's PRUNER would silently replace its own +search.pruner (it did)
            ["--arm", "a=tpe/median+search.pruner={name: percentile, percentile: 40}"],
            "its +search.pruner is 'percentile' but the arm says 'median'; name it "
            "'a=tpe/percentile@catdog+search.pruner={name: percentile, percentile: 40}'",
        ),
    ],
)
def test_bad_arms_are_one_line(
    tmp_path: Path, data_root: Path, args: list[str], message: str
) -> None:
    r = bench([*args, "--out", str(tmp_path / "o")], data_root)
    assert r.returncode != 0
    assert message in r.stderr
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_an_arms_own_pruner_options_reach_its_study(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--arm NAME=tpe/percentile+search.pruner={...} runs that pruner with those options, not the
    named pruner's defaults (an arm meant as the percentile pruner ran the median one)."""
    monkeypatch.chdir(REPO)  # as the benchmark does: study names resolve in the repository
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    import search_quality as sq
    from hpsearch.storage.study import make_pruner

    args = argparse.Namespace(
        data=tmp_path, image_size=32, per_class=20, val_per_class=10, epochs=2, device="cpu", set=[]
    )
    spec = "p=tpe/percentile+search.pruner={name: percentile, percentile: 40, n_warmup_steps: 1}"
    cfg = sq.arm_config(sq.parse_arm(spec, "catdog"), args, repeat_seed=1)
    assert cfg.search.pruner.name == "percentile"
    assert dict(cfg.search.pruner.options) == {"percentile": 40, "n_warmup_steps": 1}
    pruner = make_pruner(cfg)
    assert isinstance(pruner, optuna.pruners.PercentilePruner)
    assert pruner._percentile == 40
