"""Batched RandomResizedCrop + horizontal flip as one affine resample per image.

``fit`` draws the crop of every image an epoch will train on at the epoch's start
(:func:`crop_thetas`, a dozen small kernels once) and indexes the result per step, so that a
training step's augmentation is :func:`resample` alone: ``affine_grid`` + ``grid_sample``. On CUDA
the crop arithmetic done per step was about 15 of a step's 100-130 kernel launches.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LOG_RATIO = math.log(4 / 3)  # aspect ratios are drawn log-uniformly in [3/4, 4/3]


def crop_thetas(
    n: int,
    scale: tuple[float, float],
    flip: bool,
    gen: torch.Generator,
    device: torch.device,
) -> torch.Tensor:
    """(n, 2, 3) affine matrices, one random crop each, drawn from ``gen``.

    Each crop covers an area fraction drawn uniformly from ``scale``, with aspect ratio
    log-uniform in [3/4, 4/3] (the area is kept when one side reaches the border), at a uniform
    position inside the image; with ``flip`` half of them are mirrored.
    """
    u = torch.rand(n, 5, device=device, generator=gen)  # area, ratio, cx, cy, flip
    area = scale[0] + (scale[1] - scale[0]) * u[:, 0]
    log_ratio = (u[:, 1] * 2 - 1) * LOG_RATIO
    w = torch.sqrt(area * torch.exp(log_ratio)).clamp(max=1.0)  # fraction of the width
    h = (area / w).clamp(max=1.0)  # keep the sampled area when one side hits the border
    w = (area / h).clamp(max=1.0)
    cx = (u[:, 2] * 2 - 1) * (1 - w)  # crop centre in [-1, 1] coordinates, inside the image
    cy = (u[:, 3] * 2 - 1) * (1 - h)
    sx = torch.where(u[:, 4] < 0.5, -w, w) if flip else w
    zero = torch.zeros_like(w)
    return torch.stack([sx, zero, cx, zero, h, cy], 1).view(n, 2, 3)


def resample(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """(B, C, S, S) float images resampled through (B, 2, 3) ``theta`` (bilinear, reflected at
    the border) -> (B, C, S, S)."""
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def random_resized_crop(
    x: torch.Tensor,
    scale: tuple[float, float],
    flip: bool,
    gen: torch.Generator,
) -> torch.Tensor:
    """One batch cropped with fresh draws: :func:`resample` of :func:`crop_thetas`.
    x: (B, C, S, S) float -> (B, C, S, S) float."""
    return resample(x, crop_thetas(x.shape[0], scale, flip, gen, x.device))
