"""What one trial trains: plain frozen dataclasses, no Optuna inside.

``space`` turns a trial (or a stored parameter dict) into a :class:`TrialSpec`; ``model`` and
``train`` read nothing else; ``data`` reads a :class:`DataConfig` (the study file's ``data:``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

OPTIMIZER_STATE = {"adam": 2, "adamw": 2, "rmsprop": 2, "sgd": 1}  # fp32 buffers per parameter


@dataclass(frozen=True, kw_only=True)
class ArchSpec:
    """The CNN: ``len(channels)`` conv blocks (conv, [BN], act, [residual], 2x2 max-pool), then
    the head (``flatten``: the seed's flatten of the whole feature map; ``gap``: global average
    pooling to one value per channel), a dense layer with dropout, and the classifier."""

    channels: tuple[int, ...]
    kernel_sizes: tuple[int, ...]
    activation: str
    batch_norm: bool
    residual: bool
    dropout: float
    dense_units: int
    head: str = "flatten"  # flatten | gap

    @property
    def n_blocks(self) -> int:
        return len(self.channels)


@dataclass(frozen=True, kw_only=True)
class OptimSpec:
    """Optimizer and learning-rate schedule: ``step`` (the seed's StepLR: every ``lr_decay_step``
    epochs the rate is multiplied by ``lr_decay_gamma``) or ``cosine`` (annealed from ``lr``
    towards 0 over the trial's epochs, one step an epoch; the StepLR fields are unused)."""

    optimizer: str  # sgd | adam | adamw | rmsprop
    lr: float
    weight_decay: float  # the L2 coefficient
    momentum: float  # SGD and RMSprop only
    lr_decay_step: int  # epochs
    lr_decay_gamma: float
    lr_schedule: str = "step"  # step | cosine


@dataclass(frozen=True, kw_only=True)
class TrialSpec:
    """Everything ``fit`` needs to train one configuration, reproducibly."""

    arch: ArchSpec
    optim: OptimSpec
    batch_size: int
    epochs: int
    seed: int
    crop_scale: tuple[float, float]  # random-resized-crop area fraction (min, max)
    flip: bool
    # how it runs, not what it learns (train.deterministic, train.cuda_graphs): see
    # engine.determinism and engine.graphs
    deterministic: bool = False  # repeat exactly on CUDA too, at some speed cost
    cuda_graphs: bool = False  # replay the training step from a CUDA graph (CUDA only)


@dataclass(frozen=True)
class DataConfig:
    """The photos a trial trains on: the study file's ``data:`` section, validated by
    :mod:`hpsearch.config`."""

    root: Path  # ImageFolder root holding train/<class>/ and val/<class>/
    image_size: int  # images are decoded and cached at image_size x image_size
    max_per_class: int | None  # train images per class (the first N by file name); None = all
    val_max_per_class: int | None
