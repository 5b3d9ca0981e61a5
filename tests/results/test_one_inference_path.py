"""One inference path (``engine.infer``): a trial's validation in ``fit``, ``evaluate``,
``predict`` and ``serve``'s model give the same numbers for the same checkpoint and photos, under
the CPU's fp32 policy and under a simulated reduced-precision one (bf16 autocast, as on CUDA):
a path with its own precision would disagree there."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import torch

from conftest import small_imagefolder
from hpsearch.config import load_study, parse_set
from hpsearch.engine import infer
from hpsearch.engine.data import load_data
from hpsearch.engine.spec import DataConfig
from hpsearch.engine.train import FitResult, fit
from hpsearch.results.inference import evaluate, predict
from hpsearch.serve.app import Model
from hpsearch.space import Recorder, baseline_value, sample_values, to_trial_spec
from hpsearch.storage.checkpoint import Checkpoint, checkpoint_blob, checkpoint_from_blob

CPU = torch.device("cpu")


def bf16_autocast(device: torch.device) -> contextlib.AbstractContextManager[object]:
    """The CUDA branch of the policy, on the CPU: bf16 autocast (CPU autocast exists)."""
    return torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False)


@pytest.fixture(params=["fp32", "bf16"])
def policy(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The CPU's own policy, or inference under bf16 autocast (training stays fp32)."""
    if request.param == "bf16":
        monkeypatch.setattr(infer, "autocast", bf16_autocast)
    threads = torch.get_num_threads()
    yield str(request.param)
    torch.set_num_threads(threads)  # serve's Model leaves a core to its event loop


@dataclass
class Trained:
    root: Path
    result: FitResult
    ckpt: Checkpoint


def train(root: Path, tmp: Path) -> Trained:
    """The smoke study's seed baseline, one epoch on 60 + 60 photos, validated on 40 + 40, and
    its checkpoint as ``fit`` left it."""
    cfg = load_study("smoke", [parse_set(f"data.root={root}")])
    rec = Recorder(baseline_value)
    spec = replace(to_trial_spec(sample_values(cfg.search, rec), cfg, 0), epochs=1)
    data = load_data(DataConfig(root, 32, None, None), CPU)
    result = fit(spec, data, eval_batch_size=500)
    blob = checkpoint_blob(
        0,
        "smoke",
        result.val_accuracy,
        rec.params,
        spec.arch,
        result.model,
        data.classes,
        data.image_size,
        cfg.to_dict(),
        {},
    )
    return Trained(root, result, checkpoint_from_blob(blob, tmp / "trial-0-checkpoint.pt"))


@pytest.fixture
def trained(policy: str, data_root: Path, tmp_path: Path) -> Trained:
    root = small_imagefolder(tmp_path / "photos", data_root, 60, 40)
    return train(root, tmp_path)


def test_the_trials_validation_is_what_evaluate_computes(trained: Trained) -> None:
    ev = evaluate(trained.ckpt, trained.root, CPU)  # DIR/val: the 80 images fit validated on
    assert ev.total == 80
    assert ev.accuracy == trained.result.val_accuracy


def test_predict_and_serve_give_the_same_label_and_probabilities(trained: Trained) -> None:
    photos = sorted((trained.root / "val" / "cat").iterdir())[:3]
    photos += sorted((trained.root / "val" / "dog").iterdir())[:3]
    served = Model(trained.ckpt, CPU)  # what hpsearch serve runs each batch through
    predicted = predict(trained.ckpt, [str(p) for p in photos], CPU)
    from hpsearch.serve.upload import decode_uploads

    images = decode_uploads([(p.name, p.read_bytes()) for p in photos], trained.ckpt.image_size)
    probs = served.probabilities(images)
    for p, row in zip(predicted, probs, strict=True):
        k = int(row.argmax())
        assert p.label == trained.ckpt.classes[k]
        assert p.probability == float(row[k])  # exactly: one path, one batch
