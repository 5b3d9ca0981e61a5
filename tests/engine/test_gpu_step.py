"""train.deterministic and train.cuda_graphs on a real CUDA device. Skipped without one;
``pytest -m gpu`` runs them where one is lent (they have not run yet: no session had a GPU when
they were written; the CPU tests in test_train.py simulate the graph)."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from hpsearch.engine.data import DeviceData, load_data
from hpsearch.engine.spec import DataConfig
from hpsearch.engine.train import FitResult, fit, time_steps
from hpsearch.space import seed_spec

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(), reason="no CUDA device (torch.cuda.is_available() is False)"
    ),
]

SEED = seed_spec(epochs=2)


@pytest.fixture(scope="module")
def cuda_data(data_root: Path) -> DeviceData:
    return load_data(DataConfig(data_root, 32, 64, 32), torch.device("cuda"))


def numbers(r: FitResult) -> list[tuple[float, ...]]:
    return [(m.train_loss, m.train_accuracy, m.val_loss, m.val_accuracy) for m in r.history]


def test_a_deterministic_fit_repeats_exactly_on_cuda(cuda_data: DeviceData) -> None:
    s = replace(SEED, deterministic=True)
    assert numbers(fit(s, cuda_data, eval_batch_size=64)) == numbers(
        fit(s, cuda_data, eval_batch_size=64)
    )


@pytest.mark.parametrize("head", ["flatten", "gap"])
def test_a_graphed_fit_repeats_and_trains_like_the_eager_one(
    cuda_data: DeviceData, head: str
) -> None:
    """4 steps an epoch: 3 eager warm-up steps, the capture, replays; with deterministic kernels
    two graphed fits agree exactly, and the eager fit lands close (the capturable optimizer does
    its bias correction on the device, the eager one on the host)."""
    s = replace(SEED, arch=replace(SEED.arch, head=head), deterministic=True, cuda_graphs=True)
    graphed = fit(s, cuda_data, eval_batch_size=64)
    assert all(math.isfinite(m.train_loss) for m in graphed.history)
    assert numbers(fit(s, cuda_data, eval_batch_size=64)) == numbers(graphed)
    eager = fit(replace(s, cuda_graphs=False), cuda_data, eval_batch_size=64)
    for g, e in zip(graphed.history, eager.history, strict=True):
        assert g.train_loss == pytest.approx(e.train_loss, rel=0.05)


def test_time_steps_times_both_steps(cuda_data: DeviceData) -> None:
    eager = time_steps(SEED, cuda_data, graphed=False, steps=20)
    graphed = time_steps(SEED, cuda_data, graphed=True, steps=20)
    assert (eager.graphed, graphed.graphed) == (False, True)
    assert eager.steps == graphed.steps == 20
