"""docker-compose.yml and the Dockerfile hold what a GPU deployment needs (no Docker here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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


def test_worker_reserves_a_gpu_mounts_data_read_only_and_reads_storage_from_env() -> None:
    w = compose()["services"]["worker"]
    (device,) = w["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert any(v.endswith(":/data:ro") for v in w["volumes"])
    assert w["environment"]["HPSEARCH_STORAGE"].startswith("postgresql://")
    assert "ports" not in w and "container_name" not in w  # scalable: --scale worker=N
    assert w["command"][0] == "worker"


def test_dockerfile_installs_the_project_and_runs_hpsearch() -> None:
    text = (REPO / "Dockerfile").read_text()
    assert "pip install ." in text and 'ENTRYPOINT ["hpsearch"]' in text
    assert "HPSEARCH_DATA=/data" in text
