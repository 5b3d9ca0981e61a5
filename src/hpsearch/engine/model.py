"""The CNN family the search explores: ``ArchSpec`` -> ``nn.Module``. No Optuna here."""

from __future__ import annotations

import torch
from torch import nn

from hpsearch.engine.spec import ArchSpec

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
}


class ConvBlock(nn.Module):
    """conv(k) -> [BN] -> [+ shortcut] -> activation -> 2x2 max-pool: halves H and W."""

    def __init__(self, c_in: int, c_out: int, kernel: int, arch: ArchSpec) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=not arch.batch_norm)
        self.norm: nn.Module = nn.BatchNorm2d(c_out) if arch.batch_norm else nn.Identity()
        self.shortcut: nn.Module | None = None
        if arch.residual:
            self.shortcut = (
                nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1, bias=False)
            )
        self.act = _ACTIVATIONS[arch.activation]()
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C_in, H, W) -> (B, C_out, H/2, W/2)
        z = self.norm(self.conv(x))
        if self.shortcut is not None:
            z = z + self.shortcut(x)
        out: torch.Tensor = self.pool(self.act(z))
        return out


class GlobalAvgPool(nn.Module):
    """(B, C, H, W) -> (B, C, 1, 1): the mean of each feature map. ``nn.AdaptiveAvgPool2d(1)``
    computes the same, but its CUDA backward has no deterministic kernel, so it fails a trial run
    with ``train.deterministic``; a mean's backward is a broadcast."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3), keepdim=True)


def feature_size(arch: ArchSpec, image_size: int) -> int:
    """Spatial side after the conv blocks (each max-pool floors H/2)."""
    side = image_size
    for _ in range(arch.n_blocks):
        side //= 2
    return side


def head_inputs(arch: ArchSpec, image_size: int) -> int:
    """Features entering the dense layer: C x S x S flattened, or C after global average
    pooling (which keeps the dense layer's size independent of the image size)."""
    c = arch.channels[-1]
    return c if arch.head == "gap" else c * feature_size(arch, image_size) ** 2


def build_model(arch: ArchSpec, num_classes: int, image_size: int) -> nn.Sequential:
    """The seed's layout generalised: conv blocks, the head (flatten, or global average pooling),
    dense + activation + dropout, logits."""
    side = feature_size(arch, image_size)
    if side < 1:
        raise ValueError(f"{arch.n_blocks} blocks leave no pixels of a {image_size}px image")
    blocks: list[nn.Module] = []
    c_in = 3
    for c_out, k in zip(arch.channels, arch.kernel_sizes, strict=True):
        blocks.append(ConvBlock(c_in, c_out, k, arch))
        c_in = c_out
    pool: list[nn.Module] = [GlobalAvgPool()] if arch.head == "gap" else []
    return nn.Sequential(
        *blocks,
        *pool,
        nn.Flatten(),
        nn.Linear(head_inputs(arch, image_size), arch.dense_units),
        _ACTIVATIONS[arch.activation](),
        nn.Dropout(arch.dropout),
        nn.Linear(arch.dense_units, num_classes),
    )


def activation_count(arch: ArchSpec, image_size: int) -> int:
    """Values one image's forward pass keeps for the backward pass in the conv blocks (the conv
    output at full resolution, once more with BN and once more with a shortcut, the activation's
    output, the pooled output), a proxy for a trial's activation memory per image. Parameter count
    alone misses it: a narrow network with a wide dense layer has many parameters and few
    activations."""
    total = 0
    side = image_size
    for c in arch.channels:
        per_map = 2 + int(arch.batch_norm) + int(arch.residual)  # conv, [BN], [sum], activation
        total += c * side * side * per_map
        side //= 2
        total += c * side * side  # pooled
    return total


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def param_count(arch: ArchSpec, num_classes: int, image_size: int) -> int:
    """What ``count_params(build_model(...))`` returns, without building (or allocating) it."""
    total = 0
    c_in = 3
    for c_out, k in zip(arch.channels, arch.kernel_sizes, strict=True):
        total += c_in * c_out * k * k + (2 * c_out if arch.batch_norm else c_out)
        if arch.residual and c_in != c_out:
            total += c_in * c_out
        c_in = c_out
    flat = head_inputs(arch, image_size)
    return total + (flat + 1) * arch.dense_units + (arch.dense_units + 1) * num_classes
