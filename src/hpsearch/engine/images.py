"""Photos on disk: the ImageFolder listing (which files a class folder's images are) and decoding
one image exactly as the engine trains on it. Pillow and NumPy only, no torch, so that tools
that only list or decode photos (``bench/make_subset.py``, ``hpsearch serve``'s input checks)
start fast; :mod:`hpsearch.engine.data` builds the decode-once cache on top.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

from hpsearch.errors import DataError
from hpsearch.files import what_is

log = logging.getLogger(__name__)
_warned: set[str] = set()


# The files a class folder's listing takes (any case): torchvision ImageFolder's IMG_EXTENSIONS
# plus .gif, all of which Pillow decodes. Anything else (notes.txt, Thumbs.db) is skipped unread.
IMAGE_EXTENSIONS = (
    ".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif"
)  # fmt: skip


def list_split(
    split_dir: Path, max_per_class: int | None = None
) -> tuple[tuple[str, ...], list[tuple[str, int]]]:
    """Class names and ``(relative path, label)`` for an ImageFolder split, sorted by name.

    Only image files are taken (``IMAGE_EXTENSIONS``); with ``max_per_class`` only the first N
    of each class (by name).
    """
    classes, files, _ = _listing(split_dir, max_per_class)
    return classes, files


def _listing(
    split_dir: Path, max_per_class: int | None
) -> tuple[tuple[str, ...], list[tuple[str, int]], list[str]]:
    """``list_split`` and the files it left out for not being images (relative paths)."""
    if not split_dir.is_dir():
        raise DataError(
            f"data directory {split_dir} {what_is(split_dir, 'a directory')} (expected "
            "ImageFolder layout: "
            f"{split_dir}/<class>/<image>)"
        )
    classes = tuple(
        sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    )
    if len(classes) < 2:
        raise DataError(
            f"{split_dir} has {len(classes)} class folder(s); a classifier needs at least 2"
        )
    files: list[tuple[str, int]] = []
    broken: list[str] = []
    others: list[str] = []
    for label, cls in enumerate(classes):
        found = [
            e.name
            for e in os.scandir(split_dir / cls)
            if not e.name.startswith(".") and _is_file(e, broken)
        ]
        names = sorted(n for n in found if n.lower().endswith(IMAGE_EXTENSIONS))
        skipped = sorted(set(found) - set(names))
        others.extend(f"{cls}/{n}" for n in skipped)
        if max_per_class is not None:
            names = names[:max_per_class]
        if not names and skipped:
            raise DataError(
                f"class folder {split_dir / cls} has no image file, only {len(skipped)} other "
                f"file(s) such as {skipped[0]} (images end in {', '.join(IMAGE_EXTENSIONS)})"
            )
        if not names:
            raise DataError(f"class folder {split_dir / cls} is empty")
        files.extend((f"{cls}/{n}", label) for n in names)
    if broken and str(split_dir) not in _warned:
        _warned.add(str(split_dir))  # listed again by later steps; said once
        shown = ", ".join(broken[:5]) + (f" and {len(broken) - 5} more" if len(broken) > 5 else "")
        log.warning(
            "skipped %d unreadable entr%s in %s: %s",
            len(broken),
            "y" if len(broken) == 1 else "ies",
            split_dir,
            shown,
        )
    return classes, files, others


def _is_file(entry: os.DirEntry[str], broken: list[str]) -> bool:
    """Whether ``entry`` is a file; one that cannot be looked at (a symlink loop) is noted in
    ``broken`` and skipped like an undecodable image."""
    try:
        return entry.is_file()
    except OSError as e:
        broken.append(f"{Path(entry.path).parent.name}/{entry.name} ({e.strerror or e})")
        return False


def decode_image(path: Path | BinaryIO, size: int) -> np.ndarray:
    """One image (a file, or an open binary stream) -> ``(size, size, 3)`` uint8 RGB, resized
    like the validation transform. Pillow's own decompression-bomb check applies as it stands
    (the decode cache ignores its warning); user-given images go through :func:`decode_checked`.
    """
    with Image.open(path) as im:
        im.draft("RGB", (size, size))  # JPEG: let libjpeg decode at a reduced scale (fast)
        return to_array(im, size)


def to_array(im: Image.Image, size: int) -> np.ndarray:
    """An opened (and drafted) image decoded -> ``(size, size, 3)`` uint8 RGB."""
    rgb = im.convert("RGB")
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
    return np.array(rgb, dtype=np.uint8)


# --- the decode policy of the images a user gives a model (predict, serve) -------------------


def pixel_limit() -> int:
    """The most pixels an image ``predict`` or ``serve`` decodes: Pillow's decompression-bomb
    limit, ``Image.MAX_IMAGE_PIXELS`` (89,478,485 unless a program changed it)."""
    return Image.MAX_IMAGE_PIXELS or 0


class TooManyPixels(DataError):
    """An image over :func:`pixel_limit`, refused before it is decoded."""

    def __init__(self, name: str, pixels: int | None) -> None:
        limit = pixel_limit()
        size = f"{pixels / 1e6:.1f} megapixels" if pixels else "more pixels than that"
        super().__init__(
            f"image {name} is {size}, over the decompression-bomb limit of "
            f"{limit / 1e6:.1f} megapixels ({limit} pixels)"
        )
        self.pixels = pixels


_BOMB_SIZE = re.compile(r"\((\d+) pixels\)")  # in Pillow's "Image size (N pixels) exceeds ..."
_REFUSE = ("error", None, Image.DecompressionBombWarning, None, 0)  # a warnings.filters entry


def refuse_decompression_bombs() -> None:
    """Make Pillow's ``DecompressionBombWarning`` an error: the first of the process's warning
    filters (put back there when something else went first).

    Pillow raises ``DecompressionBombError`` for an image over twice ``MAX_IMAGE_PIXELS``, but
    between once and twice it only warns, on stderr, and decodes. A warning filter is
    process-wide, and ``warnings.catch_warnings`` around each open would race between threads,
    so the filter stays; only the images a user gives a model are opened under it (serve opens
    them all on its event loop's thread). The decode cache's own ``catch_warnings`` that ignores
    the warning wins inside it: it never calls this."""
    if not warnings.filters or warnings.filters[0] != _REFUSE:
        warnings.filterwarnings("error", category=Image.DecompressionBombWarning)


def open_checked(source: Path | BinaryIO, name: str, size: int) -> Image.Image:
    """Open an image (its header: nothing is decoded yet) under the decode policy: over
    :func:`pixel_limit` it is a :class:`TooManyPixels` naming it ``name``, with no warning
    from Pillow. JPEGs are drafted to ``size``, so ``.size`` is then what decoding takes.
    The caller closes it (or decodes it with :func:`to_array` in a ``with``)."""
    refuse_decompression_bombs()
    try:
        im = Image.open(source)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        found = _BOMB_SIZE.search(str(e))
        raise TooManyPixels(name, int(found[1]) if found else None) from None
    width, height = im.size
    if pixel_limit() and width * height > pixel_limit():  # a filter of the caller's ignored it
        im.close()
        raise TooManyPixels(name, width * height)
    im.draft("RGB", (size, size))
    return im


def decode_checked(source: Path | BinaryIO, name: str, size: int) -> np.ndarray:
    """:func:`decode_image` under the decode policy of :func:`open_checked`."""
    with open_checked(source, name, size) as im:
        return to_array(im, size)
