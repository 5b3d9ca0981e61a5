"""Checkpoints of a real smoke search: the top K kept as Optuna artifacts, loaded safely."""

from __future__ import annotations

import io
import shutil
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch

from conftest import argv, hpsearch, tiny_arch
from hpsearch.config import load_study, parse_set
from hpsearch.errors import ConfigError
from hpsearch.results.read import ranked
from hpsearch.storage.artifacts import AtomicArtifactStore, CheckpointError, checkpoint_path
from hpsearch.storage.checkpoint import load_checkpoint
from hpsearch.storage.state import CHECKPOINT_ATTR, KEPT_ATTR
from hpsearch.storage.urls import artifacts_dir

pytestmark = pytest.mark.slow


def load(work: Path) -> optuna.Study:
    return optuna.load_study(study_name="smoke", storage=f"sqlite:///{work / 'hpsearch.db'}")


def test_the_two_best_trials_keep_their_checkpoint(smoke_study: Path) -> None:
    study = load(smoke_study)
    store = smoke_study / "hpsearch-artifacts"
    assert artifacts_dir(f"sqlite:///{smoke_study / 'hpsearch.db'}") == store
    best = ranked(study)
    assert len(best) == 3
    kept, dropped = best[:2], best[2]
    files = {p.name for p in store.iterdir() if not p.name.startswith(".")}
    assert files == {t.user_attrs[CHECKPOINT_ATTR] for t in kept}  # nothing else, no temp file
    assert not [p for p in store.iterdir() if p.name.startswith(".")]
    assert study.user_attrs[KEPT_ATTR] == [t.number for t in kept]
    for t in kept:
        meta = optuna.artifacts.get_all_artifact_meta(t, storage=study._storage)
        assert [m.filename for m in meta] == [f"trial-{t.number}-checkpoint.pt"]
        assert checkpoint_path(t, store).is_file()
    with pytest.raises(CheckpointError, match=f"trial {dropped.number}"):
        checkpoint_path(dropped, store)


def test_checkpoint_holds_weights_params_and_config(smoke_study: Path) -> None:
    study = load(smoke_study)
    best = ranked(study)[0]
    ckpt = load_checkpoint(best, smoke_study / "hpsearch-artifacts")
    assert ckpt.trial == best.number and ckpt.value == best.value
    assert ckpt.params == best.params
    assert ckpt.classes == ("cat", "dog") and ckpt.image_size == 32
    assert ckpt.config["search"]["keep_checkpoints"] == 2
    assert ckpt.arch.n_blocks == best.params["n_blocks"]
    model = ckpt.model()
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 2)


def copy_study(src: Path, dst: Path) -> Path:
    shutil.copy(src / "hpsearch.db", dst / "hpsearch.db")
    shutil.copytree(src / "hpsearch-artifacts", dst / "hpsearch-artifacts")
    return dst


def test_a_checkpoint_whose_architecture_does_not_match_is_refused(
    smoke_study: Path, tmp_path: Path
) -> None:
    work = copy_study(smoke_study, tmp_path)
    best = ranked(load(work))[0]
    path = checkpoint_path(best, work / "hpsearch-artifacts")
    blob = torch.load(path, weights_only=True)
    blob["arch"]["channels"] = [c * 2 for c in blob["arch"]["channels"]]
    torch.save(blob, path)
    with pytest.raises(CheckpointError, match=r"records architecture .* refusing to load"):
        load_checkpoint(best, work / "hpsearch-artifacts")
    r = hpsearch(
        ["export", "--study", "smoke", "--format", "torchscript", "--output", "m.pt"], work
    )
    assert r.returncode == 1
    assert r.stderr.startswith("hpsearch: error: checkpoint ") and "refusing" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_a_corrupt_checkpoint_is_refused(
    smoke_study: Path, tmp_path: Path, data_root: Path
) -> None:
    work = copy_study(smoke_study, tmp_path)
    best = ranked(load(work))[0]
    path = checkpoint_path(best, work / "hpsearch-artifacts")
    path.write_bytes(path.read_bytes()[:1000])  # a truncated file
    photo = sorted((data_root / "val" / "cat").iterdir())[0]
    r = hpsearch(["predict", "--study", "smoke", str(photo)], work)
    assert r.returncode == 1
    assert r.stderr.startswith("hpsearch: error: cannot read checkpoint")
    assert "Traceback" not in r.stderr


def _break_missing_trial(blob: dict[str, Any]) -> None:
    del blob["trial"]


def _break_config(blob: dict[str, Any]) -> None:
    blob["config"] = "{not json"


def _break_arch(blob: dict[str, Any]) -> None:
    blob["arch"]["wings"] = 2


def _break_size(blob: dict[str, Any]) -> None:
    blob["image_size"] = -5


def _break_weights(blob: dict[str, Any]) -> None:
    first = next(iter(blob["state_dict"]))
    blob["state_dict"][first] = blob["state_dict"][first].clone().fill_(float("nan"))


@pytest.mark.parametrize(
    "damage,needle",
    [
        (_break_missing_trial, "is broken: its 'trial' is nothing"),
        (_break_config, "is broken: its config is not JSON"),
        (_break_arch, "architecture has the wrong fields (wings)"),
        (_break_size, "is broken: image_size -5"),
        (_break_weights, "weights hold NaN or infinity"),
    ],
    ids=["no-trial", "config", "arch", "size", "nan"],
)
def test_a_checkpoint_with_broken_contents_is_one_line(
    smoke_study: Path, tmp_path: Path, data_root: Path, damage: Any, needle: str
) -> None:
    """The right format tag, broken contents: predict refuses in one line (it was a traceback,
    and NaN weights predicted "cat nan")."""
    work = copy_study(smoke_study, tmp_path)
    best = ranked(load(work))[0]
    path = checkpoint_path(best, work / "hpsearch-artifacts")
    blob = torch.load(path, weights_only=True)
    damage(blob)
    torch.save(blob, path)
    photo = sorted((data_root / "val" / "cat").iterdir())[0]
    r = hpsearch(["predict", "--study", "smoke", str(photo)], work)
    assert r.returncode == 1, r.stdout + r.stderr
    assert needle in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert "nan" not in r.stdout


def test_a_removed_checkpoint_names_the_kept_ones(smoke_study: Path) -> None:
    dropped = ranked(load(smoke_study))[2]
    r = hpsearch(
        [
            *argv("export --study smoke --format torchscript --output x.pt --trial"),
            str(dropped.number),
        ],
        smoke_study,
    )
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert f"the checkpoint of trial {dropped.number} is not in" in r.stderr
    assert "checkpoints are kept for trial(s)" in r.stderr
    assert not (smoke_study / "x.pt").exists()


class FailingReader(io.RawIOBase):
    """A source that breaks off after some bytes, like a disk filling up mid-copy."""

    def __init__(self) -> None:
        self.sent = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.sent >= 3:
            raise OSError(28, "No space left on device")
        buffer[:1] = b"x"
        self.sent += 1
        return 1


def test_an_interrupted_write_leaves_no_file(tmp_path: Path) -> None:
    store = AtomicArtifactStore(tmp_path / "store")
    with pytest.raises(OSError, match="No space"):
        store.write("abc-123", io.BufferedReader(FailingReader()))
    assert list((tmp_path / "store").iterdir()) == []
    store.write("abc-123", io.BytesIO(b"complete"))
    assert (tmp_path / "store" / "abc-123").read_bytes() == b"complete"
    with pytest.raises(CheckpointError, match="invalid artifact id"):
        store.path_of("../escape")


@pytest.mark.parametrize(
    ("value", "problem"),
    [("-1", "must be >= 0"), ("many", "expected an integer"), ("true", "expected an integer")],
)
def test_keep_checkpoints_is_validated(value: str, problem: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_study("smoke", [parse_set(f"search.keep_checkpoints={value}")])
    assert "search.keep_checkpoints" in str(e.value) and problem in str(e.value)
    assert load_study("smoke").search.keep_checkpoints == 3


def test_keep_checkpoints_zero_saves_none(tmp_path: Path) -> None:
    r = hpsearch(
        argv(
            "run --study smoke --trials 1 --artifacts ckpts --set search.keep_checkpoints=0 "
            "--set data.max_per_class=20 --set data.val_max_per_class=10 --set train.epochs=1"
        ),
        tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / "ckpts").exists()
    t = load(tmp_path).trials[0]
    assert CHECKPOINT_ATTR not in t.user_attrs
    r = hpsearch(["best", "--study", "smoke", "--artifacts", "ckpts"], tmp_path)
    assert r.returncode == 0 and "checkpoint: null" in r.stdout


def test_artifacts_flag_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    assert artifacts_dir(url) == tmp_path / "runs-artifacts"
    assert artifacts_dir(url, str(tmp_path / "x")) == tmp_path / "x"
    monkeypatch.setenv("HPSEARCH_ARTIFACTS", str(tmp_path / "env"))
    assert artifacts_dir(url) == tmp_path / "env"
    monkeypatch.delenv("HPSEARCH_ARTIFACTS")
    monkeypatch.chdir(tmp_path)
    assert artifacts_dir("postgresql://u:p@h/db") == tmp_path / "hpsearch-artifacts"
    (tmp_path / "afile").write_text("x")  # a file where checkpoints go: refused, naming the flag
    with pytest.raises(ConfigError, match=r"^--artifacts: .*afile is a file, not a directory$"):
        artifacts_dir(url, str(tmp_path / "afile"))
    monkeypatch.setenv("HPSEARCH_ARTIFACTS", str(tmp_path / "afile"))
    with pytest.raises(ConfigError, match=r"^HPSEARCH_ARTIFACTS: .*is a file, not a directory$"):
        artifacts_dir(url)


def test_two_trials_finishing_together_leave_keep_checkpoints_files(tmp_path: Path) -> None:
    """Each of two workers ranks the other's trial as still running, so both save a file; the
    ``settle`` callback that runs after COMPLETE removes the extra one at once."""
    from optuna.trial import FrozenTrial

    from hpsearch.engine.model import build_model
    from hpsearch.storage.checkpoint import CheckpointKeeper

    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'db.sqlite'}", direction="maximize")
    store = tmp_path / "store"
    keeper = CheckpointKeeper(store, 1, load_study("smoke"), ("cat", "dog"), 32, {})
    arch = tiny_arch()
    model = build_model(arch, 2, 32)
    a, b = study.ask(), study.ask()  # two workers' trials, both running
    assert keeper.offer(a, model, arch, 0.8) and keeper.offer(b, model, arch, 0.7)
    done: dict[int, FrozenTrial] = {}
    for trial, value in ((a, 0.8), (b, 0.7)):
        done[trial.number] = study.tell(trial, value)
    for frozen in done.values():  # each worker's callback, after its own trial completed
        keeper.settle(study, frozen)
    files = {p.name for p in store.iterdir() if not p.name.startswith(".")}
    assert files == {done[a.number].user_attrs[CHECKPOINT_ATTR]}
    assert study.user_attrs[KEPT_ATTR] == [a.number]
