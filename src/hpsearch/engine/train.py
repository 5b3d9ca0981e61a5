"""Training one TrialSpec on device-resident data. No Optuna here.

``fit`` calls ``on_epoch`` after every epoch; the caller stops training by raising from it (the
objective raises ``optuna.TrialPruned``). Batches are drawn by index from the uint8 tensors held
on the device; augmentation (random resized crop, flip) and normalisation run batched there, the
crops of a whole epoch drawn at its start (``augment``).
Validation is ``infer.logits``, the inference path of predict, evaluate and serve;
``train.deterministic`` is ``determinism``. The loop synchronises with the device once per
epoch, not per step.
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
from hpsearch.engine.augment import crop_thetas, resample
from hpsearch.engine.data import DeviceData
from hpsearch.engine.infer import Normalizer, autocast, logits
from hpsearch.engine.model import build_model, count_params
from hpsearch.engine.runtime import tune_host
from hpsearch.engine.spec import OptimSpec, TrialSpec


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
    params: list[nn.Parameter], o: OptimSpec, device: torch.device
) -> torch.optim.Optimizer:
    # Fused kernels exist on CUDA and, since torch 2.4, on the CPU: one pass over each parameter
    # instead of one per arithmetic op. On the CPU the seed CNN's Adam step (4.3M parameters)
    # was ~2.5x faster fused than with the default for-each implementation. RMSprop has none.
    fused: dict[str, Any] = {"fused": True} if device.type in ("cuda", "cpu") else {}
    if o.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, **fused
        )
    if o.optimizer == "adam":
        return torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay, **fused)
    if o.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay, **fused)
    if o.optimizer == "rmsprop":
        return torch.optim.RMSprop(
            params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay
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


def fit(
    spec: TrialSpec,
    data: DeviceData,
    on_epoch: Callable[[EpochMetrics], None] | None = None,
    eval_batch_size: int = 500,
) -> FitResult:
    """Train ``spec`` on ``data`` for ``spec.epochs`` epochs, validating after each.

    With ``spec.deterministic`` the run repeats its numbers exactly on CUDA too (see
    ``determinism``).

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

    model = build_model(spec.arch, len(data.classes), data.image_size)
    model = model.to(dev).to(memory_format=torch.channels_last)
    opt = make_optimizer(list(model.parameters()), spec.optim, dev)
    sched = make_scheduler(opt, spec.optim, spec.epochs)
    norm = Normalizer(dev)
    n = len(data.train_labels)
    bs = min(spec.batch_size, n)
    steps = n // bs
    augment = spec.crop_scale != (1.0, 1.0) or spec.flip
    history: list[EpochMetrics] = []

    for epoch in range(1, spec.epochs + 1):
        model.train()
        lr = opt.param_groups[0]["lr"]
        t0 = time.perf_counter()
        perm = torch.randperm(n, device=dev, generator=gen)
        thetas = crop_thetas(steps * bs, spec.crop_scale, spec.flip, gen, dev) if augment else None
        loss_sum = torch.zeros((), device=dev)
        correct = torch.zeros((), device=dev, dtype=torch.int64)
        for i in range(steps):
            idx = perm[i * bs : (i + 1) * bs]
            x = norm(data.train_images[idx])
            if thetas is not None:
                x = resample(x, thetas[i * bs : (i + 1) * bs])
            x = x.contiguous(memory_format=torch.channels_last)
            y = data.train_labels[idx]
            with autocast(dev):
                logits = model(x)
                loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            loss_sum += loss.detach().float()
            correct += (logits.detach().argmax(1) == y).sum()
        train_loss = loss_sum.item() / steps  # the epoch's one synchronisation
        train_seconds = time.perf_counter() - t0
        if not math.isfinite(train_loss):
            raise NonFiniteLoss(epoch, train_loss)
        val_loss, val_acc = evaluate(model, data.val_images, data.val_labels, eval_batch_size)
        _sync(dev)
        sched.step()
        m = EpochMetrics(
            epoch=epoch,
            epochs=spec.epochs,
            train_loss=train_loss,
            train_accuracy=correct.item() / (steps * bs),
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
    return FitResult(model, tuple(history), count_params(model))
