"""export: TorchScript (and ONNX when installed) files of a real checkpoint, checked by running
them against the checkpoint's own model."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import optuna
import pytest
import torch

from conftest import argv, hpsearch
from hpsearch.engine.infer import IMAGENET_MEAN, IMAGENET_STD
from hpsearch.errors import HpsearchError
from hpsearch.results.export import export, onnx_available
from hpsearch.results.read import ranked
from hpsearch.storage.checkpoint import Checkpoint, load_checkpoint

pytestmark = pytest.mark.slow


def best_checkpoint(work: Path, rank: int = 0) -> Checkpoint:
    study = optuna.load_study(study_name="smoke", storage=f"sqlite:///{work / 'hpsearch.db'}")
    return load_checkpoint(ranked(study)[rank], work / "hpsearch-artifacts")


def reference_logits(work: Path, x: torch.Tensor, rank: int = 0) -> torch.Tensor:
    """The checkpoint's network on ``x`` (RGB in [0, 1]), normalised by hand."""
    ckpt = best_checkpoint(work, rank)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        out: torch.Tensor = ckpt.model()((x - mean) / std)
    return out


@pytest.mark.parametrize("rank", [0, 1])
def test_torchscript_runs_a_batch_like_the_checkpoint(
    smoke_study: Path, tmp_path: Path, rank: int
) -> None:
    study = optuna.load_study(
        study_name="smoke", storage=f"sqlite:///{smoke_study / 'hpsearch.db'}"
    )
    trial = ranked(study)[rank]
    out = tmp_path / "model.pt"
    cmd = f"export --study smoke --format torchscript --output {out}"
    if rank:
        cmd += f" --trial {trial.number}"
    r = hpsearch(argv(cmd), smoke_study)
    assert r.returncode == 0, r.stderr
    assert f"exported trial {trial.number} (val_accuracy {trial.value:.4f})" in r.stdout
    assert "(B, 3, 32, 32)" in r.stdout and "cat, dog" in r.stdout

    extra = {"hpsearch.json": ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model = torch.jit.load(str(out), _extra_files=extra)
    meta = json.loads(extra["hpsearch.json"])
    assert meta["classes"] == ["cat", "dog"] and meta["image_size"] == 32
    assert meta["trial"] == trial.number and meta["params"] == trial.params
    assert list(model.classes) == ["cat", "dog"] and model.image_size == 32
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(rank))
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (2, 2)
    torch.testing.assert_close(logits, reference_logits(smoke_study, x, rank))
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # no temporary file left


@pytest.mark.skipif(not onnx_available(), reason="the onnx extra is not installed")
def test_onnx_runs_a_batch_like_the_checkpoint(smoke_study: Path, tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    import onnx

    out = tmp_path / "model.onnx"
    r = hpsearch(argv(f"export --study smoke --format onnx --output {out}"), smoke_study)
    assert r.returncode == 0, r.stderr
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(meta["hpsearch"])["classes"] == ["cat", "dog"]
    session = ort.InferenceSession(str(out))
    x = torch.rand(3, 3, 32, 32)  # a batch size other than the export example's
    (logits,) = session.run(None, {"images": x.numpy()})
    assert logits.shape == (3, 2)
    torch.testing.assert_close(
        torch.from_numpy(logits), reference_logits(smoke_study, x), atol=1e-4, rtol=1e-4
    )


def test_onnx_without_the_extra_says_how_to_install_it(
    smoke_study: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)  # makes "import onnx" fail, as if absent
    ckpt = best_checkpoint(smoke_study)
    with pytest.raises(HpsearchError, match=r"pip install 'hpsearch\[onnx\]'"):
        export(ckpt, "onnx", tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_bad_export_arguments(smoke_study: Path, tmp_path: Path) -> None:
    r = hpsearch(argv("export --study smoke --format pickle --output m.pkl"), smoke_study)
    assert r.returncode == 2 and "invalid choice: 'pickle'" in r.stderr
    r = hpsearch(
        argv(f"export --study smoke --format torchscript --output {tmp_path}/no/such/dir/m.pt"),
        smoke_study,
    )
    assert r.returncode == 1 and "does not exist" in r.stderr and "Traceback" not in r.stderr
    r = hpsearch(
        argv("export --study smoke --format torchscript --output m.pt --trial 99"), smoke_study
    )
    assert r.returncode == 1 and "study 'smoke' has no trial 99" in r.stderr
