"""hpsearch confirm on a real smoke search: runs recorded in the study, the winner and its
checkpoint, --confirmed in best/export/evaluate/predict, resuming after Ctrl-C, two workers,
PostgreSQL, and one-line errors."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import statistics
import time
import urllib.request
from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch
import yaml

from conftest import argv, hpsearch, popen
from hpsearch.results.read import ranked
from hpsearch.search.confirm_jobs import confirm_seed

pytestmark = pytest.mark.slow

TINY = "--set data.max_per_class=60 --set data.val_max_per_class=30"


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Path:
    """A finished 3-trial smoke search (2 epochs, 60 images a class) and a test directory of
    photos it never saw (the last 15 validation photos of each class)."""
    work = tmp_path_factory.mktemp("confirm")
    r = hpsearch(argv(f"run --study smoke --trials 3 --pruner none {TINY}"), work)
    assert r.returncode == 0, r.stdout + r.stderr
    for cls in ("cat", "dog"):
        out = work / "unseen" / cls
        out.mkdir(parents=True)
        for f in sorted((data_root / "val" / cls).iterdir())[-15:]:
            shutil.copy(f, out / f.name)
    return work


@pytest.fixture
def fresh(searched: Path, tmp_path: Path) -> Path:
    """A copy of the searched study (database, checkpoints, test photos) to change."""
    work = tmp_path / "copy"
    shutil.copytree(searched, work)
    return work


def study_of(work: Path) -> optuna.Study:
    return optuna.load_study(study_name="smoke", storage=f"sqlite:///{work / 'hpsearch.db'}")


def one_line_error(r: object, *needles: str) -> None:
    import subprocess

    assert isinstance(r, subprocess.CompletedProcess)
    assert r.returncode != 0, r.stdout
    err = str(r.stderr)
    assert err.startswith(("hpsearch: error: ", "hpsearch confirm: error: ")), err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    for n in needles:
        assert n in err, err


def test_confirm_seeds_are_reproducible_and_new() -> None:
    for seed in (0, 1, 12345, 2**31 - 2):
        seeds = [confirm_seed(seed, run) for run in range(5)]
        assert seeds == [confirm_seed(seed, run) for run in range(5)]
        assert seed not in seeds and len(set(seeds)) == 5


def test_confirm_records_runs_and_keeps_the_winner(fresh: Path) -> None:
    top = ranked(study_of(fresh))[:2]
    r = hpsearch(argv("confirm --study smoke --top 2 --seeds 2 --data unseen"), fresh)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "0 of 4 runs recorded already" in out and "epoch 2/2" in out

    study = study_of(fresh)
    rows = {}
    for t in top:
        a = study.trials[t.number].user_attrs
        runs = a["confirm_runs"]
        assert [x["seed"] for x in runs] == [confirm_seed(a["seed"], i) for i in range(2)]
        vals = [x["val_accuracy"] for x in runs]
        assert a["confirm_n"] == 2
        assert a["confirm_val_accuracy_mean"] == pytest.approx(statistics.fmean(vals))
        assert a["confirm_val_accuracy_std"] == pytest.approx(statistics.stdev(vals))
        tests = [x["test_accuracy"] for x in runs]
        assert a["confirm_test_accuracy_mean"] == pytest.approx(statistics.fmean(tests))
        assert all(x["test_images"] == 30 for x in runs)
        assert sum(bool(x.get("kept")) for x in runs) == 1
        rows[t.number] = a
    winner = max(top, key=lambda t: (rows[t.number]["confirm_val_accuracy_mean"], -t.number))
    c = study.user_attrs["confirmed"]
    assert c["trial"] == winner.number and c["n"] == 2
    assert c["checkpoint"] == rows[winner.number]["confirm_checkpoint"]
    assert (fresh / "hpsearch-artifacts" / c["checkpoint"]).is_file()

    # the table: a header, one row per trial, the winner marked
    lines = out.splitlines()
    head = next(i for i, line in enumerate(lines) if line.lstrip().startswith("trial  search val"))
    assert "test (mean ± std)" in lines[head]
    table = lines[head + 1 : head + 3]
    assert [int(x.split()[0]) for x in table] == [t.number for t in top]
    assert sum("<- winner" in x for x in table) == 1
    assert f"winner: trial {winner.number}, confirmed val_accuracy" in out
    assert "hpsearch export --study smoke --confirmed" in out

    # best --confirmed: the winner, its confirm results, its checkpoint
    r = hpsearch(argv("best --study smoke --confirmed"), fresh)
    assert r.returncode == 0, r.stderr
    doc = yaml.safe_load(r.stdout)
    assert doc["trial"] == winner.number and doc["confirm"]["n"] == 2
    assert doc["confirm"]["val_accuracy_mean"] == pytest.approx(c["val_accuracy_mean"])
    assert Path(doc["checkpoint"]).name == c["checkpoint"]
    r = hpsearch(argv("best --study smoke"), fresh)
    assert yaml.safe_load(r.stdout)["confirmed_winner"] == winner.number

    # status and trials --csv show it
    r = hpsearch(argv("status --study smoke"), fresh)
    assert f"confirmed: trial {winner.number}, val_accuracy" in r.stdout, r.stdout
    r = hpsearch(argv("trials --study smoke --csv trials.csv"), fresh)
    assert r.returncode == 0, r.stderr
    df = pd.read_csv(fresh / "trials.csv").set_index("number")
    for col in ("confirm_val_accuracy_mean", "confirm_val_accuracy_std", "confirm_n"):
        assert df.loc[winner.number, f"user_attrs_{col}"] == pytest.approx(rows[winner.number][col])
    assert len(json.loads(df.loc[winner.number, "user_attrs_confirm_runs"])) == 2

    # export, evaluate and predict use the confirmed checkpoint
    r = hpsearch(argv("export --study smoke --confirmed --format torchscript --output m.pt"), fresh)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"exported confirmed trial {winner.number} (val_accuracy ")
    model = torch.jit.load(str(fresh / "m.pt"))
    assert model(torch.rand(1, 3, 32, 32)).shape == (1, 2)
    r = hpsearch(argv("evaluate --study smoke --confirmed --data unseen"), fresh)
    assert r.returncode == 0, r.stderr
    kept = next(x for x in rows[winner.number]["confirm_runs"] if x.get("kept"))
    assert f"accuracy {kept['test_accuracy']:.4f} on 30 images" in r.stdout  # the same model
    photo = sorted((fresh / "unseen" / "cat").iterdir())[0]
    r = hpsearch(["predict", "--study", "smoke", "--confirmed", str(photo)], fresh)
    assert r.returncode == 0 and r.stdout.startswith(str(photo)), r.stderr

    # serve --confirmed answers with the confirmed checkpoint, and says so on /model
    from serving import start, stops_cleanly

    proc, base = start("--study smoke --confirmed --device cpu", fresh, fresh / "serve.log")
    try:
        with urllib.request.urlopen(f"{base}/model", timeout=30) as resp:
            info = json.load(resp)
    finally:
        lines = stops_cleanly(proc, signal.SIGINT, fresh / "serve.log")
    assert lines[0].startswith(f"serving trial {winner.number} of study 'smoke'")
    assert info["trial"] == winner.number
    assert info["confirmed_val_accuracy"]["mean"] == pytest.approx(c["val_accuracy_mean"])
    r = hpsearch(argv("serve --study smoke --confirmed --trial 0"), fresh)
    one_line_error(r, "--confirmed and --trial")

    # again: nothing left to train, the same winner
    r = hpsearch(argv("confirm --study smoke --top 2 --seeds 2"), fresh)
    assert r.returncode == 0, r.stderr
    assert "4 of 4 runs recorded already" in r.stdout and "epoch 1/" not in r.stdout
    assert study_of(fresh).user_attrs["confirmed"]["trial"] == winner.number


def test_confirm_resumes_after_ctrl_c(fresh: Path) -> None:
    args = argv("confirm --study smoke --top 2 --seeds 2 --set train.epochs=4")
    proc = popen(args, fresh)
    assert proc.stdout is not None
    for line in proc.stdout:
        if "run 1 (seed" in line and "epoch 2/4" in line and "[confirm 1/4" in line:
            break  # the second job, mid-run
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "Traceback" not in rest and "run the same command again to resume" in rest
    study = study_of(fresh)
    recorded = [len(t.user_attrs.get("confirm_runs", [])) for t in study.trials]
    assert sum(recorded) == 1  # the finished run is kept; the stopped one is not
    assert study.user_attrs["confirm_claims"] == {}  # its claim was released
    assert "confirmed" not in study.user_attrs

    r = hpsearch(args, fresh)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 of 4 runs recorded already" in r.stdout
    assert r.stdout.count("finished: val_acc") == 3  # only what was missing
    study = study_of(fresh)
    for t in ranked(study)[:2]:
        seeds = [x["seed"] for x in t.user_attrs["confirm_runs"]]
        assert sorted(seeds) == sorted({confirm_seed(t.user_attrs["seed"], i) for i in range(2)})
        assert all(x["setup"]["epochs"] == 4 for x in t.user_attrs["confirm_runs"])
    assert "confirmed" in study.user_attrs

    # the same trials with other settings would mix two setups in one mean
    r = hpsearch(argv("confirm --study smoke --top 2 --seeds 3"), fresh)
    one_line_error(r, "has confirm runs with another setup (epochs 4 then, 2 now)")


@pytest.mark.parametrize("workers", [1, 2])
def test_confirm_stops_at_its_deadline_and_resumes(fresh: Path, workers: int) -> None:
    """confirm --timeout: the runs going at the deadline finish and are recorded, none starts
    after it, no winner is recorded, and the same command resumes. Each worker is frozen
    (SIGSTOP) after its first run's first epoch until the deadline has passed, so that the
    deadline falls inside those runs however fast the machine is."""
    args = argv(f"confirm --study smoke --top 2 --seeds 2 --set train.epochs=4 --workers {workers}")
    proc = popen([*args, "--timeout", "15s"], fresh)
    assert proc.stdout is not None
    seen: list[str] = []
    pids = [proc.pid] if workers == 1 else []
    frozen: set[str] = set()
    deadline = None
    for line in proc.stdout:
        seen.append(line)
        # the deadline was set before the first line: it is before this
        deadline = deadline or time.time() + 15
        m = re.match(r"\[w\d\] started pid (\d+)", line)
        if m:
            pids.append(int(m[1]))
        if "epoch 1/4" in line and "run 1 (seed" in line:
            who = line.split()[0] if workers > 1 else "here"
            if who not in frozen:
                os.kill(pids[int(who[2:-1])] if workers > 1 else proc.pid, signal.SIGSTOP)
                frozen.add(who)
        if len(frozen) == workers:
            break
    assert deadline is not None and len(frozen) == workers, "".join(seen)
    while time.time() < deadline + 0.5:
        time.sleep(0.1)
    for pid in pids:
        os.kill(pid, signal.SIGCONT)
    rest, _ = proc.communicate(timeout=120)
    text = "".join(seen) + rest
    assert proc.returncode == 1, text
    assert "Traceback" not in text and "deadline passed: no new confirm run starts" in text
    assert (
        "deadline reached after " in text
        and f": {workers} of 4 confirm runs recorded, {4 - workers} not started, so no winner "
        "is recorded yet; run the same command again to resume"
        in text
    ), text
    study = study_of(fresh)
    recorded = [len(t.user_attrs.get("confirm_runs", [])) for t in study.trials]
    assert sum(recorded) == workers  # the runs going at the deadline, each recorded once
    assert study.user_attrs["confirm_claims"] == {}
    assert "confirmed" not in study.user_attrs

    r = hpsearch(args, fresh)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{workers} of 4 runs recorded already" in r.stdout
    assert r.stdout.count("finished: val_acc") == 4 - workers
    assert "confirmed" in study_of(fresh).user_attrs


def test_a_stopped_confirm_keeps_the_recorded_winners_checkpoint(fresh: Path) -> None:
    """Confirm once (winner file A), then confirm with more seeds and kill it after a better
    run replaced A as its trial's kept model: A must stay until the next winner is recorded, so
    that --confirmed keeps working (it was deleted, and serve/export/predict --confirmed
    failed), and be removed once the new winner is recorded."""
    from hpsearch.storage.state import write_attrs

    assert hpsearch(argv("confirm --study smoke --top 1 --seeds 1"), fresh).returncode == 0
    study = study_of(fresh)
    c = study.user_attrs["confirmed"]
    store = fresh / "hpsearch-artifacts"
    a_file = store / c["checkpoint"]
    assert a_file.is_file()
    # make any new run better than the kept one, so that the next run replaces A
    t = study.trials[c["trial"]]
    runs = [{**x, "val_accuracy": 0.0} for x in t.user_attrs["confirm_runs"]]
    write_attrs(study, t, {"confirm_runs": runs})

    proc = popen(argv("confirm --study smoke --top 1 --seeds 3"), fresh)
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if "run 3 (seed" in line and "epoch 1/" in line:
            break  # run 2 finished and was kept in A's place; the winner is not yet recorded
    proc.kill()
    assert "run 3 (seed" in seen[-1], "".join(seen)
    proc.wait(timeout=30)
    study = study_of(fresh)
    assert study.trials[c["trial"]].user_attrs["confirm_checkpoint"] != c["checkpoint"]
    assert study.user_attrs["confirmed"]["checkpoint"] == c["checkpoint"]
    assert a_file.is_file()  # the recorded winner's file is still there
    r = hpsearch(argv("best --study smoke --confirmed"), fresh)
    assert r.returncode == 0 and str(a_file) in r.stdout, r.stdout + r.stderr
    r = hpsearch(argv("export --study smoke --confirmed --format torchscript --output m.pt"), fresh)
    assert r.returncode == 0, r.stdout + r.stderr

    r = hpsearch(argv("confirm --study smoke --top 1 --seeds 3"), fresh)
    assert r.returncode == 0, r.stdout + r.stderr
    new = study_of(fresh).user_attrs["confirmed"]["checkpoint"]
    assert new != c["checkpoint"] and (store / new).is_file()
    assert not a_file.exists()  # removed once the new winner was recorded: nothing leaks


def test_fewer_seeds_than_recorded_count_only_their_runs(fresh: Path) -> None:
    """Runs an earlier, larger --seeds left stay recorded, but a confirm with fewer seeds shows
    and judges its own (it showed "2/1 runs" and a winner "over 2 seeds")."""
    assert hpsearch(argv("confirm --study smoke --top 1 --seeds 2"), fresh).returncode == 0
    r = hpsearch(argv("confirm --study smoke --top 1 --seeds 1"), fresh)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 of 1 runs recorded already" in r.stdout
    assert re.search(r"^\s+\d+\s+[\d.]+\s+[\d.]+ ± [\d.]+\s+1/1  <- winner$", r.stdout, re.M)
    assert "over 1 seed (the search" in r.stdout and "over 1 seeds" not in r.stdout
    assert study_of(fresh).user_attrs["confirmed"]["n"] == 1


def test_confirm_with_two_workers(fresh: Path) -> None:
    r = hpsearch(argv("confirm --study smoke --top 2 --seeds 2 --workers 2"), fresh)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "[w0] started pid" in r.stdout and "[w1] started pid" in r.stdout
    ran = {line.split()[0] for line in r.stdout.splitlines() if "finished: val_acc" in line}
    assert ran == {"[w0]", "[w1]"}  # both took jobs
    study = study_of(fresh)
    for t in ranked(study)[:2]:
        seeds = [x["seed"] for x in t.user_attrs["confirm_runs"]]
        assert len(seeds) == len(set(seeds)) == 2  # each job once
    assert study.user_attrs["confirmed"]["n"] == 2


def test_confirm_on_postgresql(workdir: Path, pg_url: str) -> None:
    r = hpsearch(
        argv(f"run --study smoke --trials 2 --pruner none {TINY} --storage {pg_url}"), workdir
    )
    assert r.returncode == 0, r.stderr
    r = hpsearch(argv(f"confirm --study smoke --top 1 --seeds 2 --storage {pg_url}"), workdir)
    assert r.returncode == 0, r.stdout + r.stderr
    study = optuna.load_study(study_name="smoke", storage=pg_url)
    best = ranked(study)[0]
    assert best.user_attrs["confirm_n"] == 2 and len(best.user_attrs["confirm_runs"]) == 2
    assert study.user_attrs["confirmed"]["trial"] == best.number
    r = hpsearch(argv(f"best --study smoke --confirmed --storage {pg_url}"), workdir)
    assert r.returncode == 0 and yaml.safe_load(r.stdout)["trial"] == best.number, r.stderr


@pytest.mark.parametrize(
    ("line", "needles"),
    [
        ("best --study smoke --confirmed", ("has no confirmed trial yet", "hpsearch confirm")),
        ("export --study smoke --confirmed --format onnx --output m.onnx", ("no confirmed",)),
        ("evaluate --study smoke --confirmed --data unseen", ("no confirmed trial yet",)),
        (
            "export --study smoke --confirmed --trial 0 --format torchscript --output m.pt",
            ("--confirmed and --trial",),
        ),
        ("confirm --study smoke --data nowhere", ("nowhere is not a directory",)),
        ("confirm --study smoke --data wrong", ("bird are not classes of the study",)),
        ("confirm --study smoke --top 0", ("--top: must be at least 1",)),
        ("confirm --study smoke --seeds two", ("--seeds: expected a whole number",)),
        ("confirm --study smoke --seeds 3000000", ("--seeds: at most 1000",)),
        ("confirm --study smoke --data ''", ("--data: empty path",)),
        ("confirm --study nostudy", ("no study named 'nostudy'",)),
        ("confirm --study smoke --set train.epochs=zero", ("train.epochs",)),
    ],
)
def test_confirm_mistakes_are_one_line(searched: Path, line: str, needles: tuple[str, ...]) -> None:
    photo = next((searched / "unseen" / "cat").iterdir())
    for cls in ("cat", "bird"):  # a bird is not a class of the study
        (searched / "wrong" / cls).mkdir(parents=True, exist_ok=True)
        shutil.copy(photo, searched / "wrong" / cls)
    before = (searched / "hpsearch.db").read_bytes()
    r = hpsearch(argv(line), searched)
    one_line_error(r, *needles)
    assert (searched / "hpsearch.db").read_bytes() == before  # nothing written


def test_a_test_set_that_does_not_decode_stops_confirm_before_training(searched: Path) -> None:
    for cls in ("cat", "dog"):  # files that are no photos
        (searched / "broken" / cls).mkdir(parents=True, exist_ok=True)
        (searched / "broken" / cls / "not-a-photo.jpg").write_text("text, not a JPEG")
    before = (searched / "hpsearch.db").read_bytes()
    r = hpsearch(argv("confirm --study smoke --data broken"), searched)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert (
        lines[-1].startswith("hpsearch: error: class folder") and "no readable image" in lines[-1]
    )
    assert "skipped 2 unreadable file(s)" in r.stderr and "Traceback" not in r.stderr
    assert "epoch" not in r.stdout  # found before any run trained (was after every run)
    assert (searched / "hpsearch.db").read_bytes() == before


def test_confirm_without_a_database(tmp_path: Path) -> None:
    one_line_error(hpsearch(argv("confirm --study smoke"), tmp_path), "no database at")
    assert not (tmp_path / "hpsearch.db").exists()


def test_confirm_a_study_without_completed_trials(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'x.db'}"
    optuna.create_study(study_name="smoke", storage=db, direction="maximize")
    one_line_error(
        hpsearch(argv(f"confirm --study smoke --storage {db}"), tmp_path),
        "has no completed trial to confirm",
    )
