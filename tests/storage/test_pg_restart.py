"""PostgreSQL stopped and started again in the middle of a real search with two workers."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from conftest import popen

pytestmark = pytest.mark.slow

CLUSTERS = Path("/etc/postgresql")


def _pg_ctl(action: str) -> None:
    version = sorted(p.name for p in CLUSTERS.iterdir())[0]
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action],
        check=True,
        capture_output=True,
        timeout=60,
    )


@pytest.mark.skipif(
    shutil.which("pg_ctlcluster") is None or not CLUSTERS.is_dir(),
    reason="needs a local PostgreSQL cluster this test may stop and start",
)
def test_workers_ride_out_a_database_restart(workdir: Path, pg_url: str) -> None:
    proc = popen(
        [
            "run",
            "--study",
            "smoke",
            "--trials",
            "6",
            "--workers",
            "2",
            "--storage",
            pg_url,
            "--heartbeat",
            "5",
            "--set",
            "train.epochs=4",
            "--set",
            "data.max_per_class=60",
            "--set",
            "data.val_max_per_class=30",
        ],
        workdir,
    )
    lines: list[str] = []
    first_done = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "finished:" in line:
                first_done.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert first_done.wait(300), "".join(lines)
        restarted_at = len(lines)
        _pg_ctl("stop")
        time.sleep(4)  # workers keep training and reporting into a dead server
    finally:
        _pg_ctl("start")
    assert proc.wait(timeout=300) == 0, "".join(lines)
    reader.join(timeout=10)
    out = "".join(lines)
    assert "database connection lost" in out  # a storage call hit the outage and was retried
    assert any("finished:" in line for line in lines[restarted_at:]), out
    study = optuna.load_study(study_name="smoke", storage=pg_url)
    trials = study.get_trials(deepcopy=False)
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == 6
    assert all(t.state != TrialState.RUNNING for t in trials)
