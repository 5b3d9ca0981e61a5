"""serve --confirmed describes the model it serves: a confirm run's checkpoint, with that run's
own provenance on GET /model and on the page, never the search trial's."""

from __future__ import annotations

import hashlib
import shutil
import signal
from pathlib import Path

import optuna
import pytest

from conftest import argv, hpsearch
from serving import get, start, stops_cleanly

pytestmark = pytest.mark.slow


def test_confirmed_provenance_is_the_confirm_runs(smoke_study: Path, tmp_path: Path) -> None:
    work = tmp_path / "copy"
    shutil.copytree(smoke_study, work)
    r = hpsearch(argv("confirm --study smoke --top 1 --seeds 1"), work)
    assert r.returncode == 0, r.stdout + r.stderr
    study = optuna.load_study(study_name="smoke", storage=f"sqlite:///{work / 'hpsearch.db'}")
    c = study.user_attrs["confirmed"]
    trial = study.trials[c["trial"]]
    (run,) = trial.user_attrs["confirm_runs"]
    assert run["kept"] and run["seed"] == c["seed"] != trial.user_attrs["seed"]

    log = tmp_path / "serve.log"
    proc, base = start("--study smoke --confirmed --device cpu", work, log)
    try:
        info = get(f"{base}/model")
        page = get(f"{base}/")
    finally:
        lines = stops_cleanly(proc, signal.SIGINT, log)
    n, seed = trial.number, c["seed"]
    assert lines[0].startswith(
        f"serving trial {n} of study 'smoke' (confirm run 1, seed {seed}, val_accuracy "
        f"{run['val_accuracy']:.4f}, "
    )

    assert info["trial"] == n and info["source"] == f"confirm run 1 of trial {n} (seed {seed})"
    assert info["val_accuracy"] == run["val_accuracy"]  # the run's own, not the search's
    assert info["search_val_accuracy"] == trial.value
    ckpt = info["checkpoint"]
    path = Path(ckpt["path"])
    assert path == work / "hpsearch-artifacts" / c["checkpoint"]
    assert ckpt["artifact_id"] == c["checkpoint"] != trial.user_attrs["checkpoint"]
    assert ckpt["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert ckpt["confirm_run"] == {"trial": n, "run": 1, "seed": seed}
    assert ckpt["seed"] == seed
    assert ckpt["finished"] == run["finished"] and run["finished"] is not None
    assert trial.datetime_complete is not None
    search_finished = trial.datetime_complete.astimezone().isoformat(timespec="seconds")
    assert ckpt["finished"] > search_finished  # confirm ran after the search
    assert ckpt["device"] == run["device"] and ckpt["worker"] == run["worker"]
    assert ckpt["worker"] != trial.user_attrs["worker"]  # another process trained it
    assert "torch" in ckpt["versions"]
    assert info["confirmed_val_accuracy"]["mean"] == pytest.approx(c["val_accuracy_mean"])

    assert (
        f'<p class="meta" id="meta">study smoke, confirm run 1 of trial {n} (seed {seed}; val '
        f"accuracy {run['val_accuracy']:.4f}; trial {n} confirmed {c['val_accuracy_mean']:.4f} "
        f"± {c['val_accuracy_std']:.4f}), 32px, classes cat, dog</p>"
    ) in page
    assert (
        f'<p class="meta" id="provenance">checkpoint {c["checkpoint"]} (sha256 '
        f"{ckpt['sha256'][:12]}...), seed {seed}, finished {run['finished']}</p>"
    ) in page
