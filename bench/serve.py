"""``hpsearch serve`` under load: requests per second and p50/p99 latency, batching on and off.

Starts two real servers (``hpsearch serve`` subprocesses on free 127.0.0.1 ports) on the same
trial, one with ``--max-batch 1`` (every request runs alone: batching off) and one with
``--max-batch 32`` (on), and sends each the same bounded number of ``POST /predict`` requests
with real photos at each concurrency, the arms taking turns in ``--rounds`` rounds of the same
run (the machine is shared and noisy: read the ratios). Without ``--storage``/``--study`` it
first makes the model: a one-trial smoke search at 64px in a temporary directory, whose trial 0
is the seed CNN.

    python bench/serve.py                                  # 2,000 requests at concurrency 1, 8, 32
    python bench/serve.py --requests 500 --concurrency 32
    python bench/serve.py --storage sqlite:///hpsearch.db --study catdog --trial 12

The client runs on the same cores as the servers, so it is kept cheap: plain asyncio streams
over keep-alive connections (``--client httpx`` uses httpx instead, at several times the CPU per
request); its CPU per request is printed under the table, and each row gives the server's own
CPU per request, which the machine's other load does not change.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("HPSEARCH_DATA", REPO.parent / "shared" / "data" / "catdog"))


@dataclass
class Row:
    """One arm at one concurrency, summed over its rounds."""

    concurrency: int
    arm: str
    requests: int = 0
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    images: int = 0
    batches: int = 0
    errors: int = 0
    server_cpu_s: float = 0.0  # the server process's CPU time over the row (user + system)

    @property
    def images_per_batch(self) -> float:
        return self.images / max(self.batches, 1)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def cpu_ms(self) -> float:
        """Server CPU per request: what the server costs, whatever else the machine runs."""
        return 1000 * self.server_cpu_s / self.requests

    def pct(self, q: float) -> float:
        lat = sorted(self.latencies_ms)
        return lat[min(len(lat) - 1, round(q * (len(lat) - 1)))]


def photos(data: Path, n: int) -> list[tuple[str, bytes]]:
    """The first ``n`` validation photos, alternating classes, as (name, bytes)."""
    split = data / "val" if (data / "val").is_dir() else data
    classes = sorted(d for d in split.iterdir() if d.is_dir())
    files = [sorted(c.iterdir())[: n // len(classes) + 1] for c in classes]
    mixed = [f for group in zip(*files, strict=False) for f in group][:n]
    return [(f.name, f.read_bytes()) for f in mixed]


def multipart(name: str, data: bytes) -> tuple[bytes, str]:
    """A ``multipart/form-data`` body with one field ``file``, and its content type."""
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()
    return (
        head + data + f"\r\n--{boundary}--\r\n".encode(),
        f"multipart/form-data; boundary={boundary}",
    )


def make_study(work: Path, data: Path, size: int) -> list[str]:
    """A one-trial smoke search (trial 0: the seed CNN) at ``size`` px; returns serve's args."""
    print(f"making the model: hpsearch run --study smoke --trials 1 at {size}px in {work} ...")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "hpsearch.cli",
            *("run", "--study", "smoke", "--trials", "1", "--pruner", "none"),
            *("--set", f"data.image_size={size}", "--set", f"data.root={data}"),
        ],
        cwd=work,
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        sys.exit(f"the smoke search failed:\n{r.stdout}{r.stderr}")
    return ["--study", "smoke", "--storage", f"sqlite:///{work / 'hpsearch.db'}"]


@dataclass
class Server:
    url: str
    pid: int

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process so far (Linux ``/proc``)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def server(study_args: list[str], max_batch: int, max_wait_ms: float) -> Iterator[Server]:
    """``hpsearch serve`` on a free port, stopped with Ctrl-C afterwards."""
    cmd = [
        sys.executable,
        "-m",
        "hpsearch.cli",
        "serve",
        *study_args,
        *("--port", "0", "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms)),
        *("--device", "cpu"),
    ]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()
    if " at http://" not in first:
        proc.kill()
        sys.exit(f"hpsearch serve did not start: {first}{proc.stdout.read()}")
    url = first.split(" at ", 1)[1].split("/ ", 1)[0]
    # keep draining its output so that a chatty server never blocks on a full pipe
    threading.Thread(target=proc.stdout.read, daemon=True).start()
    try:
        yield Server(url, proc.pid)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def health(url: str) -> dict[str, float]:
    with urllib.request.urlopen(f"{url}/health", timeout=30) as r:
        data: dict[str, float] = json.load(r)
        return data


async def _load_raw(
    url: str, bodies: list[tuple[bytes, str]], n: int, conc: int
) -> tuple[float, list[float], int]:
    """``conc`` keep-alive HTTP/1.1 connections written with asyncio streams: the cheapest
    client, so that the server, not the client, is what the machine's cores are spent on."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    requests = [
        (
            f"POST /predict HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {kind}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        + body
        for body, kind in bodies
    ]
    latencies: list[float] = []
    errors = 0
    next_i = 0

    async def worker() -> None:
        nonlocal next_i, errors
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            while next_i < n:
                request = requests[next_i % len(requests)]
                next_i += 1
                t = time.perf_counter()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                await reader.readexactly(length)
                latencies.append((time.perf_counter() - t) * 1000)
                errors += not head.startswith(b"HTTP/1.1 200 ")
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(conc)))
    return time.perf_counter() - start, latencies, errors


async def _load_httpx(
    url: str, bodies: list[tuple[bytes, str]], n: int, conc: int
) -> tuple[float, list[float], int]:
    try:
        import httpx
    except ImportError:
        sys.exit("--client httpx: httpx is not installed (pip install httpx)")

    latencies: list[float] = []
    errors = 0
    next_i = 0
    limits = httpx.Limits(max_connections=conc, max_keepalive_connections=conc)
    async with httpx.AsyncClient(limits=limits, timeout=120) as client:

        async def worker() -> None:
            nonlocal next_i, errors
            while next_i < n:
                body, kind = bodies[next_i % len(bodies)]
                next_i += 1
                t = time.perf_counter()
                r = await client.post(
                    f"{url}/predict", content=body, headers={"content-type": kind}
                )
                latencies.append((time.perf_counter() - t) * 1000)
                errors += r.status_code != 200

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(conc)))
        return time.perf_counter() - start, latencies, errors


CLIENTS = {"raw": _load_raw, "httpx": _load_httpx}


def load(
    client: str, url: str, bodies: list[tuple[bytes, str]], n: int, conc: int
) -> tuple[float, list[float], int]:
    return asyncio.run(CLIENTS[client](url, bodies, n, conc))


def measure(client: str, srv: Server, row: Row, bodies: list[tuple[bytes, str]], n: int) -> None:
    """Send ``n`` requests at the row's concurrency and add what they took to ``row``."""
    before, cpu = health(srv.url), srv.cpu_seconds()
    seconds, latencies, errors = load(client, srv.url, bodies, n, row.concurrency)
    cpu, after = srv.cpu_seconds() - cpu, health(srv.url)
    row.requests += n
    row.seconds += seconds
    row.latencies_ms += latencies
    row.errors += errors
    row.server_cpu_s += cpu
    row.images += int(after["images"] - before["images"])
    row.batches += int(after["batches"] - before["batches"])


def table(rows: list[Row], concurrencies: list[int]) -> str:
    by = {(r.concurrency, r.arm): r for r in rows}
    out = [
        "| concurrency | batching | req/s | p50 ms | p99 ms | images/batch "
        "| server CPU ms/request | req/s on/off | p99 on/off | server CPU off/on |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in concurrencies:
        off, on = by[(c, "off")], by[(c, "on")]
        for r in (off, on):
            ratios = (
                f"| {on.rps / off.rps:.2f}x | {on.pct(0.99) / off.pct(0.99):.2f}x "
                f"| {off.cpu_ms / on.cpu_ms:.2f}x |"
                if r is on
                else "| | | |"
            )
            out.append(
                f"| {c} | {r.arm} | {r.rps:.1f} | {r.pct(0.5):.1f} | {r.pct(0.99):.1f} "
                f"| {r.images_per_batch:.1f} | {r.cpu_ms:.2f} " + ratios
            )
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--storage", help="serve a study from this storage (default: make one)")
    ap.add_argument("--study", help="the study to serve (with --storage)")
    ap.add_argument("--trial", default="best", help="best or a trial number")
    ap.add_argument("--artifacts", help="checkpoint directory (with --storage)")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="photos: ROOT/val/<class>/")
    ap.add_argument("--image-size", type=int, default=64, help="for the search it makes")
    ap.add_argument("--requests", type=int, default=2000, help="requests per row")
    ap.add_argument("--warmup", type=int, default=100, help="requests before each row")
    ap.add_argument("--rounds", type=int, default=4, help="turns each arm takes per row")
    ap.add_argument("--concurrency", default="1,8,32", help="comma-separated")
    ap.add_argument("--photos", type=int, default=64, help="distinct photos sent in turn")
    ap.add_argument("--max-batch", type=int, default=32, help="the batching arm's --max-batch")
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument("--client", choices=sorted(CLIENTS), default="raw")
    args = ap.parse_args()
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    bodies = [multipart(name, data) for name, data in photos(args.data, args.photos)]

    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        if args.storage or args.study:
            if not (args.storage and args.study):
                sys.exit("--storage and --study go together")
            study_args = ["--study", args.study, "--storage", args.storage]
            if args.artifacts:
                study_args += ["--artifacts", args.artifacts]
        else:
            study_args = make_study(Path(tmp), args.data.resolve(), args.image_size)
        study_args += ["--trial", args.trial]
        rows: list[Row] = []
        t0 = resource.getrusage(resource.RUSAGE_SELF)
        with (
            server(study_args, 1, args.max_wait_ms) as off,
            server(study_args, args.max_batch, args.max_wait_ms) as on,
        ):
            with urllib.request.urlopen(f"{on.url}/model", timeout=30) as r:
                model = json.load(r)
            print(
                f"trial {model['trial']} of study {model['study']!r}: {model['image_size']}px, "
                f"{model['n_params']:,} parameters, on {model['device']}; {args.requests} "
                f"requests per row ({args.photos} photos in turn, one image per request, "
                f"{args.client} client), {args.warmup} warm-up requests before each; off: "
                f"--max-batch 1, on: --max-batch {args.max_batch} "
                f"--max-wait-ms {args.max_wait_ms:g}",
                flush=True,
            )
            for c in concurrencies:
                arms = {"off": (off, Row(c, "off")), "on": (on, Row(c, "on"))}
                for srv, _ in arms.values():
                    load(args.client, srv.url, bodies, args.warmup, c)
                # the arms take turns, in alternating order, so that a change in the machine's
                # other load falls on both
                for i in range(args.rounds):
                    order = AB if i % 2 == 0 else AB[::-1]
                    share = args.requests // args.rounds + (i < args.requests % args.rounds)
                    for arm in order:
                        measure(args.client, *arms[arm], bodies, share)
                for arm in AB:
                    row = arms[arm][1]
                    rows.append(row)
                    print(
                        f"  concurrency {c:>3} batching {arm:>3}: {row.rps:7.1f} req/s, p50 "
                        f"{row.pct(0.5):6.1f} ms, p99 {row.pct(0.99):6.1f} ms, "
                        f"{row.images_per_batch:.1f} images/batch, "
                        f"server CPU {row.cpu_ms:.2f} ms/request, {row.errors} errors",
                        flush=True,
                    )
        t1 = resource.getrusage(resource.RUSAGE_SELF)
    print()
    print(table(rows, concurrencies))
    client_cpu = (t1.ru_utime - t0.ru_utime) + (t1.ru_stime - t0.ru_stime)
    sent = len(rows) * (args.requests + args.warmup)
    print(
        f"\nclient ({args.client}): {1000 * client_cpu / sent:.2f} ms of CPU per request, on the "
        f"same {len(os.sched_getaffinity(0))} cores as the servers"
    )
    if 32 in concurrencies:
        off_32, on_32 = (next(r for r in rows if (r.concurrency, r.arm) == (32, a)) for a in AB)
        ratio, p99 = on_32.rps / off_32.rps, on_32.pct(0.99)
        verdict = "met" if ratio >= 2 and p99 < 250 else "missed"
        print(
            f"target at concurrency 32 (batching >= 2x the req/s of one at a time, p99 < 250 ms):"
            f" {verdict}: {ratio:.2f}x, p99 {p99:.1f} ms"
        )
    if any(r.errors for r in rows):
        sys.exit("some requests failed")


AB = ("off", "on")

if __name__ == "__main__":
    main()
