"""predict and evaluate with a real checkpoint, on real photos the search never saw."""

from __future__ import annotations

import shutil
from pathlib import Path

import optuna
import pytest

from conftest import argv, flat_png, hpsearch
from hpsearch.results.read import ranked

pytestmark = pytest.mark.slow


def best_trial(work: Path) -> optuna.trial.FrozenTrial:
    study = optuna.load_study(study_name="smoke", storage=f"sqlite:///{work / 'hpsearch.db'}")
    return ranked(study)[0]


def link_photos(dst: Path, src: Path, per_class: int, skip: int = 0) -> Path:
    """An ImageFolder of symlinks to real photos, in a temp dir (never copied into the repo)."""
    for cls in ("cat", "dog"):
        (dst / cls).mkdir(parents=True)
        for f in sorted((src / cls).iterdir())[skip : skip + per_class]:
            (dst / cls / f.name).symlink_to(f)
    return dst


def test_predict_names_cat_or_dog(smoke_study: Path, data_root: Path, tmp_path: Path) -> None:
    unseen = sorted((data_root / "val" / "dog").iterdir())[-1]  # past the smoke study's 100
    cat = sorted((data_root / "val" / "cat").iterdir())[-1]
    # any size or mode: a grayscale PNG at another size is converted like a validation image
    from PIL import Image

    gray = tmp_path / "gray.png"
    with Image.open(cat) as im:
        im.convert("L").resize((77, 50)).save(gray)
    r = hpsearch(["predict", "--study", "smoke", str(unseen), str(cat), str(gray)], smoke_study)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 3
    for line, path in zip(lines, (unseen, cat, gray), strict=True):
        name, label, prob = line.rsplit(" ", 2)
        assert name == f"{path}:" and label in ("cat", "dog")
        assert 0.5 <= float(prob) <= 1.0


def test_predict_unreadable_image(smoke_study: Path, tmp_path: Path) -> None:
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    for path, problem in ((bad, "cannot read image"), (tmp_path / "gone.jpg", "does not exist")):
        r = hpsearch(["predict", "--study", "smoke", str(path)], smoke_study)
        assert r.returncode == 1 and "Traceback" not in r.stderr
        assert r.stderr.startswith(f"hpsearch: error: {problem if 'read' in problem else 'image'}")
        assert str(path) in r.stderr and len(r.stderr.splitlines()) == 1


BOMB_LINE = (
    "is 100.0 megapixels, over the decompression-bomb limit of 89.5 megapixels (89478485 pixels)"
)


def test_predict_refuses_a_decompression_bomb_in_one_line(
    smoke_study: Path, tmp_path: Path
) -> None:
    """100 megapixels: over Pillow's limit, under twice it, where Pillow only warns on stderr and
    decodes. predict refuses it as serve does (413), in one line, with no warning from Pillow
    (warnings shown, not the helper's PYTHONWARNINGS=ignore)."""
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(flat_png(10_000, 10_000))
    r = hpsearch(
        ["predict", "--study", "smoke", str(bomb)], smoke_study, env={"PYTHONWARNINGS": "default"}
    )
    assert r.returncode == 1, r.stdout
    assert r.stderr == f"hpsearch: error: image {bomb} {BOMB_LINE}\n"
    assert r.stdout == ""


def test_read_images_refuses_a_bomb_without_a_warning(tmp_path: Path) -> None:
    import warnings

    from hpsearch.engine.images import TooManyPixels
    from hpsearch.results.inference import read_images

    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(flat_png(10_000, 10_000))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")  # every warning recorded, the refusal still an error
        with pytest.raises(TooManyPixels) as e:
            read_images([str(bomb)], 32)
    assert str(e.value) == f"image {bomb} {BOMB_LINE}"
    assert not [w for w in seen if "DecompressionBomb" in w.category.__name__]


def test_evaluate_reproduces_the_trials_accuracy(
    smoke_study: Path, data_root: Path, tmp_path: Path
) -> None:
    """On the 100 + 100 val photos the trial was scored on, the checkpoint scores the same."""
    folder = link_photos(tmp_path / "seen", data_root / "val", 100)
    best = best_trial(smoke_study)
    r = hpsearch([*argv("evaluate --study smoke --data"), str(folder)], smoke_study)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith(f"trial {best.number} (val_accuracy {best.value:.4f}")
    assert lines[1] == f"accuracy {best.value:.4f} on 200 images in {folder}"


def test_evaluate_on_unseen_photos(smoke_study: Path, data_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "unseen"
    link_photos(root / "val", data_root / "val", 30, skip=1000)  # a data-set root: DIR/val
    r = hpsearch([*argv("evaluate --study smoke --data"), str(root)], smoke_study)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    acc = float(lines[1].split()[1])
    assert lines[1] == f"accuracy {acc:.4f} on 60 images in {root / 'val'}"
    assert lines[2].startswith("per class: cat ") and " (30), dog " in lines[2]
    assert lines[3] == "confusion matrix (rows: true class, columns: predicted):"
    cells = [[int(n) for n in line.split()[1:]] for line in lines[5:7]]
    assert [sum(row) for row in cells] == [30, 30]
    assert (cells[0][0] + cells[1][1]) / 60 == pytest.approx(acc, abs=1e-4)


def test_evaluate_rejects_what_is_not_an_imagefolder(
    smoke_study: Path, data_root: Path, tmp_path: Path
) -> None:
    flat = tmp_path / "flat"
    flat.mkdir()
    shutil.copy(sorted((data_root / "val" / "cat").iterdir())[0], flat / "a.jpg")
    birds = link_photos(tmp_path / "birds", data_root / "val", 2)
    (birds / "dog").rename(birds / "bird")
    cases = [
        (flat, "not an ImageFolder directory"),
        (tmp_path / "missing", "is not a directory"),
        (birds, "class folder(s) bird"),
    ]
    for folder, problem in cases:
        r = hpsearch([*argv("evaluate --study smoke --data"), str(folder)], smoke_study)
        assert r.returncode == 1, r.stdout
        assert r.stderr.startswith("hpsearch: error: ") and problem in r.stderr, r.stderr
        assert len(r.stderr.splitlines()) == 1 and "Traceback" not in r.stderr
