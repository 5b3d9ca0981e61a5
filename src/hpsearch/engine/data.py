"""Images: ImageFolder listing, a decode-once uint8 cache on disk, device-resident tensors.

The hot path never touches PIL or a DataLoader: every image is decoded once per (data set, image
size) into one ``(N, S, S, 3)`` uint8 tensor saved under the cache directory and shared by every
trial and process; training then indexes that tensor on the device.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock
from PIL import Image

from hpsearch.engine.images import _listing, decode_image
from hpsearch.engine.spec import DataConfig
from hpsearch.errors import DataError, first_line
from hpsearch.files import atomic_write, what_is

log = logging.getLogger(__name__)

CACHE_FORMAT = 1  # bump when the cache layout changes


@dataclass(frozen=True)
class ImageSet:
    """A decoded split: images ``(N, S, S, 3)`` uint8 (NHWC, so a permute gives channels_last
    NCHW for free), labels ``(N,)`` int64, and the class names in label order."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]
    files: tuple[str, ...]  # paths relative to the split directory, in row order

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def cache_root() -> Path:
    """``$HPSEARCH_CACHE``, else ``$XDG_CACHE_HOME/hpsearch``, else ``~/.cache/hpsearch``."""
    env = os.environ.get("HPSEARCH_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "hpsearch"


def _fingerprint(split_dir: Path, files: Sequence[tuple[str, int]], size: int) -> str:
    """Changes whenever a file is added, removed, resized or touched."""
    h = hashlib.sha256(f"{CACHE_FORMAT}|{split_dir}|{size}".encode())
    for rel, label in files:
        st = os.stat(split_dir / rel)
        h.update(f"{rel}|{label}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def _decode_all(
    split_dir: Path, files: Sequence[tuple[str, int]], size: int
) -> tuple[np.ndarray, list[int]]:
    """Decode in threads (PIL releases the GIL while decoding); returns images and the indices of
    files that could not be read."""
    out = np.empty((len(files), size, size, 3), dtype=np.uint8)
    bad: list[int] = []

    def work(i: int) -> None:
        try:
            out[i] = decode_image(split_dir / files[i][0], size)
        except (OSError, ValueError, Image.DecompressionBombError):
            bad.append(i)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
            list(pool.map(work, range(len(files)), chunksize=64))
    return out, sorted(bad)


def load_split(cfg: DataConfig, split: str) -> ImageSet:
    """The decoded split from the cache, building the cache first if it is missing or stale."""
    split_dir = cfg.root / split
    limit = cfg.max_per_class if split == "train" else cfg.val_max_per_class
    classes, files, others = _listing(split_dir, limit)
    key = _fingerprint(split_dir, files, cfg.image_size)
    root_id = hashlib.sha256(str(split_dir).encode()).hexdigest()[:12]
    stem = f"{split}-{cfg.image_size}px-n{len(files)}"
    cache_dir = cache_root() / f"{cfg.root.name}-{root_id}"
    path = cache_dir / f"{stem}-{key}.pt"
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock"):  # one process decodes; the others wait and reuse
            if not path.exists():
                _build(split_dir, classes, files, others, cfg.image_size, path, stem)
    except OSError as e:
        raise DataError(f"cannot write the image cache in {cache_dir}: {e.strerror or e}") from None
    blob = torch.load(path, mmap=True, weights_only=True)
    return ImageSet(blob["images"], blob["labels"], tuple(blob["classes"]), tuple(blob["files"]))


def _build(
    split_dir: Path,
    classes: tuple[str, ...],
    files: list[tuple[str, int]],
    others: list[str],
    size: int,
    path: Path,
    stem: str,
) -> None:
    """Decode ``files`` into the cache file ``path``; one warning names the files left out (those
    that did not decode, and ``others``: the listing's non-image files, never opened)."""
    need = len(files) * size * size * 3  # bytes of the (N, S, S, 3) uint8 array
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if need > ram:
        raise DataError(
            f"{len(files)} images of {split_dir} at {size}x{size} need {need / 2**30:.1f} GiB "
            f"decoded, more than this machine's {ram / 2**30:.1f} GiB of memory (lower "
            "data.image_size or data.max_per_class)"
        )
    try:
        images, bad = _decode_all(split_dir, files, size)
    except MemoryError:
        raise DataError(
            f"out of memory decoding {len(files)} images of {split_dir} at {size}x{size} "
            f"({need / 2**30:.1f} GiB; lower data.image_size or data.max_per_class)"
        ) from None
    if bad or others:
        names = [files[i][0] for i in bad] + [f"{rel} (not an image file)" for rel in others]
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        log.warning("skipped %d unreadable file(s) in %s: %s", len(names), split_dir, shown)
    if bad:
        keep = np.setdiff1d(np.arange(len(files)), np.asarray(bad, dtype=np.int64))
        images = images[keep]
        files = [files[i] for i in keep]
        for label, cls in enumerate(classes):
            if not any(lbl == label for _, lbl in files):
                raise DataError(f"class folder {split_dir / cls} has no readable image")
    blob = {
        "images": torch.from_numpy(images),
        "labels": torch.tensor([lbl for _, lbl in files], dtype=torch.int64),
        "classes": list(classes),
        "files": [rel for rel, _ in files],
    }
    try:
        with atomic_write(path) as tmp:  # readers never see a half-written cache
            torch.save(blob, tmp)
    except RuntimeError as e:  # torch's zip writer reports a full disk this way, not as OSError
        free = shutil.disk_usage(path.parent).free
        raise OSError(
            f"writing {path.name} failed with {free / 2**20:.1f} MiB free on that disk "
            f"(is it full?): {first_line(e)}"
        ) from None
    for old in path.parent.glob(f"{stem}-*.pt"):  # stale versions of the same split and size
        if old != path:
            old.unlink(missing_ok=True)


@dataclass(frozen=True)
class DeviceData:
    """Both splits held on the training device, ready for index-drawn batches."""

    train_images: torch.Tensor  # (N, S, S, 3) uint8
    train_labels: torch.Tensor  # (N,) int64
    val_images: torch.Tensor
    val_labels: torch.Tensor
    classes: tuple[str, ...]
    image_size: int
    device: torch.device


def load_data(cfg: DataConfig, device: torch.device) -> DeviceData:
    """Load (or build) both splits' caches and put them on ``device``."""
    if not cfg.root.is_dir():
        raise DataError(
            f"data root {cfg.root} {what_is(cfg.root, 'a directory')} (set HPSEARCH_DATA or "
            "data.root to an "
            "ImageFolder directory with train/ and val/)"
        )
    train, val = load_split(cfg, "train"), load_split(cfg, "val")
    if train.classes != val.classes:
        raise DataError(
            f"train and val classes differ in {cfg.root}: "
            f"{list(train.classes)} vs {list(val.classes)}"
        )
    return DeviceData(
        train.images.to(device),
        train.labels.to(device),
        val.images.to(device),
        val.labels.to(device),
        train.classes,
        cfg.image_size,
        device,
    )
