"""What ``POST /predict`` accepts: reading uploads within a size limit and decoding them.

Images are decoded by ``engine.images.decode_image``, the code path ``hpsearch predict`` and the
validation split use, so the server and the CLI answer the same for the same file. Every way a
request can be wrong is a ``BadInput``: a 4xx status and one line that says why.
"""

from __future__ import annotations

import io
from collections.abc import AsyncGenerator

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from hpsearch.engine.images import decode_image
from hpsearch.errors import first_line

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
    async for chunk in request.stream():
        seen += len(chunk)
        if seen > limit:
            raise too_big
        yield chunk


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


def decode_uploads(uploads: list[tuple[str, bytes]], size: int) -> torch.Tensor:
    """(N, size, size, 3) uint8, decoded exactly as ``hpsearch predict`` decodes files.

    An image over Pillow's decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``) is refused:
    past twice the limit Pillow raises; between once and twice it warns, which ``serve.run``
    makes an error for the whole server process (a filter set per call would race between
    threads).
    """
    arrays = []
    for name, data in uploads:
        try:
            arrays.append(decode_image(io.BytesIO(data), size))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise BadInput(
                413,
                f"file {_shown(name)} has more pixels than the decompression-bomb limit of "
                f"{Image.MAX_IMAGE_PIXELS} (Pillow's MAX_IMAGE_PIXELS)",
            ) from None
        except UnidentifiedImageError:
            raise BadInput(415, f"file {_shown(name)} is not an image Pillow can read") from None
        except (OSError, ValueError, SyntaxError) as e:
            raise BadInput(422, f"file {_shown(name)} cannot be decoded: {first_line(e)}") from None
    return torch.from_numpy(np.stack(arrays))
