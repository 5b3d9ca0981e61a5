"""What ``POST /predict`` accepts: reading uploads within a size limit and decoding them.

Images are opened and decoded by ``engine.images`` (``open_checked``, ``to_array``): the decode
policy and the code path ``hpsearch predict`` uses, so the server and the CLI answer the same
for the same file, and refuse the same files. Every way a request can be wrong is a
``BadInput``: a 4xx status (or 503) and one line that says why.
"""

from __future__ import annotations

import io
import logging
from collections.abc import AsyncGenerator

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, Request

from hpsearch.engine.images import TooManyPixels, open_checked, to_array
from hpsearch.errors import first_line

log = logging.getLogger("hpsearch")

MAX_IMAGES_PER_REQUEST = 64


class BadInput(Exception):
    """A request we refuse: answered with ``status`` and ``{"error": message}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _shown(name: str) -> str:
    """A client-given file name, safe for a one-line message."""
    flat = " ".join(name.split())
    return repr(flat if len(flat) <= 80 else flat[:77] + "...")


async def _body(request: Request, limit: int) -> AsyncGenerator[bytes, None]:
    """The request body, refused (413) as soon as it passes ``limit`` bytes."""
    too_big = BadInput(413, f"upload is over the limit of {limit / 2**20:g} MiB (--max-upload-mb)")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_big
    seen = 0
    try:
        async for chunk in request.stream():
            seen += len(chunk)
            if seen > limit:
                raise too_big
            yield chunk
    except ClientDisconnect:
        # nobody is left to answer; one line for the operator instead of starlette's traceback
        client = f"{request.client.host}:{request.client.port}" if request.client else "a client"
        of = f" of {int(declared) / 1024:.1f} KiB" if declared.isdigit() else ""
        log.warning(
            "client %s disconnected during its upload to %s (%.1f KiB%s received)",
            client,
            request.url.path,
            seen / 1024,
            of,
        )
        raise BadInput(400, "the client disconnected during its upload") from None


async def read_uploads(request: Request, limit: int) -> list[tuple[str, bytes]]:
    """(name, bytes) of each uploaded image: multipart field ``file`` (repeatable), or the body."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    hint = "send images as multipart field 'file' (curl -F file=@cat.jpg URL)"
    if request.headers.get("content-length") == "0":
        raise BadInput(400, f"empty body: {hint}")
    if kind == "multipart/form-data":
        parser = MultiPartParser(
            request.headers,
            _body(request, limit),
            max_files=MAX_IMAGES_PER_REQUEST,
            max_fields=MAX_IMAGES_PER_REQUEST,
            max_part_size=limit,
        )
        try:
            form = await parser.parse()
        except MultiPartException as e:
            raise BadInput(400, f"bad multipart body: {e.message}") from None
        try:
            uploads = []
            for value in form.getlist("file"):
                if not isinstance(value, UploadFile):
                    raise BadInput(400, f"field 'file' holds text, not a file: {hint}")
                uploads.append((value.filename or "file", await value.read()))
        finally:
            await form.close()
        if not uploads:
            raise BadInput(400, f"no field 'file' in the form: {hint}")
    elif kind.startswith("image/") or kind in ("application/octet-stream", ""):
        uploads = [("body", b"".join([c async for c in _body(request, limit)]))]
        if not uploads[0][1]:
            raise BadInput(400, f"empty body: {hint}")
    else:
        raise BadInput(415, f"content type {kind!r} is not an image: {hint}")
    for name, data in uploads:
        if not data:
            raise BadInput(400, f"file {_shown(name)} is empty")
    return uploads


def open_uploads(uploads: list[tuple[str, bytes]], size: int) -> list[Image.Image]:
    """Each upload opened (its header read, nothing decoded) under the decode policy of
    ``hpsearch predict``: an image over the decompression-bomb limit is refused here (413), so
    ``.size`` of each says how many pixels decoding it takes. Close them (``decode_opened``
    does)."""
    images: list[Image.Image] = []
    try:
        for name, data in uploads:
            try:
                images.append(open_checked(io.BytesIO(data), _shown(name), size))
            except TooManyPixels as e:
                raise BadInput(413, str(e)) from None
            except UnidentifiedImageError:
                raise BadInput(
                    415, f"file {_shown(name)} is not an image Pillow can read"
                ) from None
            except (OSError, ValueError, SyntaxError) as e:
                raise _undecodable(name, e) from None
    except BaseException:
        for im in images:
            im.close()
        raise
    return images


def decode_opened(
    uploads: list[tuple[str, bytes]], images: list[Image.Image], size: int
) -> torch.Tensor:
    """(N, size, size, 3) uint8 from ``open_uploads``' images, decoded exactly as ``hpsearch
    predict`` decodes files; closes them."""
    arrays = []
    try:
        for (name, _), im in zip(uploads, images, strict=True):
            try:
                arrays.append(to_array(im, size))
            except (OSError, ValueError, SyntaxError) as e:
                raise _undecodable(name, e) from None
    finally:
        for im in images:
            im.close()
    return torch.from_numpy(np.stack(arrays))


def decode_uploads(uploads: list[tuple[str, bytes]], size: int) -> torch.Tensor:
    """``open_uploads`` then ``decode_opened``, in one go."""
    return decode_opened(uploads, open_uploads(uploads, size), size)


def _undecodable(name: str, e: BaseException) -> BadInput:
    return BadInput(422, f"file {_shown(name)} cannot be decoded: {first_line(e)}")
