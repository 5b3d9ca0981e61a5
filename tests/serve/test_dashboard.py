"""hpsearch dashboard: the real server on a real smoke study, read by a real headless Chromium."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest

from conftest import argv, hpsearch
from hpsearch.results.read import ranked

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--window-size=1400,1000",
    "--virtual-time-budget=20000",  # ms of page time for the SPA to fetch and render
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def get_json(url: str) -> dict[str, object]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        data: dict[str, object] = json.load(resp)
        return data


@pytest.fixture(scope="module")
def dashboard(smoke_study: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``hpsearch dashboard --study smoke`` on a free port; yields its base URL."""
    port = free_port()
    log = tmp_path_factory.mktemp("dashboard") / "dashboard.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hpsearch.cli", *argv(f"dashboard --study smoke --port {port}")],
            cwd=smoke_study,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                get_json(f"{base}/api/studies")
                break
            except OSError:
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.3)
        yield base
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C: the server stops cleanly
        code = proc.wait(timeout=10)
        text = log.read_text()
        assert code == 0, text
        assert "Traceback" not in text, text
        first = text.splitlines()[0]
        assert first.startswith("optuna-dashboard for sqlite:///hpsearch.db (checkpoints in ")
        assert f"at {base}/dashboard/studies/1; Ctrl-C stops it" in first


def page_text(dom: str) -> str:
    dom = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", dom)).split())


def chromium(*args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    return subprocess.run(
        [CHROMIUM, *CHROMIUM_FLAGS, *args], capture_output=True, text=True, timeout=120
    )


def test_api_lists_the_study(dashboard: str, smoke_study: Path) -> None:
    studies = get_json(f"{dashboard}/api/studies")["study_summaries"]
    assert isinstance(studies, list)
    assert [s["study_name"] for s in studies] == ["smoke"]
    detail = get_json(f"{dashboard}/api/studies/1?after=0")
    trials = detail["trials"]
    assert isinstance(trials, list) and len(trials) == 3
    study = optuna.load_study(
        study_name="smoke", storage=f"sqlite:///{smoke_study / 'hpsearch.db'}"
    )
    best = ranked(study)[0]
    (row,) = [t for t in trials if t["number"] == best.number]
    assert [a["filename"] for a in row["artifacts"]] == [f"trial-{best.number}-checkpoint.pt"]
    # the dashboard serves the checkpoint file from hpsearch's artifact store
    artifact = row["artifacts"][0]["artifact_id"]
    with urllib.request.urlopen(
        f"{dashboard}/artifacts/1/{row['trial_id']}/{artifact}", timeout=10
    ) as resp:
        assert resp.read() == (smoke_study / "hpsearch-artifacts" / artifact).read_bytes()


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs it)")
def test_study_page_renders_in_chromium(dashboard: str, smoke_study: Path, tmp_path: Path) -> None:
    study = optuna.load_study(
        study_name="smoke", storage=f"sqlite:///{smoke_study / 'hpsearch.db'}"
    )
    best = ranked(study)[0]
    page = f"{dashboard}/dashboard/studies/1"
    r = chromium("--dump-dom", page)
    text = page_text(r.stdout)
    assert "smoke (id=1)" in text, r.stderr[-2000:]
    assert f"Best Trial (number={best.number})" in text
    assert "Intermediate values" in text  # the per-epoch plot, one line per trial
    assert "val_accuracy" in text  # the metric's name (study.set_metric_names), not "Objective 0"
    for n in range(3):
        assert f"trial #{n}" in text
    assert "Hyperparameter Importance" in text and "lr_decay_gamma" in text

    shot = tmp_path / "dashboard.png"
    r = chromium(f"--screenshot={shot}", page)
    assert shot.is_file() and shot.stat().st_size > 20_000, r.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs it)")
def test_trial_page_shows_values_and_checkpoint(dashboard: str, smoke_study: Path) -> None:
    study = optuna.load_study(
        study_name="smoke", storage=f"sqlite:///{smoke_study / 'hpsearch.db'}"
    )
    best = ranked(study)[0]
    r = chromium("--dump-dom", f"{dashboard}/dashboard/studies/1/trials?numbers={best.number}")
    text = page_text(r.stdout)
    assert f"Trial {best.number} (trial_id=" in text, r.stderr[-2000:]
    values = " ".join(f"{step} {v}" for step, v in sorted(best.intermediate_values.items()))
    assert f"Intermediate Values {values}" in text
    assert f"checkpoint {best.user_attrs['checkpoint']}" in text  # the user attribute
    assert f"Artifacts trial-{best.number}-checkpoint.pt" in text


def test_all_interfaces_warns_and_a_taken_port_is_one_line(smoke_study: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = hpsearch(argv(f"dashboard --study smoke --host 0.0.0.0 --port {port}"), smoke_study)
    assert r.returncode == 1
    assert "listens on all interfaces (0.0.0.0)" in r.stderr
    assert f"hpsearch: error: cannot serve the dashboard on 0.0.0.0:{port}" in r.stderr
    assert "Traceback" not in r.stderr


def test_an_unresolvable_host_says_so(smoke_study: Path) -> None:
    """It suggested --port."""
    r = hpsearch(argv("dashboard --study smoke --host no.such.host.invalid"), smoke_study)
    assert r.returncode == 1, r.stdout
    assert r.stderr.startswith("hpsearch: error: --host no.such.host.invalid: cannot resolve")
    assert len(r.stderr.splitlines()) == 1 and "--port" not in r.stderr, r.stderr
