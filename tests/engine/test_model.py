from __future__ import annotations

import pytest
import torch

from hpsearch.engine.model import GlobalAvgPool, build_model, count_params, param_count
from hpsearch.engine.spec import ArchSpec


def arch(n: int, k: int, **kw: object) -> ArchSpec:
    base: dict[str, object] = dict(
        channels=tuple(8 * 2**i for i in range(n)),
        kernel_sizes=(k,) * n,
        activation="relu",
        batch_norm=False,
        residual=False,
        dropout=0.1,
        dense_units=32,
    )
    base.update(kw)
    return ArchSpec(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize("image_size", [32, 48, 64])
@pytest.mark.parametrize("kernel", [3, 5, 7])
@pytest.mark.parametrize("n_blocks", [1, 2, 3, 4, 5])
def test_forward_every_depth_kernel_and_size(n_blocks: int, kernel: int, image_size: int) -> None:
    model = build_model(arch(n_blocks, kernel), num_classes=2, image_size=image_size)
    assert param_count(arch(n_blocks, kernel), 2, image_size) == count_params(model)
    x = torch.randn(2, 3, image_size, image_size).contiguous(memory_format=torch.channels_last)
    assert model(x).shape == (2, 2)


@pytest.mark.parametrize("activation", ["relu", "gelu", "silu", "leaky_relu", "elu"])
@pytest.mark.parametrize(("bn", "res"), [(True, True), (True, False), (False, True)])
def test_variants(activation: str, bn: bool, res: bool) -> None:
    a = arch(3, 3, activation=activation, batch_norm=bn, residual=res)
    model = build_model(a, num_classes=3, image_size=32)
    out = model(torch.randn(4, 3, 32, 32))
    assert out.shape == (4, 3)
    assert param_count(a, 3, 32) == count_params(model)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_seed_baseline_parameter_count() -> None:
    seed = ArchSpec(
        channels=(32, 64, 128),
        kernel_sizes=(3, 3, 3),
        activation="relu",
        batch_norm=False,
        residual=False,
        dropout=0.0,
        dense_units=512,
    )
    # convs 896 + 18496 + 73856, dense 128*8*8*512 + 512, logits 512*2 + 2
    assert count_params(build_model(seed, 2, 64)) == 896 + 18496 + 73856 + 8192 * 512 + 512 + 1026


def test_too_many_blocks_is_refused() -> None:
    with pytest.raises(ValueError, match="no pixels"):
        build_model(arch(6, 3), 2, 32)


@pytest.mark.parametrize("image_size", [32, 64, 128])
@pytest.mark.parametrize("bn", [True, False])
def test_gap_head_is_independent_of_the_image_size(image_size: int, bn: bool) -> None:
    a = arch(3, 3, head="gap", batch_norm=bn)
    model = build_model(a, num_classes=2, image_size=image_size)
    assert param_count(a, 2, image_size) == count_params(model)
    assert count_params(model) == count_params(build_model(a, 2, 32))
    flat = build_model(arch(3, 3, batch_norm=bn), 2, image_size)
    assert count_params(flat) > count_params(model)  # flatten feeds C x S x S values
    x = torch.randn(2, 3, image_size, image_size).contiguous(memory_format=torch.channels_last)
    assert model(x).shape == (2, 2)


@pytest.mark.parametrize(("bn", "res"), [(False, False), (True, False), (True, True)])
def test_activation_count_matches_what_a_forward_pass_produces(bn: bool, res: bool) -> None:
    """Counted with hooks on the real model: every conv, BN, activation and pool output of the
    conv blocks (plus the residual sum, which is no module)."""
    from hpsearch.engine.model import ConvBlock, activation_count

    arch = ArchSpec(
        channels=(8, 16, 32),
        kernel_sizes=(3, 5, 3),
        activation="relu",
        batch_norm=bn,
        residual=res,
        dropout=0.0,
        dense_units=16,
    )
    model = build_model(arch, 2, 40)
    seen: list[int] = []
    for block in model:
        if isinstance(block, ConvBlock):
            for m in (block.conv, block.norm, block.act, block.pool):
                if bn or m is not block.norm:
                    m.register_forward_hook(lambda _m, _i, out: seen.append(out[0].numel()))
            if res:
                block.conv.register_forward_hook(lambda _m, _i, out: seen.append(out[0].numel()))
    model(torch.zeros(1, 3, 40, 40))
    assert activation_count(arch, 40) == sum(seen)


def test_a_narrow_network_with_a_wide_dense_layer_has_more_parameters_and_fewer_activations() -> (
    None
):
    """Why out-of-memory prediction compares activations too, not parameters alone."""
    from hpsearch.engine.model import activation_count

    wide = ArchSpec(
        channels=(256, 256, 256),
        kernel_sizes=(3, 3, 3),
        activation="relu",
        batch_norm=True,
        residual=False,
        dropout=0.0,
        dense_units=64,
    )
    narrow = ArchSpec(
        channels=(8, 8, 8),
        kernel_sizes=(3, 3, 3),
        activation="relu",
        batch_norm=True,
        residual=False,
        dropout=0.0,
        dense_units=4096,
    )
    assert param_count(narrow, 2, 128) > param_count(wide, 2, 128)
    assert activation_count(narrow, 128) * 10 < activation_count(wide, 128)


# layers whose CUDA backward has no deterministic kernel: with train.deterministic (PyTorch's
# deterministic algorithms) a CUDA trial using one fails at its first backward pass
NO_DETERMINISTIC_CUDA_BACKWARD = (
    torch.nn.AdaptiveAvgPool2d,
    torch.nn.AdaptiveAvgPool3d,
    torch.nn.AdaptiveMaxPool2d,
    torch.nn.AvgPool3d,
    torch.nn.FractionalMaxPool2d,
    torch.nn.ReflectionPad2d,
    torch.nn.Upsample,
)


@pytest.mark.parametrize("head", ["flatten", "gap"])
@pytest.mark.parametrize(("bn", "res"), [(True, True), (False, False)])
def test_every_layer_has_a_deterministic_cuda_backward(head: str, bn: bool, res: bool) -> None:
    model = build_model(arch(3, 3, head=head, batch_norm=bn, residual=res), 2, 32)
    used = [
        type(m).__name__ for m in model.modules() if isinstance(m, NO_DETERMINISTIC_CUDA_BACKWARD)
    ]
    assert used == []


def test_the_gap_head_averages_each_feature_map() -> None:
    x = torch.randn(4, 16, 5, 7).contiguous(memory_format=torch.channels_last)
    pooled = GlobalAvgPool()(x)
    assert torch.allclose(pooled, torch.nn.AdaptiveAvgPool2d(1)(x), atol=1e-6)
    assert pooled.shape == (4, 16, 1, 1)
