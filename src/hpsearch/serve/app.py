"""``hpsearch serve``: one trial's model behind HTTP, with concurrent requests batched.

``POST /predict`` takes one or several images (multipart field ``file``, repeatable, or one raw
image body) and answers the label and per-class probabilities of each; ``GET /model`` describes
the trial; ``GET /health`` is for orchestrators; ``GET /`` is a self-contained page.

Uploads are read and decoded by ``serve.upload`` (``engine.images``: the decode policy and code
path of ``hpsearch predict``), at most ``decode_pixels`` pixels at once (``serve.pixels``), and
run through ``engine.infer`` (normalisation, precision: bf16 autocast on CUDA, fp32 on the CPU),
so both give the same answer for the same file. Requests wait in an asyncio queue; one worker
takes up to ``max_batch`` images, waiting at most ``max_wait_ms`` for more after the first while
other requests are still arriving, and runs them as one batch in a single inference thread, so
the event loop keeps parsing and decoding the next requests meanwhile. Bad input is a 4xx with
``{"error": "<one line>"}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from optuna.trial import FrozenTrial
from starlette.exceptions import HTTPException
from torch import nn

from hpsearch.engine import infer
from hpsearch.engine.images import pixel_limit, refuse_decompression_bombs
from hpsearch.serve.dashboard import ALL_INTERFACES, bind_error
from hpsearch.serve.page import render_page
from hpsearch.serve.pixels import TRIM_AFTER_PIXELS, PixelBudget, give_back_memory
from hpsearch.serve.upload import BadInput, decode_opened, open_uploads, read_uploads
from hpsearch.storage.checkpoint import Checkpoint
from hpsearch.storage.state import (
    CHECKPOINT_ATTR,
    CONFIRM_RUNS,
    CONFIRM_VAL_MEAN,
    CONFIRM_VAL_STD,
    DEVICE_ATTR,
    LATENCY_DEVICE_ATTR,
    LATENCY_MS_ATTR,
    SEED_ATTR,
    VERSIONS_ATTR,
    WORKER_ATTR,
)

log = logging.getLogger("hpsearch")


DECODE_WAIT_S = 30.0  # the longest a request waits for its share of the pixel budget: then 503


@dataclass(frozen=True)
class Limits:
    max_upload_bytes: int
    max_batch: int  # images per forward pass (1: every request runs alone)
    max_wait_s: float  # how long the first request of a batch waits for company
    # pixels being decoded at once (serve.pixels): one image at the decode limit, or several
    # smaller ones; a request waits for its share at most decode_wait_s, then it is a 503
    decode_pixels: int = field(default_factory=pixel_limit)
    decode_wait_s: float = DECODE_WAIT_S


class Model:
    """The network in inference mode on its device: uint8 NHWC in, probabilities out."""

    def __init__(self, ckpt: Checkpoint, device: torch.device) -> None:
        if device.type == "cpu":
            # one inference thread runs beside the event loop: leave it a core
            torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) - 1))
        self.ckpt = ckpt
        self.device = device
        net: nn.Module = infer.prepare(ckpt.model(), device)
        self.net = net
        self.n_params = sum(p.numel() for p in net.parameters())
        s = ckpt.image_size
        self.probabilities(torch.zeros(1, s, s, 3, dtype=torch.uint8))  # warm-up

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """(N, S, S, 3) uint8 -> (N, classes) float softmax probabilities on the CPU, in one
        forward pass (the batcher sizes the batch)."""
        n = max(len(images), 1)
        return infer.probabilities(self.net, images, self.device, batch_size=n).cpu()


@dataclass
class _Job:
    images: torch.Tensor  # (n, S, S, 3) uint8
    done: asyncio.Future[torch.Tensor]


class Batcher:
    """Collects concurrent requests into batches for one inference thread.

    The first request of a batch waits up to ``max_wait_s`` for company, but only while other
    requests are still arriving (being received or decoded): a lone request runs at once, so
    batching costs nothing at concurrency 1, and the wait ends as soon as the last request that
    was arriving is queued or has failed.
    """

    def __init__(self, run: Callable[[torch.Tensor], torch.Tensor], limits: Limits) -> None:
        self.run = run
        self.limits = limits
        self.queue: asyncio.Queue[_Job] = asyncio.Queue()
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="hpsearch-infer")
        self.arriving = 0  # requests being received or decoded, not yet queued
        self.stirred = asyncio.Event()  # set when a request is queued or stops arriving
        self.batches = 0
        self.images = 0

    @contextlib.contextmanager
    def arrival(self) -> Iterator[None]:
        """Around reading and decoding a request, so that a batch knows to wait for it."""
        self.arriving += 1
        try:
            yield
        finally:
            self.arriving -= 1
            self.stirred.set()

    async def submit(self, images: torch.Tensor) -> torch.Tensor:
        done: asyncio.Future[torch.Tensor] = asyncio.get_running_loop().create_future()
        self.queue.put_nowait(_Job(images, done))
        self.stirred.set()
        return await done

    async def _collect(self, first: _Job) -> tuple[list[_Job], _Job | None]:
        """``first`` and what joins it within the wait; returns the jobs and one held over."""
        loop = asyncio.get_running_loop()
        jobs, n = [first], len(first.images)
        deadline = loop.time() + self.limits.max_wait_s
        while n < self.limits.max_batch:
            try:
                job = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                left = deadline - loop.time()
                if left <= 0 or not self.arriving:
                    break  # nothing is on its way (or the wait is over): run what we have
                self.stirred.clear()
                try:
                    await asyncio.wait_for(self.stirred.wait(), left)
                except TimeoutError:
                    break
                continue  # a request was queued, or one stopped arriving (it may have failed)
            if n + len(job.images) > self.limits.max_batch:
                return jobs, job  # it starts the next batch
            jobs.append(job)
            n += len(job.images)
        return jobs, None

    async def work(self) -> None:
        """Run forever (cancelled at shutdown)."""
        loop = asyncio.get_running_loop()
        held: _Job | None = None
        while True:
            first = held if held is not None else await self.queue.get()
            jobs, held = await self._collect(first)
            batch = torch.cat([j.images for j in jobs])
            try:
                probs = await loop.run_in_executor(self.executor, self.run, batch)
            except Exception as e:  # our bug: every waiting request gets a 500
                for j in jobs:
                    if not j.done.done():
                        j.done.set_exception(e)
                continue
            self.batches += 1
            self.images += len(batch)
            start = 0
            for j in jobs:
                if not j.done.done():  # a client that went away cancelled its future
                    j.done.set_result(probs[start : start + len(j.images)])
                start += len(j.images)


def model_info(
    trial: FrozenTrial,
    model: Model,
    storage: str,
    confirmed: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """What ``GET /model`` answers: the trial, its model, and where the checkpoint came from.

    ``confirmed`` is the study's record of ``hpsearch confirm``'s winner when that is what is
    served (``--confirmed``): the checkpoint is then one of its confirm runs, and every field of
    the provenance (artifact id, seed, finish time, device, versions, worker) is that run's,
    not the search trial's.
    """
    ckpt, attrs = model.ckpt, trial.user_attrs
    provenance = _run_provenance(trial, ckpt, confirmed) if confirmed is not None else None
    if provenance is None:
        source = f"search trial {ckpt.trial}"
        provenance = {
            "artifact_id": attrs.get(CHECKPOINT_ATTR),
            "finished": _local(trial.datetime_complete),
            **{
                k: attrs[k]
                for k in (SEED_ATTR, DEVICE_ATTR, VERSIONS_ATTR, WORKER_ATTR)
                if k in attrs
            },
        }
    else:
        run = provenance["confirm_run"]
        source = f"confirm run {run['run']} of trial {ckpt.trial} (seed {run['seed']})"
    info: dict[str, Any] = {
        "study": ckpt.study,
        "trial": ckpt.trial,
        "source": source,
        "val_accuracy": ckpt.value,  # the served model's own (a confirm run's, with --confirmed)
        "params": ckpt.params,
        "image_size": ckpt.image_size,
        "classes": list(ckpt.classes),
        "n_params": model.n_params,
        "device": str(model.device),
        "checkpoint": {
            "path": str(ckpt.path),
            "sha256": hashlib.sha256(ckpt.path.read_bytes()).hexdigest(),
            "storage": storage,
            **provenance,
        },
    }
    if confirmed is not None and trial.values:
        info["search_val_accuracy"] = trial.values[0]
    if CONFIRM_VAL_MEAN in attrs and CONFIRM_VAL_STD in attrs:
        info["confirmed_val_accuracy"] = {
            "mean": attrs[CONFIRM_VAL_MEAN],
            "std": attrs[CONFIRM_VAL_STD],
        }
    if LATENCY_MS_ATTR in attrs:  # measured after training (a deployment budget or an objective)
        info["latency_ms"] = {  # of the trial's architecture, which a confirm run shares
            "value": attrs[LATENCY_MS_ATTR],
            "device": attrs.get(LATENCY_DEVICE_ATTR),
        }
    if trial.constraints:  # the study's deployment budget: over it when any value is > 0
        info["constraints"] = {
            "values": trial.constraints,
            "feasible": all(v <= 0 for v in trial.constraints.values()),
        }
    return info


def _run_provenance(
    trial: FrozenTrial, ckpt: Checkpoint, confirmed: Mapping[str, Any]
) -> dict[str, Any] | None:
    """The provenance of a confirm run's checkpoint: what the file says it is (its run and
    seed) and what confirm recorded about that run; None for a checkpoint that is not a
    confirm run's."""
    run = ckpt.confirm
    if run is None:
        return None
    seed = run.get("seed")
    runs = trial.user_attrs.get(CONFIRM_RUNS)
    entry: Mapping[str, Any] = (
        next(
            (r for r in runs if isinstance(r, dict) and r.get("seed") == seed),
            {},
        )
        if isinstance(runs, list)
        else {}
    )
    index = run.get("run")
    return {
        "artifact_id": confirmed.get("checkpoint"),
        "confirm_run": {
            "trial": ckpt.trial,
            "run": index + 1 if isinstance(index, int) else None,  # counted from 1, as printed
            "seed": seed,
        },
        # recorded by confirm since it records them; None for a run recorded before
        "finished": entry.get("finished"),
        "seed": seed,
        "device": entry.get("device"),
        "versions": ckpt.versions,
        "worker": entry.get("worker"),
    }


def _local(when: datetime | None) -> str | None:
    """Optuna's naive local time as ISO 8601 with the offset, as confirm records its runs'."""
    return when.astimezone().isoformat(timespec="seconds") if when is not None else None


# --- the app -----------------------------------------------------------------------------------


def create_app(model: Model, info: dict[str, Any], limits: Limits) -> FastAPI:
    """The FastAPI app: ``info`` is what ``GET /model`` answers (see ``model_info``)."""
    ckpt = model.ckpt
    batcher = Batcher(model.probabilities, limits)
    budget = PixelBudget(limits.decode_pixels, limits.decode_wait_s)
    answered_by = {"study": ckpt.study, "trial": ckpt.trial}

    async def decode(uploads: list[tuple[str, bytes]]) -> torch.Tensor:
        """The uploads decoded, holding the pixels that takes of the budget (the most of one
        image: a request's images decode one after the other)."""
        images = open_uploads(uploads, ckpt.image_size)  # headers only: a few microseconds
        pixels = max(im.size[0] * im.size[1] for im in images)
        try:
            async with budget.hold(pixels):
                decoded = await asyncio.to_thread(decode_opened, uploads, images, ckpt.image_size)
        finally:
            for im in images:  # closed already unless the wait failed
                im.close()
        if pixels >= TRIM_AFTER_PIXELS:
            await asyncio.to_thread(give_back_memory)
        return decoded

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        worker = asyncio.create_task(batcher.work())
        yield
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker
        batcher.executor.shutdown(wait=True)

    app = FastAPI(title="hpsearch serve", lifespan=lifespan, docs_url=None, redoc_url=None)

    @app.exception_handler(BadInput)
    async def bad_input(_: Request, e: BadInput) -> JSONResponse:
        return JSONResponse({"error": str(e)}, status_code=e.status)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, e: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(e.detail)}, status_code=e.status_code)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": "invalid request"}, status_code=422)

    @app.exception_handler(Exception)
    async def internal(_: Request, e: Exception) -> JSONResponse:
        # our bug, not the client's: uvicorn logs the traceback, the client gets one line
        return JSONResponse({"error": f"internal error: {type(e).__name__}"}, status_code=500)

    @app.post("/predict")
    async def predict(request: Request) -> JSONResponse:
        with batcher.arrival():
            uploads = await read_uploads(request, limits.max_upload_bytes)
            images = await decode(uploads)
        probs = await batcher.submit(images)
        out = []
        for (name, _), row in zip(uploads, probs.tolist(), strict=True):
            k = max(range(len(row)), key=row.__getitem__)
            out.append(
                {
                    "file": name,
                    "label": ckpt.classes[k],
                    "probability": row[k],
                    "probabilities": dict(zip(ckpt.classes, row, strict=True)),
                }
            )
        return JSONResponse({**answered_by, "predictions": out})

    # GET and HEAD (what uptime checks and load balancers often send; uvicorn sends no body)
    @app.api_route("/model", methods=["GET", "HEAD"])
    async def model_route() -> JSONResponse:
        return JSONResponse(info)

    @app.api_route("/health", methods=["GET", "HEAD"])
    async def health() -> JSONResponse:
        return JSONResponse(
            {
                "status": "ok",
                **answered_by,
                "device": str(model.device),
                "batches": batcher.batches,
                "images": batcher.images,
                "queued": batcher.queue.qsize(),
            }
        )

    page = render_page(info)

    @app.api_route("/", methods=["GET", "HEAD"], response_class=HTMLResponse)
    async def index() -> str:
        return page

    return app


def listen(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: a free one); a port that cannot be bound is a one-line
    error."""
    if host in ALL_INTERFACES:
        log.warning(
            "the server listens on all interfaces (%s): anyone who can reach this machine can "
            "send it images, and it has no login; prefer the default 127.0.0.1 behind a proxy",
            host or "*",
        )
    sock = None
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(2048)
    except OSError as e:
        if sock is not None:
            sock.close()
        raise bind_error("serve", host, port, e) from None
    return sock


def run(app: FastAPI, sock: socket.socket) -> None:
    """Serve on ``sock`` until Ctrl-C or SIGTERM, then stop cleanly."""
    import uvicorn

    refuse_decompression_bombs()  # before the threads that decode start
    # python-multipart logs a warning per malformed body; the client gets its 400, that is enough
    logging.getLogger("python_multipart").setLevel(logging.ERROR)
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    # uvicorn re-raises the signal that stopped it once it has shut down; for a server that is
    # the normal way to end, not an interruption
    with contextlib.suppress(KeyboardInterrupt):
        server.run(sockets=[sock])
