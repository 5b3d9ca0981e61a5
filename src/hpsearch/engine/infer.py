"""The one inference path: uint8 NHWC images -> logits or probabilities, batched, under one
precision policy. Used by validation in ``train.fit``, ``hpsearch predict`` and ``evaluate``
(``results.inference``), ``hpsearch serve`` and ``hpsearch confirm --data``, so that each of them
gives the same answer for the same image on the same device.

The precision policy (:func:`autocast`, :func:`prepare`):

- **CUDA: bf16 autocast, channels_last.** Training runs its forward pass under bf16 autocast, so
  the validation accuracy a trial records (what the search ranks and a checkpoint stores as its
  value) was measured in bf16. Predicting, evaluating and serving in bf16 too reproduces that
  number instead of a slightly different fp32 one, and is what ``latency_ms`` measures. fp32 on
  CUDA would cost speed for an answer that disagrees with the recorded one.
- **CPU: fp32, channels_last.** CPU training is fp32 (bf16 on a CPU without bf16 units is slower
  than fp32 and would change every CPU number the project has recorded).

The images are normalised by :class:`Normalizer` (ImageNet mean and std) exactly as in training.
"""

from __future__ import annotations

import contextlib
import functools

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BATCH_SIZE = 256  # images per forward pass unless the caller says otherwise


class Normalizer:
    """uint8 NHWC batch -> normalised float NCHW (channels_last strides), in one fused op."""

    def __init__(self, device: torch.device) -> None:
        std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
        mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        self.scale = 1.0 / (255.0 * std)
        self.shift = -mean / std

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        x = batch.permute(0, 3, 1, 2).float()  # (B, 3, S, S), channels_last in memory
        return torch.addcmul(self.shift, x, self.scale)


@functools.cache
def _normalizer(device: torch.device) -> Normalizer:
    return Normalizer(device)


def autocast(device: torch.device) -> contextlib.AbstractContextManager[object]:
    """The precision of a forward pass on ``device``, in training and in inference: bf16
    autocast on CUDA, fp32 elsewhere. The autocast weight cache is off: it saves nothing for
    these networks (each weight is used once per pass), and a CUDA graph capture needs it off."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False)
    return contextlib.nullcontext()


def prepare(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` on ``device`` in channels_last and evaluation mode (in place; returned)."""
    return model.to(device).to(memory_format=torch.channels_last).eval()


def logits(
    model: nn.Module,
    images: torch.Tensor,
    device: torch.device,
    batch_size: int = BATCH_SIZE,
) -> torch.Tensor:
    """(N, S, S, 3) uint8 on any device -> (N, classes) float32 logits on ``device``.

    ``model`` is on ``device`` in channels_last, as :func:`prepare` leaves it (``fit`` builds its
    model that way; this function does not convert it, because converting a model that is being
    trained could move its parameters or gradients). It is put in evaluation mode; batches of
    ``batch_size`` images run under :func:`autocast`.
    """
    model.eval()
    norm = _normalizer(device)
    out = []
    with torch.inference_mode():
        for i in range(0, images.shape[0], batch_size):
            batch = images[i : i + batch_size].to(device, non_blocking=True)
            x = norm(batch).contiguous(memory_format=torch.channels_last)
            with autocast(device):
                out.append(model(x).float())
    if not out:
        return torch.empty(0, 0, device=device)
    return torch.cat(out)


def probabilities(
    model: nn.Module,
    images: torch.Tensor,
    device: torch.device,
    batch_size: int = BATCH_SIZE,
) -> torch.Tensor:
    """(N, S, S, 3) uint8 -> (N, classes) float32 softmax probabilities on ``device``."""
    return logits(model, images, device, batch_size).softmax(1)
