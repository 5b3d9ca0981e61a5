"""``hpsearch data prepare``: Kaggle's Dogs-vs-Cats photos laid out as the ImageFolder split a
study reads (``OUT/train/<class>/`` and ``OUT/val/<class>/``).

Kaggle gives ``train.zip`` holding ``train/cat.0.jpg`` ... ``train/dog.12499.jpg`` (the
competition's ``dogs-vs-cats.zip`` holds that ``train.zip`` in turn; both are read). The class is
the file name's prefix; each class is split on its own (stratified), the same share of it to
``val``, drawn with a seeded shuffle of the files in numeric order, so the same command gives the
same split on any machine. Photos are copied as they are (the decode cache resizes them later).

The layout is built in a temporary folder beside ``OUT`` and renamed into place at the end, so an
interrupted or failed run leaves no half-made ``OUT`` behind; an ``OUT`` that holds anything is
refused before any photo is read.
"""

from __future__ import annotations

import random
import re
import shutil
import tempfile
import zipfile
import zlib
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from hpsearch.errors import DataError
from hpsearch.files import what_is

# cat.0.jpg, dog.12499.jpg: Kaggle's names (any case; the extensions the data cache reads)
NAME = re.compile(r"^(cat|dog)\.(\d+)\.(jpe?g|png|bmp|gif|webp|tiff?)$", re.IGNORECASE)


@dataclass(frozen=True)
class Photo:
    cls: str  # "cat" or "dog"
    number: int
    name: str  # the file name it keeps, e.g. cat.0.jpg
    source: str  # its path in the zip or on disk


@dataclass(frozen=True)
class Prepared:
    out: Path
    train: dict[str, int]  # class -> photos in train/
    val: dict[str, int]  # class -> photos in val/


def _match(path: str) -> Photo | None:
    name = path.replace("\\", "/").rsplit("/", 1)[-1]
    m = NAME.match(name)
    if m is None:
        return None
    return Photo(m[1].lower(), int(m[2]), name, path)


def split(photos: list[Photo], val: float, seed: int) -> tuple[list[Photo], list[Photo]]:
    """(train, val): per class, ``round(n * val)`` photos (at least one, and one left to train)
    drawn by a shuffle seeded with ``seed`` of the class's photos in numeric order."""
    train_out: list[Photo] = []
    val_out: list[Photo] = []
    for cls in sorted({p.cls for p in photos}):
        mine = sorted((p for p in photos if p.cls == cls), key=lambda p: (p.number, p.name))
        if len(mine) < 2:
            raise DataError(f"only {len(mine)} {cls} photo: a train and a val split need 2")
        random.Random(f"{seed}:{cls}").shuffle(mine)
        k = min(max(round(len(mine) * val), 1), len(mine) - 1)
        val_out += mine[:k]
        train_out += mine[k:]
    return train_out, val_out


class _Source:
    """The photos of a zip (or of a zip inside it) or of a folder tree, and a way to open one."""

    def __init__(self, path: Path, stack: ExitStack) -> None:
        self.path = path
        self.zip: zipfile.ZipFile | None = None
        if path.is_dir():
            self.photos = [
                p for f in sorted(path.rglob("*")) if f.is_file() and (p := _match(str(f)))
            ]
            return
        if not path.is_file():
            raise DataError(f"{path} {what_is(path, 'a zip file or a folder of photos')}")
        try:
            zf = stack.enter_context(zipfile.ZipFile(path))
            self.photos = [p for n in zf.namelist() if (p := _match(n))]
            inner = [n for n in zf.namelist() if n.rsplit("/", 1)[-1].lower() == "train.zip"]
            if not self.photos and inner:
                # the competition's dogs-vs-cats.zip: train.zip inside, copied out to an
                # anonymous file (opening members of a zip read from inside another zip seeks
                # back to its start for each one)
                copy = stack.enter_context(_scratch(path.parent))
                with zf.open(inner[0]) as r:
                    shutil.copyfileobj(r, copy)
                zf = stack.enter_context(zipfile.ZipFile(copy))
                self.photos = [p for n in zf.namelist() if (p := _match(n))]
        except zipfile.BadZipFile as e:
            raise DataError(f"{path}: not a zip file ({e}); pass Kaggle's train.zip") from None
        self.zip = zf

    def open(self, photo: Photo) -> IO[bytes]:
        if self.zip is not None:
            return self.zip.open(photo.source)
        return open(photo.source, "rb")


def _scratch(near: Path) -> IO[bytes]:
    """An anonymous temporary file (gone when closed, or when the process dies) beside ``near``
    if that folder is writable, else in the system's temporary folder."""
    try:
        return tempfile.TemporaryFile(dir=near)
    except OSError:
        return tempfile.TemporaryFile()


def _refuse_nonempty(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out}: {what_is(out, 'a folder')}")
    if out.is_dir() and any(out.iterdir()):
        raise DataError(f"--out {out}: not empty; pass a new or empty folder")


def prepare(source: Path, out: Path, val: float = 0.2, seed: int = 0) -> Prepared:
    """Lay out the cat and dog photos of ``source`` (a zip or a folder) under ``out``."""
    if not 0 < val < 1:
        raise DataError(f"--val: a share between 0 and 1 (exclusive), got {val}")
    _refuse_nonempty(out)
    with ExitStack() as stack:
        src = _Source(source, stack)
        if not src.photos:
            raise DataError(
                f"{source}: no cat.N.jpg or dog.N.jpg photos in it (Kaggle's Dogs-vs-Cats "
                "train.zip holds train/cat.0.jpg ... train/dog.12499.jpg)"
            )
        classes = {p.cls for p in src.photos}
        if classes != {"cat", "dog"}:
            raise DataError(f"{source}: only {', '.join(sorted(classes))} photos; both are needed")
        seen: dict[str, str] = {}
        for p in src.photos:
            if p.name in seen:
                raise DataError(f"{source}: two photos named {p.name}: {seen[p.name]}, {p.source}")
            seen[p.name] = p.source
        train, held = split(src.photos, val, seed)
        tmp: Path | None = None
        try:
            try:
                out.parent.mkdir(parents=True, exist_ok=True)
                tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
            except OSError as e:
                blocker = next((a for a in out.parents if a.exists()), None)
                if blocker is not None and not blocker.is_dir():
                    raise DataError(f"--out {out}: {blocker} is a file, not a folder") from None
                raise DataError(f"--out {out}: cannot write there: {e.strerror or e}") from None
            for part, photos in (("train", train), ("val", held)):
                for cls in sorted(classes):
                    (tmp / part / cls).mkdir(parents=True)
                for p in photos:
                    _copy(src, p, tmp / part / p.cls / p.name)
            _refuse_nonempty(out)  # another command may have filled it meanwhile
            if out.is_dir():
                out.rmdir()
            tmp.rename(out)
        except BaseException as e:
            if tmp is not None and tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(e, OSError):
                raise DataError(f"cannot write {out}: {e.strerror or e}") from None
            raise
    return Prepared(out, _count(train), _count(held))


def _copy(src: _Source, photo: Photo, dest: Path) -> None:
    try:
        with src.open(photo) as r, open(dest, "xb") as w:
            shutil.copyfileobj(r, w)
    except (zipfile.BadZipFile, zlib.error, EOFError) as e:
        raise DataError(f"{src.path}: {photo.source} is damaged ({e})") from None


def _count(photos: list[Photo]) -> dict[str, int]:
    return dict(sorted(Counter(p.cls for p in photos).items()))
