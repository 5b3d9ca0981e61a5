from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from hpsearch.engine import determinism, graphs, train
from hpsearch.engine.augment import random_resized_crop
from hpsearch.engine.data import DeviceData, load_data
from hpsearch.engine.infer import Normalizer
from hpsearch.engine.spec import ArchSpec, DataConfig, OptimSpec, TrialSpec
from hpsearch.engine.train import EpochMetrics, FitResult, NonFiniteLoss, fit


@pytest.fixture(scope="module")
def data(data_root: Path) -> DeviceData:
    c = DataConfig(root=data_root, image_size=32, max_per_class=200, val_max_per_class=100)
    return load_data(c, torch.device("cpu"))


def spec(epochs: int = 4, lr: float = 2e-3, optimizer: str = "adam", **kw: object) -> TrialSpec:
    arch = ArchSpec(
        channels=(16, 32),
        kernel_sizes=(3, 3),
        activation="relu",
        batch_norm=True,
        residual=False,
        dropout=0.0,
        dense_units=64,
    )
    base: dict[str, object] = dict(
        arch=arch,
        optim=OptimSpec(
            optimizer=optimizer,
            lr=lr,
            weight_decay=1e-4,
            momentum=0.9,
            lr_decay_step=10,
            lr_decay_gamma=0.9,
        ),
        batch_size=32,
        epochs=epochs,
        seed=0,
        crop_scale=(0.35, 1.0),
        flip=True,
    )
    base.update(kw)
    return TrialSpec(**base)  # type: ignore[arg-type]


def test_training_on_real_images_lowers_the_loss(data: DeviceData) -> None:
    seen: list[EpochMetrics] = []
    result = fit(spec(epochs=5), data, seen.append)
    assert [m.epoch for m in seen] == [1, 2, 3, 4, 5]
    assert seen[-1].train_loss < seen[0].train_loss - 0.02
    assert seen[-1].val_loss < math.log(2)  # better than chance
    assert result.val_accuracy > 0.55
    assert all(m.train_images_per_s > 0 and m.epoch_seconds >= m.train_seconds for m in seen)
    assert result.n_params == sum(p.numel() for p in result.model.parameters())


def test_same_seed_same_result(data: DeviceData) -> None:
    a = fit(spec(epochs=1), data).history[0]
    b = fit(spec(epochs=1), data).history[0]
    assert a.train_loss == b.train_loss and a.val_accuracy == b.val_accuracy


def test_step_lr_decays_every_step_epochs(data: DeviceData) -> None:
    s = spec(
        epochs=4,
        optim=OptimSpec(
            optimizer="sgd",
            lr=0.01,
            weight_decay=0.0,
            momentum=0.9,
            lr_decay_step=2,
            lr_decay_gamma=0.5,
        ),
    )
    lrs = [m.lr for m in fit(s, data).history]
    assert lrs == pytest.approx([0.01, 0.01, 0.005, 0.005])


def test_cosine_schedule_anneals_over_the_trials_epochs(data: DeviceData) -> None:
    """lr_schedule cosine: epoch e of E trains at lr * (1 + cos(pi * (e - 1) / E)) / 2, and the
    StepLR fields, whatever they say, change nothing."""
    s = spec(
        epochs=4,
        optim=OptimSpec(
            optimizer="sgd",
            lr=0.01,
            weight_decay=0.0,
            momentum=0.9,
            lr_decay_step=1,
            lr_decay_gamma=0.1,
            lr_schedule="cosine",
        ),
    )
    lrs = [m.lr for m in fit(s, data).history]
    assert lrs == pytest.approx([0.01 * (1 + math.cos(math.pi * k / 4)) / 2 for k in range(4)])


def test_diverging_loss_raises(data: DeviceData) -> None:
    with pytest.raises(NonFiniteLoss, match="epoch 1"):
        fit(
            spec(
                epochs=2,
                optim=OptimSpec(
                    optimizer="sgd",
                    lr=1e30,
                    weight_decay=0.0,
                    momentum=0.9,
                    lr_decay_step=10,
                    lr_decay_gamma=0.9,
                ),
            ),
            data,
        )


def test_on_epoch_can_stop_training(data: DeviceData) -> None:
    class Stop(Exception):
        pass

    def stop(m: EpochMetrics) -> None:
        raise Stop

    with pytest.raises(Stop):
        fit(spec(epochs=3), data, stop)


def test_augmentation_shapes_and_identity(data: DeviceData) -> None:
    x = Normalizer(torch.device("cpu"))(data.train_images[:8])
    assert x.shape == (8, 3, 32, 32)
    assert x.mean().abs() < 1.5  # normalised
    g = torch.Generator().manual_seed(0)
    same = random_resized_crop(x, (1.0, 1.0), False, g)
    assert torch.allclose(same, x, atol=1e-4)
    flipped = random_resized_crop(x, (1.0, 1.0), True, g)
    for a, b in zip(flipped, x, strict=True):
        assert torch.allclose(a, b, atol=1e-4) or torch.allclose(a, b.flip(-1), atol=1e-4)
    cropped = random_resized_crop(x, (0.3, 0.5), True, g)
    assert cropped.shape == x.shape and not torch.allclose(cropped, x)


def numbers(r: FitResult) -> list[tuple[float, ...]]:
    """What a fit learned, epoch by epoch (not how long it took)."""
    return [(m.train_loss, m.train_accuracy, m.val_loss, m.val_accuracy, m.lr) for m in r.history]


@pytest.fixture
def no_cublas_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(determinism.CUBLAS_VARIABLE, raising=False)


def test_deterministic_sets_the_flags_during_fit_and_repeats_exactly(
    data: DeviceData, no_cublas_setting: None
) -> None:
    """train.deterministic: deterministic algorithms on and cuDNN benchmark off while fit runs,
    cuBLAS's workspace set for the process; both flags as they were afterwards; a re-run gives
    the same numbers to the last digit."""
    seen: list[tuple[bool, bool, str | None]] = []

    def flags(m: EpochMetrics) -> None:
        seen.append(
            (
                torch.are_deterministic_algorithms_enabled(),
                torch.backends.cudnn.benchmark,
                os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
            )
        )

    s = spec(epochs=2, deterministic=True)
    first = fit(s, data, flags)
    assert seen == [(True, False, ":4096:8")] * 2
    assert not torch.are_deterministic_algorithms_enabled()
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"  # the process keeps it
    assert numbers(fit(s, data)) == numbers(first)
    seen.clear()
    fit(spec(epochs=1), data, flags)
    assert seen == [(False, False, ":4096:8")]  # on the CPU benchmark mode stays off


def test_before_cuda_sets_the_variable_only_when_deterministic(no_cublas_setting: None) -> None:
    determinism.before_cuda(False)
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":16:8"  # the other deterministic value: kept
    determinism.before_cuda(True)
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
    del os.environ["CUBLAS_WORKSPACE_CONFIG"]
    determinism.before_cuda(True)
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"


def test_cuda_graphs_on_the_cpu_train_eagerly_and_say_so_once(
    data: DeviceData, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(graphs, "_said", set())
    caplog.set_level(logging.WARNING)
    graphed = [fit(spec(epochs=1, cuda_graphs=True), data) for _ in range(2)]
    said = [r.getMessage() for r in caplog.records if r.name == "hpsearch.engine.graphs"]
    assert said == [
        "train.cuda_graphs: CUDA graphs need a CUDA device; on cpu every training step runs eagerly"
    ]
    assert numbers(graphed[0]) == numbers(graphed[1]) == numbers(fit(spec(epochs=1), data))


class Replayer:
    """A CUDA graph simulated on the CPU: a capture records the step's body without running it,
    a replay runs the recorded body (on the static inputs, as a graph would)."""

    def __init__(self, device: torch.device) -> None:
        self.body: Callable[[], None] | None = None
        self.warmed = self.captures = self.replays = 0
        self.grads_at_capture: list[bool] = []

    def warm(self, body: Callable[[], None]) -> None:
        self.warmed += 1
        body()

    def capture(self, body: Callable[[], None]) -> None:
        self.captures += 1
        self.body = body
        step = body.__self__  # type: ignore[attr-defined]
        self.grads_at_capture.append(any(p.grad is not None for p in step.model.parameters()))

    def replay(self) -> None:
        assert self.body is not None
        self.replays += 1
        self.body()


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_a_graphed_fit_trains_exactly_like_the_eager_one(
    data: DeviceData, monkeypatch: pytest.MonkeyPatch, optimizer: str
) -> None:
    """fit with train.cuda_graphs, its graph simulated on the CPU: 3 eager warm-up steps, a
    capture (gradients released first) then replays, captured again when the cosine schedule
    changes the rate each epoch; the numbers are the eager fit's to the last digit."""
    made: list[Replayer] = []

    def recorder(device: torch.device) -> Replayer:
        made.append(Replayer(device))
        return made[-1]

    monkeypatch.setattr(graphs, "CudaGraph", recorder)
    monkeypatch.setattr(train, "use_graphs", lambda requested, device: requested)
    cosine = OptimSpec(
        optimizer=optimizer,
        lr=2e-3 if optimizer == "adam" else 0.02,
        weight_decay=1e-4,
        momentum=0.9,
        lr_decay_step=10,
        lr_decay_gamma=0.9,
        lr_schedule="cosine",
    )
    eager = fit(spec(epochs=2, optim=cosine), data)
    graphed = fit(spec(epochs=2, optim=cosine, cuda_graphs=True), data)
    assert numbers(graphed) == numbers(eager)
    (r,) = made
    steps = 2 * (len(data.train_labels) // 32)  # the last partial batch of each epoch dropped
    assert (r.warmed, r.captures, r.replays) == (3, 2, steps - 3)
    assert r.grads_at_capture == [False, False]


def test_time_steps_runs_the_eager_or_the_graphed_step(
    data: DeviceData, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The GPU kit's comparison: on the CPU a graphed timing falls back to the eager step and
    says so in its result; with a graph (simulated) the capture happens in the untimed warm-up,
    even when the caller asks for less."""
    eager = train.time_steps(spec(), data, graphed=False, steps=3, warmup=1)
    assert (eager.graphed, eager.steps) == (False, 3)
    monkeypatch.setattr(graphs, "_said", set())
    assert not train.time_steps(spec(), data, graphed=True, steps=2, warmup=0).graphed
    made: list[Replayer] = []
    monkeypatch.setattr(graphs, "CudaGraph", lambda d: made.append(Replayer(d)) or made[-1])
    monkeypatch.setattr(train, "use_graphs", lambda requested, device: requested)
    timed = train.time_steps(spec(), data, graphed=True, steps=3, warmup=1)
    assert (timed.graphed, timed.steps) == (True, 3)
    (r,) = made
    assert (r.warmed, r.captures, r.replays) == (3, 1, 4)  # the capture's own step, then 3
