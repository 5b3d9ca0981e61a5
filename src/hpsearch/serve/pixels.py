"""How many pixels ``hpsearch serve`` decodes at once, and giving memory back after a large
decode.

Decoding an image takes memory in proportion to its pixels (an 88-megapixel PNG took about 0.7
GB while it decoded), and eight of them at once peaked at 5.7 GB. So a request holds a share of
a :class:`PixelBudget`, the pixels of the largest of its images as decoding takes them (its
header says so before anything is decoded), while its images decode; a request that does not
fit waits its turn, first come first served, and is refused with a 503 if that takes longer
than the budget's wait. glibc keeps what large decodes in worker threads freed (a process that
had decoded the eight stayed at 1.3 to 2.7 GB, from 0.5): :func:`give_back_memory` returns it
to the system.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import functools
import sys
from collections import deque
from collections.abc import AsyncIterator, Callable

from hpsearch.serve.upload import BadInput

TRIM_AFTER_PIXELS = 16_000_000  # after decoding an image this large, memory is given back


class PixelBudget:
    """At most ``limit`` pixels being decoded at once. A share over the limit is taken as the
    whole budget (it runs alone); waiting longer than ``wait_s`` for a share is a 503."""

    def __init__(self, limit: int, wait_s: float) -> None:
        if limit < 1:
            raise ValueError(f"a pixel budget needs a limit of at least 1, got {limit}")
        self.limit = limit
        self.wait_s = wait_s
        self.free = limit
        self._waiting: deque[tuple[int, asyncio.Future[None]]] = deque()

    @property
    def waiting(self) -> int:
        """Requests waiting for their share."""
        return len(self._waiting)

    @contextlib.asynccontextmanager
    async def hold(self, pixels: int) -> AsyncIterator[None]:
        """Hold ``pixels`` of the budget (at most all of it) for the ``async with`` block."""
        share = max(0, min(pixels, self.limit))
        await self._take(share)
        try:
            yield
        finally:
            self._give(share)

    async def _take(self, share: int) -> None:
        if not self._waiting and share <= self.free:
            self.free -= share
            return
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (share, granted)
        self._waiting.append(entry)
        try:
            await asyncio.wait_for(asyncio.shield(granted), self.wait_s)
        except BaseException as e:  # timed out or cancelled (the client went away)
            if granted.done():  # granted meanwhile: the share is ours
                if isinstance(e, TimeoutError):
                    return
                self._give(share)
                raise
            self._waiting.remove(entry)
            granted.cancel()
            self._wake()  # the ones behind it may fit now
            if isinstance(e, TimeoutError):
                raise BadInput(
                    503,
                    f"the server is busy decoding other large images (at most "
                    f"{self.limit / 1e6:.1f} megapixels at once); try again later",
                ) from None
            raise

    def _give(self, share: int) -> None:
        self.free += share
        self._wake()

    def _wake(self) -> None:
        """Grant waiting shares in order while the first one fits."""
        while self._waiting and self._waiting[0][0] <= self.free:
            share, granted = self._waiting.popleft()
            self.free -= share
            granted.set_result(None)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where there is none (macOS, musl)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def give_back_memory() -> None:
    """Return the heap's free memory to the system (glibc ``malloc_trim``; elsewhere nothing).

    Not ``gc.collect()``: a decoded image is freed when its last reference goes, and a full
    collection took 0.1-0.3 s in a process with torch loaded and freed nothing more.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
