"""One training step on a fixed-size batch, as ``fit`` runs it (eagerly); ``graphs`` replays the
same step from a CUDA graph.

A step takes the batch's indices into the device-resident training images and, when the trial
augments, the batch's crop matrices (drawn for the whole epoch by ``augment.crop_thetas``). It
gathers, normalises, crops, runs forward and backward, updates the weights, and adds the batch's
loss and correct count to the epoch's totals on the device: nothing in it waits for the device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hpsearch.engine.augment import resample
from hpsearch.engine.data import DeviceData
from hpsearch.engine.infer import Normalizer, autocast


class TrainStep:
    """The eager step; ``loss_sum`` and ``correct`` hold the epoch's totals so far."""

    graphed = False

    def __init__(self, model: nn.Module, opt: torch.optim.Optimizer, data: DeviceData) -> None:
        self.model = model
        self.opt = opt
        self.images = data.train_images
        self.labels = data.train_labels
        self.device = data.device
        self.norm = Normalizer(data.device)
        self.loss_sum = torch.zeros((), device=data.device)
        self.correct = torch.zeros((), device=data.device, dtype=torch.int64)

    def start_epoch(self) -> None:
        self.loss_sum.zero_()
        self.correct.zero_()

    def run(self, idx: torch.Tensor, theta: torch.Tensor | None) -> None:
        """The step itself: what a CUDA graph captures, with ``idx`` and ``theta`` its static
        inputs."""
        x = self.norm(self.images[idx])
        if theta is not None:
            x = resample(x, theta)
        x = x.contiguous(memory_format=torch.channels_last)
        y = self.labels[idx]
        with autocast(self.device):
            logits = self.model(x)
            loss = F.cross_entropy(logits, y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        self.opt.step()
        self.loss_sum += loss.detach().float()
        self.correct += (logits.detach().argmax(1) == y).sum()

    def __call__(self, idx: torch.Tensor, theta: torch.Tensor | None, lr: float) -> None:
        """One step on the batch ``idx`` (crop matrices ``theta``) at learning rate ``lr`` (the
        optimizer's own; a graph needs to know when it changes)."""
        self.run(idx, theta)
