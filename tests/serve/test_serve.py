"""hpsearch serve: the real server in a subprocess on the session's smoke study, real photos,
bad input of every kind, the batcher, and the page driven in a real headless Chromium."""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import http.client
import json
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from PIL import Image

from conftest import argv, flat_png, hpsearch
from hpsearch.results.read import ranked
from hpsearch.serve.app import Batcher, Limits
from hpsearch.serve.upload import BadInput
from serving import get, multipart, post, start, stops_cleanly

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
MAX_UPLOAD_MB = 1  # the test server's --max-upload-mb


@pytest.fixture(scope="module")
def served(
    smoke_study: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Path]]:
    """``hpsearch serve --study smoke`` on a free port; yields its base URL and its log, and
    stops it with Ctrl-C. On the CPU, like ``hpsearch predict`` by default, so the two agree to
    float precision."""
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    proc, base = start(
        f"--study smoke --device cpu --max-upload-mb {MAX_UPLOAD_MB}", smoke_study, log
    )
    try:
        yield base, log
    finally:
        lines = stops_cleanly(proc, signal.SIGINT, log)
        best = ranked(study_of(smoke_study))[0]
        assert lines[0] == (
            f"serving trial {best.number} of study 'smoke' (val_accuracy {best.value:.4f}, 32px, "
            f"cat, dog) on cpu at {base}/ (max batch 32, max wait 5 ms); Ctrl-C stops it"
        )


@pytest.fixture(scope="module")
def server(served: tuple[str, Path]) -> str:
    """The base URL of ``served``."""
    return served[0]


def study_of(work: Path) -> optuna.Study:
    return optuna.load_study(study_name="smoke", storage=f"sqlite:///{work / 'hpsearch.db'}")


def predict_files(base: str, paths: list[Path]) -> dict[str, Any]:
    status, answer = post(f"{base}/predict", *multipart([(p.name, p.read_bytes()) for p in paths]))
    assert status == 200, answer
    assert isinstance(answer, dict)
    return answer


def cli_predict(smoke_study: Path, paths: list[Path]) -> list[tuple[str, float]]:
    """(label, probability) per image from ``hpsearch predict`` for the same study."""
    r = hpsearch(["predict", "--study", "smoke", *map(str, paths)], smoke_study)
    assert r.returncode == 0, r.stderr
    out = []
    for line, path in zip(r.stdout.splitlines(), paths, strict=True):
        name, label, prob = line.rsplit(" ", 2)
        assert name == f"{path}:"
        out.append((label, float(prob)))
    return out


@pytest.fixture(scope="module")
def photos(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Real validation photos of both classes, and one as a grayscale PNG of another size."""
    cats = sorted((data_root / "val" / "cat").iterdir())[-3:]
    dogs = sorted((data_root / "val" / "dog").iterdir())[-3:]
    gray = tmp_path_factory.mktemp("photos") / "gray.png"
    with Image.open(dogs[0]) as im:
        im.convert("L").resize((77, 50)).save(gray)
    return [*cats, *dogs, gray]


def test_predict_agrees_with_hpsearch_predict(
    server: str, smoke_study: Path, photos: list[Path]
) -> None:
    expected = cli_predict(smoke_study, photos)
    best = ranked(study_of(smoke_study))[0]
    together = predict_files(server, photos)  # several images in one request
    assert together["study"] == "smoke" and together["trial"] == best.number
    one_by_one = [predict_files(server, [p])["predictions"][0] for p in photos]
    for answers in (together["predictions"], one_by_one):
        assert [a["file"] for a in answers] == [p.name for p in photos]
        for a, (label, prob) in zip(answers, expected, strict=True):
            assert a["label"] == label
            assert a["probability"] == pytest.approx(prob, abs=1e-4)
            assert set(a["probabilities"]) == {"cat", "dog"}
            assert sum(a["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
            assert a["probabilities"][label] == a["probability"]
    # a raw image body (curl --data-binary @cat.jpg -H 'Content-Type: image/jpeg') works too
    status, raw = post(f"{server}/predict", photos[0].read_bytes(), "image/jpeg")
    assert status == 200 and raw["predictions"][0]["label"] == expected[0][0]


def test_concurrent_requests_each_get_their_own_answer(server: str, photos: list[Path]) -> None:
    single = {p.name: predict_files(server, [p])["predictions"][0]["probability"] for p in photos}
    before = get(f"{server}/health")

    async def many() -> list[tuple[str, float]]:
        async def one(p: Path) -> tuple[str, float]:
            answer = await asyncio.to_thread(predict_files, server, [p])
            return p.name, answer["predictions"][0]["probability"]

        return await asyncio.gather(*(one(p) for p in photos * 4))

    for name, prob in asyncio.run(many()):
        assert prob == pytest.approx(single[name], abs=1e-5)
    after = get(f"{server}/health")
    assert after["images"] - before["images"] == 4 * len(photos)


def test_model_and_health(server: str, smoke_study: Path) -> None:
    best = ranked(study_of(smoke_study))[0]
    info = get(f"{server}/model")
    assert info["study"] == "smoke" and info["trial"] == best.number
    assert info["params"] == best.params and info["val_accuracy"] == best.value
    assert info["image_size"] == 32 and info["classes"] == ["cat", "dog"]
    assert info["n_params"] == best.user_attrs["n_params"]
    assert "confirmed_val_accuracy" not in info  # hpsearch confirm has not run on this study
    ckpt = info["checkpoint"]
    path = Path(ckpt["path"])
    assert path.parent == smoke_study / "hpsearch-artifacts"
    assert ckpt["artifact_id"] == best.user_attrs["checkpoint"] == path.name
    assert ckpt["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert ckpt["storage"] == "sqlite:///hpsearch.db"
    assert ckpt["seed"] == best.user_attrs["seed"]
    assert ckpt["versions"] == best.user_attrs["versions"] and "torch" in ckpt["versions"]
    assert info["source"] == f"search trial {best.number}" and "confirm_run" not in ckpt
    assert best.datetime_complete is not None
    assert ckpt["finished"] == best.datetime_complete.astimezone().isoformat(timespec="seconds")
    health = get(f"{server}/health")
    assert health["status"] == "ok" and health["trial"] == best.number
    assert health["device"] == "cpu"
    # the page says the same, written by the server (no script needed to read it)
    page = get(f"{server}/")
    assert (
        f'<p class="meta" id="meta">study smoke, trial {best.number} (val accuracy '
        f"{best.value:.4f}), 32px, classes cat, dog</p>"
    ) in page
    assert (
        f'<p class="meta" id="provenance">checkpoint {ckpt["artifact_id"]} (sha256 '
        f"{ckpt['sha256'][:12]}...), seed {ckpt['seed']}, finished {ckpt['finished']}</p>"
    ) in page


def test_head_answers_like_get_without_a_body(server: str) -> None:
    """What uptime checks and load balancers send: 405 before."""
    host = server.removeprefix("http://")
    for path, kind in (("/", "text/html"), ("/health", "json"), ("/model", "json")):
        conn = http.client.HTTPConnection(host, timeout=60)
        try:
            conn.request("HEAD", path)
            resp = conn.getresponse()
            assert resp.status == 200, (path, resp.status)
            assert kind in resp.headers["content-type"], path
            assert resp.read() == b"", path
        finally:
            conn.close()


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` pixels: a decompression bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


def bad_requests(photo: bytes) -> list[tuple[str, bytes, str | None, int, str]]:
    """(case, body, content type, status, what the error says)."""
    boom = png_header(40_000, 40_000)  # 1.6 G pixels: past twice Pillow's limit, it raises
    warn = png_header(10_000, 10_000)  # 100 M: past the limit (Pillow only warns), refused too
    over = os.urandom(MAX_UPLOAD_MB * 2**20 + 1000)
    return [
        ("text file", *multipart([("notes.txt", b"just some text\n")]), 415, "not an image"),
        ("empty body", b"", None, 400, "empty body"),
        ("empty file", *multipart([("empty.jpg", b"")]), 400, "'empty.jpg' is empty"),
        ("bomb", *multipart([("bomb.png", boom)]), 413, "decompression-bomb limit"),
        ("bomb under 2x", *multipart([("big.png", warn)]), 413, "decompression-bomb limit"),
        ("over the limit", *multipart([("huge.jpg", over)]), 413, "over the limit of 1 MiB"),
        ("raw over the limit", over, "image/jpeg", 413, "over the limit of 1 MiB"),
        ("truncated", *multipart([("cut.jpg", photo[:2000])]), 422, "cannot be decoded"),
        ("no file field", *multipart([("a.jpg", photo)], field="image"), 400, "no field 'file'"),
        ("broken multipart", b"garbage", "multipart/form-data; boundary=x", 400, "multipart"),
        ("not an image type", b"hello", "text/plain", 415, "not an image"),
        ("a bad one among good", *multipart([("ok.jpg", photo), ("x.txt", b"x")]), 415, "'x.txt'"),
    ]


def test_bad_input_is_a_4xx_with_one_line_and_the_server_keeps_serving(
    server: str, photos: list[Path]
) -> None:
    photo = photos[0].read_bytes()
    for case, body, kind, status, needle in bad_requests(photo):
        got, answer = post(f"{server}/predict", body, kind)
        assert got == status, (case, answer)
        assert list(answer) == ["error"], case
        assert needle in answer["error"] and "\n" not in answer["error"], (case, answer)
        ok, good = post(f"{server}/predict", *multipart([(photos[0].name, photo)]))
        assert ok == 200 and good["predictions"][0]["label"] in ("cat", "dog"), case
    assert get(f"{server}/health")["status"] == "ok"
    got, answer = post(f"{server}/nowhere", b"", None)
    assert got == 404 and answer == {"error": "Not Found"}


def test_serve_and_predict_refuse_the_same_bomb_in_the_same_words(
    server: str, smoke_study: Path, tmp_path: Path
) -> None:
    """One decode policy: a real 100-megapixel PNG (over Pillow's limit, under twice it, where
    Pillow alone only warns and decodes) is a 413 from serve and one line from predict, the same
    words about the same file, and no warning from Pillow in either."""
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(flat_png(10_000, 10_000))
    status, answer = post(f"{server}/predict", *multipart([("bomb.png", bomb.read_bytes())]))
    assert status == 413
    said = "is 100.0 megapixels, over the decompression-bomb limit of 89.5 megapixels"
    assert answer == {"error": f"image 'bomb.png' {said} (89478485 pixels)"}
    r = hpsearch(
        ["predict", "--study", "smoke", str(bomb)], smoke_study, env={"PYTHONWARNINGS": "default"}
    )
    assert r.returncode == 1, r.stdout
    assert r.stderr == f"hpsearch: error: {answer['error'].replace(repr('bomb.png'), str(bomb))}\n"


def test_a_client_that_disconnects_mid_upload_is_one_line_in_the_log(
    served: tuple[str, Path], photos: list[Path]
) -> None:
    """Half a multipart body, then the connection closes: the log gets one line saying so, not
    starlette's ClientDisconnect traceback, and the server keeps serving."""
    base, log = served
    before = log.read_text().splitlines()
    body, kind = multipart([(photos[0].name, photos[0].read_bytes())])
    host, port = base.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        head = (
            f"POST /predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: {kind}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        sock.sendall(head.encode() + body[: len(body) // 2])
        time.sleep(0.5)  # let the server read the half it has (not a timing assertion)
    deadline = time.monotonic() + 60
    while len(log.read_text().splitlines()) == len(before):
        assert time.monotonic() < deadline, "nothing was logged for the disconnect"
        time.sleep(0.2)
    assert predict_files(base, [photos[0]])["predictions"][0]["label"] in ("cat", "dog")
    text = log.read_text()
    new = text.splitlines()[len(before) :]
    assert "Traceback" not in text and "ClientDisconnect" not in text, text
    assert len(new) == 1, new
    assert new[0].startswith("hpsearch: WARNING: client 127.0.0.1:"), new
    assert "disconnected during its upload to /predict" in new[0], new


def test_max_wait_is_bounded(smoke_study: Path) -> None:
    """inf was taken, and kept a request waiting for ever; nan and negatives make no sense."""
    for value in ("inf", "nan", "-1", "10001", "1e9", "soon"):
        # a timeout: a value taken starts a server, which would not return
        r = hpsearch(["serve", "--study", "smoke", "--max-wait-ms", value], smoke_study, 120)
        assert r.returncode == 2, (value, r.stdout)
        assert len(r.stderr.splitlines()) == 1, r.stderr
        assert r.stderr.startswith("hpsearch serve: error: argument --max-wait-ms: "), r.stderr
        assert f"got {value!r}" in r.stderr and r.stdout == "", r.stderr


def test_an_unresolvable_host_says_so(smoke_study: Path) -> None:
    r = hpsearch(argv("serve --study smoke --host no.such.host.invalid --port 0"), smoke_study)
    assert r.returncode == 1, r.stdout
    assert r.stderr.startswith("hpsearch: error: --host no.such.host.invalid: cannot resolve")
    assert len(r.stderr.splitlines()) == 1 and "--port" not in r.stderr, r.stderr


def test_missing_study_trial_or_checkpoint_is_one_line_before_serving(
    smoke_study: Path, tmp_path: Path
) -> None:
    cases = [
        (smoke_study, "serve --study nope", "no study named 'nope'"),
        (smoke_study, "serve --study smoke --trial 99", "study 'smoke' has no trial 99"),
        (tmp_path, "serve --study smoke", "no database at"),
    ]
    # the smoke study keeps 2 checkpoints of 3 trials: the worst has none
    worst = ranked(study_of(smoke_study))[-1].number
    cases.append(
        (smoke_study, f"serve --study smoke --trial {worst}", "checkpoints are kept for trial(s)")
    )
    for cwd, line, needle in cases:
        r = hpsearch([*argv(line), "--port", "0"], cwd, timeout=120)
        assert r.returncode == 1, (line, r.stdout)
        assert r.stderr.startswith("hpsearch: error: ") and needle in r.stderr, r.stderr
        assert len(r.stderr.splitlines()) == 1 and r.stdout == "", r.stderr
    r = hpsearch(argv("serve --study smoke --trial banana"), smoke_study)
    assert r.returncode == 2 and "expected a trial number, got 'banana'" in r.stderr


def test_all_interfaces_warns_and_a_taken_port_is_one_line(smoke_study: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = hpsearch(argv(f"serve --study smoke --host 0.0.0.0 --port {port}"), smoke_study)
    assert r.returncode == 1, r.stdout
    assert "listens on all interfaces (0.0.0.0)" in r.stderr
    assert f"hpsearch: error: cannot serve on 0.0.0.0:{port}: " in r.stderr
    assert "Traceback" not in r.stderr


def test_sigterm_stops_it_cleanly(smoke_study: Path, tmp_path: Path) -> None:
    """What docker compose and orchestrators send: the server shuts down and exits 0."""
    log = tmp_path / "serve.log"
    proc, base = start("--study smoke --trial best --max-batch 1 --device cpu", smoke_study, log)
    assert get(f"{base}/health")["status"] == "ok"
    lines = stops_cleanly(proc, signal.SIGTERM, log)
    assert "(max batch 1, max wait 5 ms)" in lines[0]


# --- the batcher, in process ---------------------------------------------------------------


def test_batcher_fills_batches_up_to_max_batch_and_routes_answers() -> None:
    """Jobs already queued when the worker looks are batched up to max_batch (a job that does
    not fit starts the next batch), and each request gets its own rows back."""
    seen: list[int] = []

    def run(batch: torch.Tensor) -> torch.Tensor:
        seen.append(len(batch))
        return batch.float().sum(dim=(1, 2, 3)).unsqueeze(1)  # one number per image

    async def scenario() -> list[torch.Tensor]:
        batcher = Batcher(run, Limits(max_upload_bytes=1, max_batch=4, max_wait_s=0.0))
        sizes = [1, 1, 3, 1, 2, 1, 1]
        jobs = [
            asyncio.ensure_future(batcher.submit(torch.full((n, 2, 2, 3), i, dtype=torch.uint8)))
            for i, n in enumerate(sizes)
        ]
        await asyncio.sleep(0)  # every job is queued before the worker starts
        worker = asyncio.create_task(batcher.work())
        results = await asyncio.gather(*jobs)
        worker.cancel()
        batcher.executor.shutdown()
        return results

    results = asyncio.run(scenario())
    assert seen == [2, 4, 4]  # [1, 1] | 3 held over: [3, 1] | [2, 1, 1]
    for i, (n, r) in enumerate(zip([1, 1, 3, 1, 2, 1, 1], results, strict=True)):
        assert r.shape == (n, 1) and (r == 12 * i).all()


def test_a_lone_request_does_not_wait_for_company() -> None:
    """With nothing else arriving, the first request of a batch runs at once, whatever the
    max wait (here an hour)."""

    async def scenario() -> int:
        batcher = Batcher(lambda b: b.float(), Limits(1, max_batch=32, max_wait_s=3600.0))
        worker = asyncio.create_task(batcher.work())
        await asyncio.wait_for(batcher.submit(torch.zeros(1, 2, 2, 3, dtype=torch.uint8)), 60)
        worker.cancel()
        batcher.executor.shutdown()
        return batcher.batches

    assert asyncio.run(scenario()) == 1


def test_a_batch_stops_waiting_when_the_request_it_waited_for_fails() -> None:
    """The first request waits for another that is being received; that one fails (bad input):
    the batch runs at once, not after the max wait (an hour here; it waited all of it)."""

    async def scenario() -> int:
        batcher = Batcher(lambda b: b.float(), Limits(1, max_batch=32, max_wait_s=3600.0))
        worker = asyncio.create_task(batcher.work())
        first = None
        with pytest.raises(BadInput), batcher.arrival():  # the second request, arriving
            first = asyncio.ensure_future(
                batcher.submit(torch.zeros(1, 2, 2, 3, dtype=torch.uint8))
            )
            for _ in range(10):  # the worker takes the first job and waits for company
                await asyncio.sleep(0)
            assert not first.done()
            raise BadInput(415, "not an image")
        await asyncio.wait_for(first, 60)
        worker.cancel()
        batcher.executor.shutdown()
        return batcher.batches

    assert asyncio.run(scenario()) == 1


# --- the page, in a real browser ----------------------------------------------------------


class Chromium:
    """Headless Chromium driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``:
    the browser reads commands on fd 3 and writes replies on fd 4), so that neither a driver
    nor a WebSocket library is needed."""

    def __init__(self, profile: Path) -> None:
        assert CHROMIUM is not None
        to_browser_r, self.w = os.pipe()
        self.r, from_browser_w = os.pipe()

        def fds() -> None:
            # in the child: the two pipe ends become fds 3 and 4 (inheritable, unlike every
            # other descriptor Python opened, so close_fds=False leaks nothing else)
            a = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD_CLOEXEC, 10)
            b = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD_CLOEXEC, 10)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
                f"--user-data-dir={profile}",
                "--remote-debugging-pipe",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=fds,
            close_fds=False,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self.buf = b""
        self.next_id = 0

    def send(self, method: str, params: dict[str, Any] | None = None, session: str = "") -> Any:
        self.next_id += 1
        msg: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + 60
        while True:
            while b"\0" not in self.buf:
                ready, _, _ = select.select([self.r], [], [], max(0, deadline - time.monotonic()))
                assert ready, f"no reply to {method} from Chromium"
                chunk = os.read(self.r, 1 << 16)
                assert chunk, "Chromium closed the pipe"
                self.buf += chunk
            raw, self.buf = self.buf.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self.next_id:  # events in between are skipped
                assert "error" not in reply, (method, reply["error"])
                return reply["result"]

    def close(self) -> None:
        try:
            self.send("Browser.close")
            self.proc.wait(timeout=20)
        except (AssertionError, OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        os.close(self.w)
        os.close(self.r)


def evaluate(browser: Chromium, session: str, expression: str) -> Any:
    result = browser.send(
        "Runtime.evaluate", {"expression": expression, "returnByValue": True}, session
    )
    return result["result"].get("value")


def wait_for(browser: Chromium, session: str, expression: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = evaluate(browser, session, expression)
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {expression}"
        time.sleep(0.2)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs it)")
def test_page_labels_a_photo_in_chromium(
    server: str, smoke_study: Path, photos: list[Path], tmp_path: Path
) -> None:
    cat, dog = photos[0], photos[3]
    expected = cli_predict(smoke_study, [cat, dog])
    browser = Chromium(tmp_path / "profile")
    try:
        target = browser.send("Target.createTarget", {"url": f"{server}/"})["targetId"]
        session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        wait_for(browser, session, "document.readyState === 'complete' && !!$('file')")
        meta = evaluate(browser, session, "$('meta').textContent")
        assert meta.startswith("study smoke, trial ") and "32px, classes cat, dog" in meta
        root = browser.send("DOM.getDocument", {}, session)["root"]["nodeId"]
        node = browser.send("DOM.querySelector", {"nodeId": root, "selector": "#file"}, session)
        for photo, (label, prob) in zip((cat, dog), expected, strict=True):
            evaluate(browser, session, "$('label').textContent = ''")
            browser.send(
                "DOM.setFileInputFiles", {"files": [str(photo)], "nodeId": node["nodeId"]}, session
            )
            shown = wait_for(browser, session, "$('label').textContent || $('error').textContent")
            assert shown == label
            rows = evaluate(browser, session, "$('probs').innerText")
            assert f"{label}\n{100 * prob:.1f}%" in rows.replace("\t", "\n").replace("\n\n", "\n")
            assert evaluate(browser, session, "$('preview').hidden") is False
    finally:
        browser.close()
