"""Talking to a real ``hpsearch serve`` in a subprocess: start it on a free port, stop it, and
POST or GET over HTTP (shared by the serve tests and the pre-move study's)."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from conftest import argv


def start(args: str, cwd: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """``hpsearch serve ARGS --port 0`` in the background; (process, base URL) once it listens."""
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hpsearch.cli", "serve", *argv(args), "--port", "0"],
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    deadline = time.monotonic() + 120
    while " at http://127.0.0.1:" not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(log.read_text())
        time.sleep(0.2)
    first = log.read_text().splitlines()[0]
    return proc, first.split(" at ", 1)[1].split("/ ", 1)[0]


def stops_cleanly(proc: subprocess.Popen[bytes], sig: signal.Signals, log: Path) -> list[str]:
    """Send ``sig``; the server must exit 0 with no traceback. Returns its output lines."""
    proc.send_signal(sig)
    code = proc.wait(timeout=30)
    text = log.read_text()
    assert code == 0, text
    assert "Traceback" not in text and "Warning" not in text, text
    lines = text.splitlines()
    assert lines[-1] == "stopped", text
    return lines


def multipart(files: list[tuple[str, bytes]], field: str = "file") -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = b""
    for name, data in files:
        body += (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
                f'filename="{name}"\r\nContent-Type: application/octet-stream\r\n\r\n'
            ).encode()
            + data
            + b"\r\n"
        )
    body += f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def post(url: str, body: bytes, content_type: str | None) -> tuple[int, Any]:
    """(status, decoded JSON) of a POST on a keep-alive connection (http.client: urllib sends
    ``Connection: close``, and a server that refuses a large body early then closes while the
    client is still sending it)."""
    host, rest = url.removeprefix("http://").split("/", 1)
    conn = http.client.HTTPConnection(host, timeout=60)
    try:
        headers = {"Content-Type": content_type} if content_type else {}
        conn.request("POST", f"/{rest}", body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=60) as r:
        assert r.status == 200
        return json.load(r) if "json" in r.headers["content-type"] else r.read().decode()
