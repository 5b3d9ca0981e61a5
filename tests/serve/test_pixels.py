"""serve's pixel budget (how many pixels decode at once) with small limits, in process, and
giving memory back: the logic that keeps eight 88-megapixel uploads from taking gigabytes."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import flat_png
from hpsearch.serve.pixels import PixelBudget, give_back_memory
from hpsearch.serve.upload import BadInput
from serving import multipart

CPU = torch.device("cpu")


async def settle() -> None:
    """Let every task that can run, run."""
    for _ in range(20):
        await asyncio.sleep(0)


def test_a_second_big_image_waits_while_one_decodes_then_runs() -> None:
    async def scenario() -> list[str]:
        budget = PixelBudget(100, wait_s=3600)
        order: list[str] = []
        release_first = asyncio.Event()

        async def decode(name: str, pixels: int, until: asyncio.Event | None = None) -> None:
            async with budget.hold(pixels):
                order.append(f"{name} starts")
                if until is not None:
                    await until.wait()
            order.append(f"{name} ends")

        first = asyncio.create_task(decode("big 1", 80, release_first))
        await settle()
        second = asyncio.create_task(decode("big 2", 80))
        await settle()
        assert order == ["big 1 starts"]  # 160 > 100: the second waits
        assert budget.free == 20 and not second.done()
        release_first.set()
        await asyncio.wait_for(asyncio.gather(first, second), 60)
        assert budget.free == 100
        return order

    assert asyncio.run(scenario()) == ["big 1 starts", "big 1 ends", "big 2 starts", "big 2 ends"]


def test_small_images_share_the_budget_and_wait_their_turn_in_order() -> None:
    """Two small ones fit together; a big one waits for room, and a small one that would fit
    meanwhile queues behind it (first come, first served: the big one is not starved)."""

    async def scenario() -> list[str]:
        budget = PixelBudget(100, wait_s=3600)
        started: list[str] = []
        gates = {name: asyncio.Event() for name in ("a", "b", "big", "c")}

        async def decode(name: str, pixels: int) -> None:
            async with budget.hold(pixels):
                started.append(name)
                await gates[name].wait()

        tasks = []
        for name, pixels in (("a", 30), ("b", 30), ("big", 90), ("c", 20)):
            tasks.append(asyncio.create_task(decode(name, pixels)))
            await settle()
        assert started == ["a", "b"]  # big needs 90 of the 40 left; c (20) queues behind it
        gates["a"].set()
        gates["b"].set()
        await settle()
        assert started == ["a", "b", "big"]  # c does not fit beside big
        gates["big"].set()
        await settle()
        assert started == ["a", "b", "big", "c"]
        gates["c"].set()
        await asyncio.wait_for(asyncio.gather(*tasks), 60)
        assert budget.free == 100
        return started

    assert asyncio.run(scenario()) == ["a", "b", "big", "c"]


def test_an_image_over_the_whole_budget_runs_alone() -> None:
    async def scenario() -> int:
        budget = PixelBudget(100, wait_s=3600)
        async with budget.hold(10_000):
            held = budget.free
        return held

    assert asyncio.run(scenario()) == 0


def test_waiting_too_long_is_a_503_and_gives_its_place_up() -> None:
    async def scenario() -> tuple[BadInput, int]:
        budget = PixelBudget(100, wait_s=0.05)
        hold = asyncio.Event()

        async def decode(pixels: int) -> None:
            async with budget.hold(pixels):
                await hold.wait()

        first = asyncio.create_task(decode(80))
        await settle()
        with pytest.raises(BadInput) as refused:
            await decode(80)  # waits for the first, which does not end: refused
        assert budget.waiting == 0  # its place in the queue is given up
        hold.set()
        await asyncio.wait_for(first, 60)
        return refused.value, budget.free

    error, free = asyncio.run(scenario())
    assert error.status == 503 and "busy decoding other large images" in str(error)
    assert "at most 0.0 megapixels at once" in str(error) and free == 100


def test_a_waiter_that_goes_away_lets_the_next_one_in() -> None:
    """A client gone while its request waits (the task cancelled): its place is given up, and
    a request behind it that fits starts."""

    async def scenario() -> list[str]:
        budget = PixelBudget(100, wait_s=3600)
        started: list[str] = []
        hold = asyncio.Event()

        async def decode(name: str, pixels: int) -> None:
            async with budget.hold(pixels):
                started.append(name)
                await hold.wait()

        first = asyncio.create_task(decode("first", 60))
        await settle()
        gone = asyncio.create_task(decode("gone", 60))
        await settle()
        behind = asyncio.create_task(decode("behind", 40))
        await settle()
        assert started == ["first"]  # "behind" fits but queues behind "gone"
        gone.cancel()
        await settle()
        assert started == ["first", "behind"]
        hold.set()
        await asyncio.wait_for(asyncio.gather(first, behind), 60)
        assert budget.free == 100
        return started

    assert asyncio.run(scenario()) == ["first", "behind"]


def test_give_back_memory_runs() -> None:
    give_back_memory()  # glibc's malloc_trim here; nothing where there is none


# --- in the app: a request's share is the pixels of its largest image --------------------------


async def post_asgi(app: Any, body: bytes, content_type: str) -> tuple[int, Any]:
    """POST /predict straight into the ASGI app: (status, decoded JSON)."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/predict",
        "raw_path": b"/predict",
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"content-type", content_type.encode()),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    chunks = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        if chunks:
            return chunks.pop()
        await asyncio.Event().wait()  # the client stays until the answer
        raise AssertionError

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body_out = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, json.loads(body_out)


@pytest.mark.slow
@pytest.mark.parametrize("wait_s", [3600.0, 0.05])
def test_a_second_image_waits_or_is_refused_while_one_decodes(
    smoke_study: Path, monkeypatch: pytest.MonkeyPatch, wait_s: float
) -> None:
    """The real app on the smoke study's model, with a budget of one 100x100 image: while the
    first request's image decodes (held in its decode thread here), a second waits for it
    (and then is answered), or, past the wait, is a 503."""
    import hpsearch.serve.app as served
    from hpsearch.results.read import open_existing, pick_trial
    from hpsearch.storage.checkpoint import load_checkpoint

    study = open_existing(f"sqlite:///{smoke_study / 'hpsearch.db'}", "smoke")
    trial = pick_trial(study, None)
    model = served.Model(load_checkpoint(trial, smoke_study / "hpsearch-artifacts"), CPU)
    limits = served.Limits(1 << 20, 32, 0.0, decode_pixels=100 * 100, decode_wait_s=wait_s)
    app = served.create_app(model, served.model_info(trial, model, "sqlite:///db"), limits)

    decoding = threading.Event()
    go_on = threading.Event()
    real = served.decode_opened

    def held(*args: Any) -> Any:
        if not decoding.is_set():  # the first request's decode: held until told to go on
            decoding.set()
            assert go_on.wait(60)
        return real(*args)

    monkeypatch.setattr(served, "decode_opened", held)
    image = multipart([("flat.png", flat_png(100, 100))])

    async def scenario() -> tuple[tuple[int, Any], tuple[int, Any]]:
        async with app.router.lifespan_context(app):
            first = asyncio.create_task(post_asgi(app, *image))
            while not decoding.is_set():
                await asyncio.sleep(0.01)
            second = asyncio.create_task(post_asgi(app, *image))
            if wait_s > 1:
                await settle()
                assert not second.done()  # waiting for the first image's pixels
            else:
                await asyncio.wait_for(asyncio.shield(second), 60)  # refused meanwhile
            go_on.set()
            return await asyncio.wait_for(first, 60), await asyncio.wait_for(second, 60)

    (status1, answer1), (status2, answer2) = asyncio.run(scenario())
    assert status1 == 200 and answer1["predictions"][0]["file"] == "flat.png"
    if wait_s > 1:
        assert status2 == 200 and answer2["predictions"] == answer1["predictions"]
    else:
        assert status2 == 503, answer2
        assert answer2 == {
            "error": "the server is busy decoding other large images (at most 0.0 megapixels "
            "at once); try again later"
        }
