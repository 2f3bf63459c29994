"""Pixel flipping (spray.attribution.faithfulness): curves equal to hand-computed ones on linear models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from spray.attribution.faithfulness import PixelFlipping
from spray.errors import BadInputError


def _linear(weight: torch.Tensor) -> nn.Module:
    model = nn.Sequential(nn.Flatten(), nn.Linear(weight.shape[1], weight.shape[0], bias=False))
    model[1].weight.data = weight
    return model.eval()


def _expected_drops(contributions: np.ndarray, regions: np.ndarray, removed: list[int]) -> np.ndarray:
    """Hand computation for a linear model with fill 0: removing a region takes away its contribution."""
    sums = np.bincount(regions.ravel(), weights=contributions.ravel())
    cumulative = np.concatenate([[0.0], np.cumsum(np.sort(sums)[::-1])])
    return cumulative[removed]


def test_a_linear_model_with_zero_fill_loses_exactly_the_removed_contributions() -> None:
    torch.manual_seed(0)
    weight, x, target = torch.randn(3, 2 * 5 * 5), torch.rand(4, 2, 5, 5), torch.tensor([0, 2, 1, 2])
    relevance = x * weight[target].reshape(4, 2, 5, 5)  # gradient × input: exact for a linear model
    curve = PixelFlipping(patch_size=2, n_steps=3, max_fraction=1.0, fill=0.0).curve(_linear(weight), x, relevance,
                                                                                     target)
    # 5 × 5 pixels in 2 × 2 patches: 3 × 3 regions, the last row and column 1 pixel wide.
    regions = np.array([[0, 0, 1, 1, 2], [0, 0, 1, 1, 2], [3, 3, 4, 4, 5], [3, 3, 4, 4, 5], [6, 6, 7, 7, 8]])
    removed = [0, 3, 6, 9]
    expected = np.mean([_expected_drops(relevance[i].sum(0).numpy(), regions, removed) for i in range(4)], axis=0)
    np.testing.assert_allclose(curve.fractions, np.array(removed) / 9)
    np.testing.assert_allclose(curve.drops, expected, rtol=1e-5, atol=1e-5)
    assert curve.aopc == pytest.approx(expected.mean(), rel=1e-5)
    assert curve.sample_aopc.shape == (4,) and curve.sample_aopc.mean() == pytest.approx(curve.aopc)


def test_the_faithful_order_beats_the_reverse_order() -> None:
    torch.manual_seed(1)
    weight, x = torch.randn(2, 64), torch.rand(8, 1, 8, 8)
    target = torch.zeros(8, dtype=torch.int64)
    relevance = x * weight[0].reshape(1, 1, 8, 8)
    flip = PixelFlipping(patch_size=2, n_steps=8, fill=0.0)
    model = _linear(weight)
    assert flip.curve(model, x, relevance, target).aopc > 0 > flip.curve(model, x, -relevance, target).aopc


def test_mean_fill_and_chunking_do_not_change_the_curve() -> None:
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)).eval()
    x, relevance, target = torch.rand(7, 3, 8, 8), torch.randn(7, 3, 8, 8), torch.randint(0, 5, (7,))
    whole = PixelFlipping(fill="mean", batch_size=1000).curve(model, x, relevance, target)
    chunked = PixelFlipping(fill="mean", batch_size=17).curve(model, x, relevance, target)
    np.testing.assert_allclose(whole.drops, chunked.drops, rtol=1e-5, atol=1e-6)
    assert whole.drops[0] == 0.0


def test_uniform_fill_draws_one_noise_image_per_sample_within_the_bounds_for_every_ordering() -> None:
    n, weight = 6, torch.zeros(1, 16)
    weight[0, 5] = 1.0  # the model reads pixel 5 of a black 4 × 4 image: removing it drops the logit by -noise
    x, target = torch.zeros(n, 1, 4, 4), torch.zeros(n, dtype=torch.int64)
    first, last = torch.zeros(n, 1, 16), torch.ones(n, 1, 16)
    first[..., 5], last[..., 5] = 1.0, 0.0  # pixel 5's region removed at the first step, or at the last
    model = _linear(weight)

    def curve(relevance: torch.Tensor, seed: int = 7):
        flip = PixelFlipping(patch_size=1, n_steps=16, max_fraction=1.0, fill="uniform", bounds=(2.0, 3.0), seed=seed)
        return flip.curve(model, x, relevance.reshape(n, 1, 4, 4), target)

    early, late = curve(first), curve(last)
    noise = -early.sample_aopc * 17 / 16  # 16 of the 17 steps see pixel 5 removed
    assert ((noise >= 2.0) & (noise <= 3.0)).all() and np.unique(noise).size == n
    np.testing.assert_allclose(early.drops[1:], -noise.mean(), rtol=1e-6)
    np.testing.assert_allclose(late.drops, [0.0] * 16 + [-noise.mean()], rtol=1e-6)  # the same noise at the end
    np.testing.assert_array_equal(curve(first).sample_aopc, early.sample_aopc)
    assert not np.allclose(curve(first, seed=8).sample_aopc, early.sample_aopc)


@pytest.mark.parametrize(
    ("flip", "x_shape", "message"),
    [
        (PixelFlipping(), (4, 16), "pixel flipping needs images (n, C, H, W) and relevance of the same shape; got "
                                   "inputs of shape (4, 16) and relevance of shape (4, 16)"),
        (PixelFlipping(max_fraction=1.5), (2, 1, 4, 4), "max_fraction must be in (0, 1], got 1.5"),
        (PixelFlipping(fill="noise"), (2, 1, 4, 4), "fill must be 'mean', 'uniform' or a number, got 'noise'"),
        (PixelFlipping(fill="uniform", bounds=(1.0, 0.0)), (2, 1, 4, 4),
         "bounds must be (low, high) with low < high, got (1.0, 0.0)"),
        (PixelFlipping(patch_size=0), (2, 1, 4, 4), "patch_size must be >= 1, got 0"),
    ],
)
def test_bad_parameters_and_shapes_are_refused_by_name(flip: PixelFlipping, x_shape: tuple, message: str) -> None:
    x = torch.rand(*x_shape)
    with pytest.raises(BadInputError) as caught:
        flip.curve(nn.Flatten(), x, x, torch.zeros(x_shape[0], dtype=torch.int64))
    assert str(caught.value) == message
