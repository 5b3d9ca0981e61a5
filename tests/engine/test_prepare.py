"""``hpsearch data prepare``: Kaggle's train.zip (built here from the shared photos, named as
Kaggle names them) laid out as the ImageFolder split a study reads, and every way it refuses."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from conftest import hpsearch
from hpsearch.engine.data import load_split
from hpsearch.engine.prepare import prepare
from hpsearch.engine.spec import DataConfig
from hpsearch.errors import DataError

CATS, DOGS = 30, 20


def photos(data_root: Path) -> list[Path]:
    return [
        *sorted((data_root / "train" / "cat").iterdir())[:CATS],
        *sorted((data_root / "train" / "dog").iterdir())[:DOGS],
    ]


@pytest.fixture
def kaggle_zip(data_root: Path, tmp_path: Path) -> Path:
    """train.zip as Kaggle gives it (train/cat.0.jpg ...), plus what a zip made on a Mac or by
    hand also holds: AppleDouble files, a text file, a folder entry."""
    path = tmp_path / "train.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("train/", "")
        for p in photos(data_root):
            zf.write(p, f"train/{p.name}")
        zf.writestr("__MACOSX/train/._cat.0.jpg", b"\x00\x05\x16\x07")
        zf.writestr("train/notes.txt", "not a photo")
    return path


def layout(root: Path) -> dict[str, set[str]]:
    return {
        f"{split}/{cls}": {f.name for f in (root / split / cls).iterdir()}
        for split in ("train", "val")
        for cls in ("cat", "dog")
    }


def test_a_kaggle_zip_becomes_the_split_a_study_reads(
    kaggle_zip: Path, data_root: Path, tmp_path: Path
) -> None:
    r = hpsearch(["data", "prepare", str(kaggle_zip), "--out", "data/catdog"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "data/catdog: cat: 24 train + 6 val, dog: 16 train + 4 val (20% of each class to val, "
        "seed 0)",
        "hpsearch run --study catdog reads it there (the study's data.root)",
    ]
    out = tmp_path / "data" / "catdog"
    got = layout(out)
    assert {k: len(v) for k, v in got.items()} == {
        "train/cat": 24,
        "val/cat": 6,
        "train/dog": 16,
        "val/dog": 4,
    }
    names = {p.name: p for p in photos(data_root)}
    for cls in ("cat", "dog"):
        both = got[f"train/{cls}"] | got[f"val/{cls}"]
        assert not got[f"train/{cls}"] & got[f"val/{cls}"]
        assert both == {n for n in names if n.startswith(cls)}  # every photo once, no junk
    for f in out.rglob("*.jpg"):
        assert f.read_bytes() == names[f.name].read_bytes()  # copied as they are
    assert sorted(p.name for p in tmp_path.joinpath("data").iterdir()) == ["catdog"]  # no temp
    # and the engine reads it as a study would
    split = load_split(DataConfig(out, 16, None, None), "val")
    assert split.classes == ("cat", "dog") and len(split.labels) == 10


def test_the_split_is_seeded_stratified_and_the_same_from_a_folder(
    kaggle_zip: Path, data_root: Path, tmp_path: Path
) -> None:
    a = prepare(kaggle_zip, tmp_path / "a", val=0.5, seed=1)
    assert a.train == {"cat": 15, "dog": 10} and a.val == {"cat": 15, "dog": 10}
    prepare(kaggle_zip, tmp_path / "b", val=0.5, seed=1)
    prepare(kaggle_zip, tmp_path / "c", val=0.5, seed=2)
    assert layout(tmp_path / "a") == layout(tmp_path / "b")
    assert layout(tmp_path / "a") != layout(tmp_path / "c")
    folder = tmp_path / "unzipped"
    with zipfile.ZipFile(kaggle_zip) as zf:
        zf.extractall(folder)
    prepare(folder, tmp_path / "d", val=0.5, seed=1)
    assert layout(tmp_path / "d") == layout(tmp_path / "a")


def test_the_competition_zip_with_train_zip_inside(kaggle_zip: Path, tmp_path: Path) -> None:
    outer = tmp_path / "dogs-vs-cats.zip"
    with zipfile.ZipFile(outer, "w") as zf:
        zf.write(kaggle_zip, "train.zip")
        zf.writestr("sampleSubmission.csv", "id,label\n")
    done = prepare(outer, tmp_path / "out")
    assert done.train == {"cat": 24, "dog": 16}


def test_an_output_folder_that_is_not_empty_is_refused_in_one_line(
    kaggle_zip: Path, tmp_path: Path
) -> None:
    out = tmp_path / "catdog"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    r = hpsearch(["data", "prepare", str(kaggle_zip), "--out", str(out)], tmp_path)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr == f"hpsearch: error: --out {out}: not empty; pass a new or empty folder\n"
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    assert (out / "mine.txt").read_text() == "keep me"
    prepare(kaggle_zip, tmp_path / "empty-is-fine")  # an empty folder is taken
    (tmp_path / "empty").mkdir()
    assert prepare(kaggle_zip, tmp_path / "empty").val == {"cat": 6, "dog": 4}


def zip_of(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


@pytest.mark.parametrize(
    ("members", "expected"),
    [
        ({"test1/1.jpg": b"x", "readme.txt": b"x"}, "no cat.N.jpg or dog.N.jpg photos in it"),
        ({"train/cat.1.jpg": b"x", "train/cat.2.jpg": b"x"}, "only cat photos; both are needed"),
        ({"train/cat.1.jpg": b"x", "train/dog.1.jpg": b"x"}, "only 1 cat photo"),
        (
            {"a/cat.1.jpg": b"x", "b/cat.1.jpg": b"x", "dog.1.jpg": b"", "dog.2.jpg": b""},
            "two photos named cat.1.jpg: a/cat.1.jpg, b/cat.1.jpg",
        ),
    ],
)
def test_a_zip_without_what_it_needs_is_one_line(
    members: dict[str, bytes], expected: str, tmp_path: Path
) -> None:
    with pytest.raises(DataError, match=expected):
        prepare(zip_of(tmp_path / "x.zip", members), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.zip"]  # nothing half-made


def test_bad_sources_and_flags_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "notes.zip").write_text("not a zip")
    cases = [
        (["nope.zip", "--out", "o"], 1, "hpsearch: error: nope.zip does not exist"),
        (["notes.zip", "--out", "o"], 1, "hpsearch: error: notes.zip: not a zip file"),
        (["notes.zip", "--out", "o", "--val", "1.5"], 2, "expected a share between 0 and 1"),
    ]
    for args, code, line in cases:
        r = hpsearch(["data", "prepare", *args], tmp_path)
        assert r.returncode == code, r.stderr
        assert len(r.stderr.splitlines()) == 1 and line in r.stderr, r.stderr
    assert not (tmp_path / "o").exists()


def test_an_output_under_a_file_names_the_file(kaggle_zip: Path, tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    with pytest.raises(DataError, match=r"afile is a file, not a folder$"):
        prepare(kaggle_zip, tmp_path / "afile" / "sub" / "catdog")
    with pytest.raises(DataError, match=r"--out .*afile: is a file, not a folder$"):
        prepare(kaggle_zip, tmp_path / "afile")
