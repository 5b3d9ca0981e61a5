from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import torch

from conftest import small_imagefolder
from hpsearch.engine.data import cache_root, load_data, load_split
from hpsearch.engine.images import decode_image
from hpsearch.engine.spec import DataConfig
from hpsearch.errors import DataError


def cfg(root: Path, size: int = 32) -> DataConfig:
    return DataConfig(root=root, image_size=size, max_per_class=None, val_max_per_class=None)


def cache_files() -> list[Path]:
    return sorted(cache_root().rglob("*.pt"))


@pytest.fixture
def folder(tmp_path: Path, data_root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HPSEARCH_CACHE", str(tmp_path / "cache"))
    return small_imagefolder(tmp_path / "imgs", data_root, per_class=12, val_per_class=4)


def test_decodes_real_photos(folder: Path) -> None:
    s = load_split(cfg(folder, 40), "train")
    assert s.images.shape == (24, 40, 40, 3) and s.images.dtype == torch.uint8
    assert s.classes == ("cat", "dog")
    assert s.labels.tolist() == [0] * 12 + [1] * 12
    assert s.files[0].startswith("cat/") and s.files[-1].startswith("dog/")
    # same pixels as decoding the file directly
    first = torch.from_numpy(decode_image(folder / "train" / s.files[0], 40))
    assert torch.equal(s.images[0], first)
    assert 20 < s.images.float().mean() < 235  # real photos, not blank


def test_cache_is_built_once_and_reused(folder: Path) -> None:
    load_split(cfg(folder), "train")
    (built,) = cache_files()
    stamp = built.stat().st_mtime_ns
    again = load_split(cfg(folder), "train")
    assert cache_files() == [built] and built.stat().st_mtime_ns == stamp
    assert len(again) == 24
    load_split(cfg(folder, 48), "train")  # another size is another cache entry
    assert len(cache_files()) == 2


def test_cache_is_rebuilt_when_a_file_changes(folder: Path) -> None:
    before = load_split(cfg(folder), "train")
    (old,) = cache_files()
    victim = folder / "train" / "cat" / before.files[0].split("/")[1]
    other = folder / "train" / "dog" / before.files[-1].split("/")[1]
    victim.write_bytes(other.read_bytes())  # same name, a dog's pixels
    os.utime(victim, ns=(1, 1))
    after = load_split(cfg(folder), "train")
    (new,) = cache_files()
    assert new != old  # rebuilt, and the stale entry removed
    assert torch.equal(after.images[0], before.images[-1])
    (folder / "train" / "dog" / "extra.jpg").write_bytes(other.read_bytes())
    assert len(load_split(cfg(folder), "train")) == 25


def test_max_per_class_takes_first_files_by_name(data_root: Path) -> None:
    c = DataConfig(root=data_root, image_size=32, max_per_class=5, val_max_per_class=3)
    s = load_split(c, "train")
    assert len(s) == 10
    assert list(s.files[:5]) == [
        f"cat/{n}" for n in sorted(os.listdir(data_root / "train/cat"))[:5]
    ]
    assert len(load_split(c, "val")) == 6


def test_unreadable_files_are_skipped_with_one_warning(
    folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (folder / "train" / "cat" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (folder / "train" / "cat" / "notes.txt").write_text("hello")
    with caplog.at_level(logging.WARNING):
        s = load_split(cfg(folder), "train")
    assert len(s) == 24
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "skipped 2 unreadable file(s)" in warnings[0]
    assert "cat/broken.jpg" in warnings[0] and "cat/notes.txt" in warnings[0]


@pytest.mark.parametrize(
    ("damage", "needle"),
    [
        (lambda r: __import__("shutil").rmtree(r / "val"), "val does not exist"),
        (
            lambda r: __import__("shutil").rmtree(r / "train" / "dog"),
            "a classifier needs at least 2",
        ),
        (lambda r: [p.unlink() for p in (r / "train" / "dog").iterdir()], "is empty"),
        (lambda r: (r / "val" / "dog").rename(r / "val" / "bird"), "train and val classes differ"),
    ],
)
def test_bad_layouts_are_data_errors(folder: Path, damage: object, needle: str) -> None:
    damage(folder)  # type: ignore[operator]
    with pytest.raises(DataError, match=needle):
        load_data(cfg(folder), torch.device("cpu"))


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_data(cfg(tmp_path / "nowhere"), torch.device("cpu"))


def test_odd_but_readable_images_are_converted_and_the_rest_skipped(
    folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from PIL import Image

    cats = folder / "train" / "cat"
    photo = Image.open(next(cats.glob("*.jpg")))
    photo.convert("L").save(cats / "gray.jpg")  # grayscale JPEG
    photo.convert("CMYK").save(cats / "cmyk.jpg")  # CMYK JPEG
    photo.convert("RGBA").save(cats / "alpha.png")  # PNG with transparency
    photo.convert("P").save(cats / "palette.gif")  # palette GIF
    photo.resize((6000, 4500)).save(cats / "huge.jpg", quality=70)  # 27 megapixels
    (cats / "empty.jpg").write_bytes(b"")  # zero bytes
    (cats / "truncated.jpg").write_bytes((cats / "huge.jpg").read_bytes()[:2000])
    with caplog.at_level(logging.WARNING):
        s = load_split(cfg(folder), "train")
    assert len(s) == 24 + 5  # every convertible file is in, as 32x32 RGB
    assert s.images.shape[1:] == (32, 32, 3)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "skipped 2 unreadable file(s)" in warnings[0]
    assert "cat/empty.jpg" in warnings[0] and "cat/truncated.jpg" in warnings[0]
    gray = s.images[list(s.files).index("cat/gray.jpg")].float()
    assert torch.equal(gray[..., 0], gray[..., 1])  # grey stays grey after conversion


def test_non_image_files_are_left_out_unopened(
    folder: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hpsearch.engine.data

    cats = folder / "train" / "cat"
    (cats / "notes.txt").write_text("hello")
    (cats / "Thumbs.db").write_bytes(b"\0" * 64)
    (cats / "UPPER.JPG").write_bytes(next(cats.glob("*.jpg")).read_bytes())  # any case
    opened: list[str] = []
    decode = hpsearch.engine.data.decode_image
    monkeypatch.setattr(
        hpsearch.engine.data,
        "decode_image",
        lambda p, s: opened.append(Path(p).name) or decode(p, s),
    )
    with caplog.at_level(logging.WARNING):
        s = load_split(cfg(folder), "train")
    assert len(s) == 25 and "cat/UPPER.JPG" in s.files
    assert "notes.txt" not in opened and "Thumbs.db" not in opened  # never decoded
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "skipped 2 unreadable file(s)" in warning
    assert "cat/notes.txt (not an image file)" in warning and "cat/Thumbs.db" in warning


def test_a_class_folder_of_non_images_says_what_it_holds(folder: Path) -> None:
    dogs = folder / "train" / "dog"
    for p in dogs.iterdir():
        p.rename(p.with_suffix(".txt"))
    with pytest.raises(DataError, match=r"train/dog has no image file, only 12 other file\(s\)"):
        load_split(cfg(folder), "train")
