"""Training one TrialSpec on device-resident data. No Optuna here.

``fit`` calls ``on_epoch`` after every epoch; the caller stops training by raising from it (the
objective raises ``optuna.TrialPruned``). Batches are drawn by index from the uint8 tensors held
on the device; augmentation (random resized crop, flip) and normalisation run batched there, the
crops of a whole epoch drawn at its start (``augment``). A step is ``step.TrainStep``, or with
``train.cuda_graphs`` on CUDA a replayed graph (``graphs``); validation is ``infer.logits``, the
inference path of predict, evaluate and serve; ``train.deterministic`` is ``determinism``.
The loop synchronises with the device once per epoch, not per step.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hpsearch.engine import determinism
from hpsearch.engine.augment import crop_thetas
from hpsearch.engine.data import DeviceData
from hpsearch.engine.graphs import GraphedStep, use_graphs
from hpsearch.engine.infer import logits
from hpsearch.engine.model import build_model, count_params
from hpsearch.engine.runtime import tune_host
from hpsearch.engine.spec import OptimSpec, TrialSpec
from hpsearch.engine.step import TrainStep


@dataclass(frozen=True)
class EpochMetrics:
    epoch: int  # 1-based
    epochs: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    lr: float  # the rate used during this epoch
    train_seconds: float
    epoch_seconds: float  # train + validation
    train_images_per_s: float


@dataclass(frozen=True)
class FitResult:
    model: nn.Module
    history: tuple[EpochMetrics, ...]
    n_params: int

    @property
    def val_accuracy(self) -> float:
        return self.history[-1].val_accuracy

    @property
    def train_images_per_s(self) -> float:
        seen = sum(m.train_images_per_s * m.train_seconds for m in self.history)
        return seen / max(sum(m.train_seconds for m in self.history), 1e-9)

    @property
    def epoch_seconds(self) -> float:
        return sum(m.epoch_seconds for m in self.history) / len(self.history)


class NonFiniteLoss(Exception):
    """The training loss became NaN or infinite; the configuration diverged."""

    def __init__(self, epoch: int, loss: float) -> None:
        super().__init__(f"non-finite training loss ({loss}) in epoch {epoch}")
        self.epoch = epoch


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def make_optimizer(
    params: list[nn.Parameter], o: OptimSpec, device: torch.device, *, capturable: bool = False
) -> torch.optim.Optimizer:
    """The trial's optimizer; ``capturable`` (for a CUDA graph, see ``graphs``) keeps Adam's,
    AdamW's and RMSprop's step counts on the device."""
    # Fused kernels exist on CUDA and, since torch 2.4, on the CPU: one pass over each parameter
    # instead of one per arithmetic op. On the CPU the seed CNN's Adam step (4.3M parameters)
    # was ~2.5x faster fused than with the default for-each implementation. RMSprop has none.
    fused: dict[str, Any] = {"fused": True} if device.type in ("cuda", "cpu") else {}
    graph: dict[str, Any] = {"capturable": True} if capturable else {}
    if o.optimizer == "sgd":  # no step count: fused SGD is capturable as it is
        return torch.optim.SGD(
            params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, **fused
        )
    if o.optimizer == "adam":
        return torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay, **fused, **graph)
    if o.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay, **fused, **graph)
    if o.optimizer == "rmsprop":
        return torch.optim.RMSprop(
            params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, **graph
        )
    raise ValueError(f"unknown optimizer {o.optimizer!r}")


def make_scheduler(
    opt: torch.optim.Optimizer, o: OptimSpec, epochs: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """The per-epoch learning-rate schedule: the seed's StepLR, or cosine annealing over the
    trial's ``epochs`` (epoch e of E trains at ``lr * (1 + cos(pi * (e - 1) / E)) / 2``)."""
    if o.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1))
    return torch.optim.lr_scheduler.StepLR(opt, step_size=o.lr_decay_step, gamma=o.lr_decay_gamma)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def evaluate(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int
) -> tuple[float, float]:
    """(mean loss, accuracy) over a uint8 NHWC split, without augmentation: the logits of
    ``infer.logits``, the path ``hpsearch evaluate``, ``predict`` and ``serve`` take."""
    out = logits(model, images, images.device, batch_size)
    n = max(len(labels), 1)
    with torch.no_grad():
        loss = F.cross_entropy(out, labels, reduction="sum").item() / n
        correct = int((out.argmax(1) == labels).sum().item()) if len(labels) else 0
    return loss, correct / n


@dataclass
class _Trainer:
    """What a fit (or a step timing) trains with."""

    model: nn.Module
    opt: torch.optim.Optimizer
    step: TrainStep
    batch_size: int
    steps: int  # per epoch: the last partial batch is dropped
    augment: bool


def _trainer(spec: TrialSpec, data: DeviceData, graphed: bool) -> _Trainer:
    dev = data.device
    model = build_model(spec.arch, len(data.classes), data.image_size)
    model = model.to(dev).to(memory_format=torch.channels_last)
    graphed = use_graphs(graphed, dev)
    opt = make_optimizer(list(model.parameters()), spec.optim, dev, capturable=graphed)
    n = len(data.train_labels)
    bs = min(spec.batch_size, n)
    augment = spec.crop_scale != (1.0, 1.0) or spec.flip
    step = GraphedStep(model, opt, data, bs, augment) if graphed else TrainStep(model, opt, data)
    return _Trainer(model, opt, step, bs, n // bs, augment)


def _epoch_batches(
    spec: TrialSpec, t: _Trainer, data: DeviceData, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The epoch's order of the training images and, when the trial augments, the crop of every
    image it will train on: both drawn from ``gen`` at the epoch's start."""
    dev = data.device
    perm = torch.randperm(len(data.train_labels), device=dev, generator=gen)
    if not t.augment:
        return perm, None
    return perm, crop_thetas(t.steps * t.batch_size, spec.crop_scale, spec.flip, gen, dev)


def fit(
    spec: TrialSpec,
    data: DeviceData,
    on_epoch: Callable[[EpochMetrics], None] | None = None,
    eval_batch_size: int = 500,
) -> FitResult:
    """Train ``spec`` on ``data`` for ``spec.epochs`` epochs, validating after each.

    With ``spec.deterministic`` the run repeats its numbers exactly on CUDA too (see
    ``determinism``); with ``spec.cuda_graphs`` its steps are replayed from a CUDA graph on a
    CUDA device (see ``graphs``).

    Raises:
        NonFiniteLoss: the training loss of an epoch was NaN or infinite.
    """
    dev = data.device
    tune_host()
    with determinism.mode(spec.deterministic, dev):
        return _fit(spec, data, on_epoch, eval_batch_size)


def _fit(
    spec: TrialSpec,
    data: DeviceData,
    on_epoch: Callable[[EpochMetrics], None] | None,
    eval_batch_size: int,
) -> FitResult:
    dev = data.device
    torch.manual_seed(spec.seed)
    gen = torch.Generator(device=dev)
    gen.manual_seed(spec.seed)
    t = _trainer(spec, data, spec.cuda_graphs)
    sched = make_scheduler(t.opt, spec.optim, spec.epochs)
    bs, steps = t.batch_size, t.steps
    history: list[EpochMetrics] = []

    for epoch in range(1, spec.epochs + 1):
        t.model.train()
        lr = t.opt.param_groups[0]["lr"]
        t0 = time.perf_counter()
        perm, thetas = _epoch_batches(spec, t, data, gen)
        t.step.start_epoch()
        for i in range(steps):
            batch = slice(i * bs, (i + 1) * bs)
            t.step(perm[batch], None if thetas is None else thetas[batch], lr)
        train_loss = t.step.loss_sum.item() / steps  # the epoch's one synchronisation
        train_seconds = time.perf_counter() - t0
        if not math.isfinite(train_loss):
            raise NonFiniteLoss(epoch, train_loss)
        val_loss, val_acc = evaluate(t.model, data.val_images, data.val_labels, eval_batch_size)
        _sync(dev)
        sched.step()
        m = EpochMetrics(
            epoch=epoch,
            epochs=spec.epochs,
            train_loss=train_loss,
            train_accuracy=t.step.correct.item() / (steps * bs),
            val_loss=val_loss,
            val_accuracy=val_acc,
            lr=lr,
            train_seconds=train_seconds,
            epoch_seconds=time.perf_counter() - t0,
            train_images_per_s=steps * bs / train_seconds,
        )
        history.append(m)
        if on_epoch is not None:
            on_epoch(m)
    t.opt.zero_grad(set_to_none=True)  # the last step's gradients: nothing reads them
    return FitResult(t.model, tuple(history), count_params(t.model))


@dataclass(frozen=True)
class StepTiming:
    """What :func:`time_steps` measured."""

    graphed: bool  # the steps were replayed from a CUDA graph (False: eager, e.g. on the CPU)
    steps: int  # timed steps, after the warm-up
    seconds_per_step: float
    images_per_s: float


def time_steps(
    spec: TrialSpec, data: DeviceData, *, graphed: bool, steps: int = 50, warmup: int = 10
) -> StepTiming:
    """Time ``spec``'s training step on ``data``'s device, eager or (``graphed``, CUDA only)
    replayed from a CUDA graph: ``warmup`` untimed steps (at least the graph's eager warm-up and
    its capture), then ``steps`` steps between two synchronisations. For the GPU kit:
    compare ``time_steps(..., graphed=False)`` with ``graphed=True`` on the same spec. Batches
    and crops are drawn as ``fit`` draws them; the learning rate stays at ``spec.optim.lr``."""
    dev = data.device
    tune_host()
    with determinism.mode(spec.deterministic, dev):
        torch.manual_seed(spec.seed)
        gen = torch.Generator(device=dev).manual_seed(spec.seed)
        t = _trainer(spec, data, graphed)
        if isinstance(t.step, GraphedStep):
            warmup = max(warmup, t.step.warmup + 1)  # the capture is not timed
        t.model.train()
        perm, thetas = _epoch_batches(spec, t, data, gen)
        lr = t.opt.param_groups[0]["lr"]
        bs = t.batch_size

        def run(first: int, count: int) -> None:
            for k in range(first, first + count):
                batch = slice((k % t.steps) * bs, (k % t.steps + 1) * bs)
                t.step(perm[batch], None if thetas is None else thetas[batch], lr)

        run(0, warmup)
        _sync(dev)
        start = time.perf_counter()
        run(warmup, steps)
        _sync(dev)
        seconds = time.perf_counter() - start
    return StepTiming(t.step.graphed, steps, seconds / steps, steps * bs / seconds)
