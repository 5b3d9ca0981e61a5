"""optuna-dashboard in this process, on the study's storage and checkpoint store.

Running it in-process (``optuna_dashboard.wsgi`` on a wsgiref server) keeps the database URL,
and any password in it, off every command line that ``ps`` would show.
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import optuna

from hpsearch.errors import HpsearchError
from hpsearch.storage.artifacts import AtomicArtifactStore

log = logging.getLogger("hpsearch")
ALL_INTERFACES = ("0.0.0.0", "::", "")


def dashboard_url(host: str, port: int, study_id: int | None = None) -> str:
    """The address to open in a browser (for a wildcard bind: this machine's name)."""
    shown = socket.gethostname() if host in ALL_INTERFACES else host
    if ":" in shown:  # an IPv6 literal
        shown = f"[{shown}]"
    path = "/dashboard" + (f"/studies/{study_id}" if study_id is not None else "")
    return f"http://{shown}:{port}{path}"


def bind_error(what: str, host: str, port: int, e: OSError | OverflowError) -> HpsearchError:
    """The one line for an address ``what`` (serve, the dashboard) cannot listen on: a host
    name that does not resolve is said to be one (a ``--port`` hint would mislead)."""
    why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
    if isinstance(e, socket.gaierror):
        return HpsearchError(f"--host {host}: cannot resolve this address ({why})")
    return HpsearchError(f"cannot {what} on {host}:{port}: {why} (try --port N)")


class _Quiet(WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Every request on stderr would bury hpsearch's own lines; errors are still logged."""


def bind(storage: optuna.storages.BaseStorage, host: str, port: int, artifacts: Path) -> WSGIServer:
    """optuna-dashboard's app on a bound socket. Binding comes before anything is announced,
    so a busy port or a bad address is one line and no "Listening on" is printed first."""
    import optuna_dashboard

    if host in ALL_INTERFACES:
        log.warning(
            "the dashboard listens on all interfaces (%s): anyone who can reach this machine "
            "can read and change the studies, and it has no login; prefer the default "
            "127.0.0.1 with an SSH tunnel",
            host or "*",
        )
    app = optuna_dashboard.wsgi(storage, artifact_store=AtomicArtifactStore(artifacts))
    server_class = _IPv6Server if ":" in host else WSGIServer
    try:
        return make_server(host, port, app, server_class, _Quiet)
    except (OSError, OverflowError) as e:
        raise bind_error("serve the dashboard", host, port, e) from None


class _IPv6Server(WSGIServer):
    address_family = socket.AF_INET6


def serve(server: WSGIServer) -> None:
    """Serve until Ctrl-C (or SIGTERM), which ends it quietly."""
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
