"""The crop matrices an epoch draws at its start: the random-resized-crop distribution they
sample (area, aspect ratio, position, flip), and on the CPU the very draws the per-step crop
made."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from hpsearch.engine.augment import LOG_RATIO, crop_thetas, random_resized_crop

CPU = torch.device("cpu")
N = 20_000


def draw(scale: tuple[float, float], flip: bool = True, n: int = N) -> torch.Tensor:
    return crop_thetas(n, scale, flip, torch.Generator().manual_seed(7), CPU).double()


def parts(theta: torch.Tensor) -> dict[str, torch.Tensor]:
    sx, h = theta[:, 0, 0], theta[:, 1, 1]
    w = sx.abs()
    return {"sx": sx, "w": w, "h": h, "cx": theta[:, 0, 2], "cy": theta[:, 1, 2]}


def uniform_fits(sample: torch.Tensor, low: float, high: float) -> bool:
    """Kolmogorov-Smirnov against uniform(low, high); the draws are seeded, so no flakiness."""
    return bool(stats.kstest(sample.numpy(), "uniform", args=(low, high - low)).pvalue > 0.01)


@pytest.mark.parametrize("scale", [(0.2, 0.5), (0.35, 1.0), (0.08, 1.0)])
def test_areas_are_uniform_over_the_scale_and_crops_stay_inside(
    scale: tuple[float, float],
) -> None:
    p = parts(draw(scale))
    area = p["w"] * p["h"]
    assert area.min() >= scale[0] - 1e-6 and area.max() <= scale[1] + 1e-6
    assert uniform_fits(area, *scale)  # kept even when a side reaches the border (clamped)
    assert (p["w"] <= 1 + 1e-7).all() and (p["h"] <= 1 + 1e-7).all()
    assert (p["cx"].abs() <= 1 - p["w"] + 1e-6).all() and (p["cy"].abs() <= 1 - p["h"] + 1e-6).all()
    side = p["w"] < 0.999  # crops narrower than the image: the centre is uniform over its range
    assert uniform_fits(p["cx"][side] / (1 - p["w"][side]), -1.0, 1.0)


def test_aspect_ratios_are_log_uniform_in_three_quarters_to_four_thirds() -> None:
    p = parts(draw((0.2, 0.5)))  # no crop reaches the border here: the ratio is as drawn
    log_ratio = torch.log(p["w"] / p["h"])
    assert log_ratio.abs().max() <= LOG_RATIO + 1e-6
    assert uniform_fits(log_ratio, -LOG_RATIO, LOG_RATIO)


def test_half_are_mirrored_with_flip_and_none_without() -> None:
    flipped = (parts(draw((0.35, 1.0)))["sx"] < 0).double().mean().item()
    assert abs(flipped - 0.5) < 4 * math.sqrt(0.25 / N)  # binomial, 4 standard deviations
    assert (parts(draw((0.35, 1.0), flip=False))["sx"] > 0).all()


def test_the_epochs_draw_is_the_per_step_draws_on_the_cpu() -> None:
    """On the CPU the generator's stream does not depend on how it is split: one draw for 4
    batches of 16 gives the matrices that 4 per-step draws gave before the epoch drew them."""
    whole = crop_thetas(64, (0.35, 1.0), True, torch.Generator().manual_seed(3), CPU)
    gen = torch.Generator().manual_seed(3)
    steps = torch.cat([crop_thetas(16, (0.35, 1.0), True, gen, CPU) for _ in range(4)])
    assert torch.equal(whole, steps)


def test_identity_and_mirror() -> None:
    x = torch.rand(8, 3, 16, 16)
    g = torch.Generator().manual_seed(0)
    assert torch.allclose(random_resized_crop(x, (1.0, 1.0), False, g), x, atol=1e-5)
    for a, b in zip(random_resized_crop(x, (1.0, 1.0), True, g), x, strict=True):
        assert torch.allclose(a, b, atol=1e-5) or torch.allclose(a, b.flip(-1), atol=1e-5)
