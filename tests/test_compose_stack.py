"""docker-compose.yml started for real: the project's image built here, PostgreSQL, the
dashboard, a CPU worker and ``serve`` brought up, a smoke study run through the compose
PostgreSQL, the worker's process killed mid-trial (docker starts it again, its trial is run
again, the count comes out exact), then everything taken down (``down -v``) and the daemon this
test started stopped by its PID. The engine and the images: ``tests/dockerd.py``. Ports are
published on 127.0.0.1 only, on ports the kernel picks; the containers reach nothing outside
(no iptables rules, no NAT): all traffic stays between them and the host's loopback."""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import optuna
import pytest
from optuna.trial import TrialState

import dockerd

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
IMAGE = "hpsearch:latest"
TRIALS = 5
# The smoke study as its file has it. The run records a 2 s heartbeat in the study, which the
# worker takes too (each process judges a silent trial by its own interval); the worker is
# killed inside a trial, right after its first epoch, and its trial is found stale 3 heartbeats
# (6 s) later.
RUN = ["run", "--study", "smoke", "--trials", str(TRIALS), "--heartbeat", "2"]
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
T = TypeVar("T")


@pytest.fixture(scope="module")
def engine() -> Iterator[dockerd.Engine]:
    reason = dockerd.missing_tools()
    if reason is not None:
        pytest.skip(reason)
    e = dockerd.Engine()
    try:
        # the data root is this test's alone: what an interrupted run left goes first
        left = e.docker("ps", "-aq").stdout.split()
        if left:
            e.docker("rm", "-f", "-v", *left)
        e.docker("volume", "prune", "-f")
        e.docker("network", "prune", "-f")
        e.base_image()
        e.standins(dockerd.cpu_torch_wheel())
        e.build(IMAGE, REPO)
        yield e
    finally:
        pid = e.proc.pid
        e.stop()
        assert e.proc.poll() is not None
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
        leftover = [p for p in Path("/proc").glob("[0-9]*") if _mentions(p, str(e.run_dir))]
        assert not leftover, f"processes of the test's daemon left running: {leftover}"
        assert dockerd.mounts_under(e.run_dir) == [] and not e.run_dir.exists()


def _mentions(proc: Path, text: str) -> bool:
    try:
        return text.encode() in (proc / "cmdline").read_bytes()
    except OSError:
        return False


class Stack:
    """``docker compose`` on the repository's file, with an override that publishes every
    port on 127.0.0.1 at a port the kernel picks and names the project's bridge."""

    def __init__(self, engine: dockerd.Engine, tmp: Path, data: Path) -> None:
        self.engine = engine
        self.name = f"hpt{os.getpid()}"
        self.bridge = f"{self.name}br"[:15]
        # characters a URL would need escaped: the compose file hands it to libpq as PGPASSWORD
        self.password = f"p@ss:w/rd%{secrets.token_urlsafe(9)}"
        override = tmp / "override.yml"
        override.write_text(
            "services:\n"
            "  postgres:\n"
            '    ports: ["127.0.0.1::5432"]\n'
            "  dashboard:\n"
            '    ports: !override ["127.0.0.1::8080"]\n'
            "  serve:\n"
            '    ports: !override ["127.0.0.1::8000"]\n'
            "networks:\n"
            "  default:\n"
            "    driver_opts:\n"
            f"      com.docker.network.bridge.name: {self.bridge}\n"
        )
        self.files = ["-f", str(REPO / "docker-compose.yml"), "-f", str(override)]
        self.env = {
            **engine.env,
            "POSTGRES_PASSWORD": self.password,
            "HPSEARCH_DATA_DIR": str(data),
            "HPSEARCH_STUDY": "smoke",
        }

    def argv(self, *args: str) -> list[str]:
        return ["docker", "compose", "-p", self.name, *self.files, *args]

    def __call__(
        self, *args: str, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        return dockerd.run(self.argv(*args), self.env, timeout=timeout, check=check)

    def port(self, service: str, port: int) -> int:
        host, _, number = self("port", service, str(port)).stdout.strip().rpartition(":")
        assert host == "127.0.0.1", host
        return int(number)

    def container(self, service: str) -> str:
        (cid,) = self("ps", "-aq", service).stdout.split()
        return cid

    def inspect(self, cid: str, fmt: str) -> str:
        return self.engine.docker("inspect", "--format", fmt, cid).stdout.strip()

    def storage(self) -> str:
        port = self.port("postgres", 5432)
        password = urllib.parse.quote(self.password, safe="")
        return f"postgresql://hpsearch:{password}@127.0.0.1:{port}/hpsearch"


def wait_until(what: str, check: Callable[[], T], timeout: float, stack: Stack) -> T:
    """``check()`` once it is truthy, polled every second; after ``timeout`` s, an
    AssertionError naming ``what`` with the stack's last log lines."""
    end = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > end:
            logs = stack("logs", "--no-color", "--tail", "40", check=False).stdout
            raise AssertionError(f"{what}: not within {timeout:.0f} s\n{logs}")
        time.sleep(1)


def http(url: str, body: bytes | None = None, kind: str | None = None) -> tuple[int, bytes]:
    headers = {"Content-Type": kind} if kind else {}
    req = urllib.request.Request(url, data=body, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, b""


def test_the_compose_stack_runs_a_study_and_survives_a_killed_worker(
    engine: dockerd.Engine, tmp_path: Path, data_root: Path
) -> None:
    stack = Stack(engine, tmp_path, data_root)
    with dockerd.forward_allowed(stack.bridge):
        try:
            _exercise(stack, data_root)
        finally:
            logs = stack("logs", "--no-color", check=False).stdout
            stack("down", "-v", "--remove-orphans", "-t", "10", check=False)
        assert stack.password not in logs  # the URL in every log line is masked
        assert engine.docker("ps", "-aq").stdout.split() == []
        assert engine.docker("volume", "ls", "-q").stdout.split() == []
        networks = engine.docker("network", "ls", "--format", "{{.Name}}").stdout.split()
        assert sorted(networks) == ["host", "none"]


def _exercise(stack: Stack, data_root: Path) -> None:
    stack("up", "-d", "postgres", "dashboard", "worker", timeout=300)
    worker = stack.container("worker")
    waiting = lambda: "waiting" in stack("logs", "--no-color", "worker").stdout  # noqa: E731
    wait_until("the worker waits for the study", waiting, 120, stack)

    # the study and its budget, made by a one-off container that trains too
    run = subprocess.Popen(
        stack.argv("run", "--rm", "-T", "worker", *RUN),
        env=stack.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        # the worker's log as it comes: killed the moment a trial's first epoch is logged
        pid = int(stack.inspect(worker, "{{.State.Pid}}"))
        follow = subprocess.Popen(
            ["docker", "logs", "-f", worker], env=stack.env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        try:
            assert follow.stdout is not None
            m = None
            for line in follow.stdout:
                m = re.search(r"\] trial (\d+) epoch 1/", line)
                if m:
                    os.kill(pid, signal.SIGKILL)  # the worker dies mid-trial, as in a crash
                    break
        finally:
            follow.kill()
            follow.wait()
        assert m, stack("logs", "--no-color", "worker").stdout
        killed = int(m[1])
        study = optuna.load_study(study_name="smoke", storage=stack.storage())
        assert study.get_trials()[killed].state == TrialState.RUNNING  # killed inside it
        restarted = lambda: int(stack.inspect(worker, "{{.RestartCount}}")) >= 1  # noqa: E731
        wait_until("docker starts the killed worker again", restarted, 60, stack)
        out, _ = run.communicate(timeout=600)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == 0, out
    assert "Traceback" not in out

    # the exact count, read from the host through the published port
    study = optuna.load_study(study_name="smoke", storage=stack.storage())
    trials = study.get_trials()
    assert TrialState.RUNNING not in {t.state for t in trials}
    assert sum(t.state in FINISHED for t in trials) == TRIALS == study.user_attrs["target_trials"]
    assert trials[killed].state == TrialState.FAIL  # found stale, and run again
    (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == killed]
    assert retry.state in FINISHED and retry.params == trials[killed].params
    exited = lambda: stack.inspect(worker, "{{.State.Status}}") == "exited"  # noqa: E731
    wait_until("the worker exits once the budget is met", exited, 120, stack)
    assert stack.inspect(worker, "{{.State.ExitCode}}") == "0"

    # a checkpoint in the artifacts volume, as the dashboard's container sees it
    found = stack("exec", "-T", "dashboard", "find", "/artifacts", "-type", "f").stdout.split()
    assert found, "no checkpoint in the artifacts volume"

    # the dashboard answers, and lists the study
    base = f"http://127.0.0.1:{stack.port('dashboard', 8080)}"

    def studies() -> bytes | None:
        status, body = http(f"{base}/api/studies")
        return body if status == 200 else None

    listed = wait_until("the dashboard answers", studies, 60, stack)
    assert listed is not None
    assert "smoke" in {s["study_name"] for s in json.loads(listed)["study_summaries"]}

    # serve labels a photo with the study's best trial
    stack("up", "-d", "serve", timeout=120)
    served = f"http://127.0.0.1:{stack.port('serve', 8000)}"
    wait_until("serve is healthy", lambda: http(f"{served}/health")[0] == 200, 120, stack)
    photo = sorted((data_root / "val" / "dog").iterdir())[0]
    status, body = http(f"{served}/predict", photo.read_bytes(), "image/jpeg")
    assert status == 200, body
    answer = json.loads(body)
    assert answer["study"] == "smoke" and answer["trial"] == study.best_trial.number
    assert answer["predictions"][0]["label"] in {"cat", "dog"}
