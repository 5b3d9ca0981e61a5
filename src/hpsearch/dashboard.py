"""optuna-dashboard in this process, on the study's storage and checkpoint store.

Running it in-process (``optuna_dashboard.run_server``) keeps the database URL, and any
password in it, off every command line that ``ps`` would show.
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import optuna

from hpsearch.artifacts import AtomicArtifactStore
from hpsearch.errors import HpsearchError

log = logging.getLogger("hpsearch")
ALL_INTERFACES = ("0.0.0.0", "::", "")


def dashboard_url(host: str, port: int, study_id: int | None = None) -> str:
    """The address to open in a browser (for a wildcard bind: this machine's name)."""
    shown = socket.gethostname() if host in ALL_INTERFACES else host
    if ":" in shown:  # an IPv6 literal
        shown = f"[{shown}]"
    path = "/dashboard" + (f"/studies/{study_id}" if study_id is not None else "")
    return f"http://{shown}:{port}{path}"


def serve(
    storage: optuna.storages.BaseStorage,
    host: str,
    port: int,
    artifacts: Path,
) -> None:
    """Serve until Ctrl-C (or SIGTERM); a port that cannot be bound is a one-line error."""
    import optuna_dashboard

    if host in ALL_INTERFACES:
        log.warning(
            "the dashboard listens on all interfaces (%s): anyone who can reach this machine "
            "can read and change the studies, and it has no login; prefer the default "
            "127.0.0.1 with an SSH tunnel",
            host or "*",
        )
    try:
        optuna_dashboard.run_server(
            storage, host=host, port=port, artifact_store=AtomicArtifactStore(artifacts)
        )
    except OSError as e:
        raise HpsearchError(
            f"cannot serve the dashboard on {host}:{port}: {e.strerror or e} (try --port N)"
        ) from None
