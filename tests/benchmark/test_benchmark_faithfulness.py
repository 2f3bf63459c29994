"""The benchmark's AOPC wiring on a linear model whose curves are known by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spray.attribution.faithfulness import PixelFlipping
from spray.benchmark.faithfulness import aopc, spread

# 4 × 4 images of ones, four 2 × 2 regions (0 1 / 2 3) with logit weights 1, 4, 2, 3 per pixel: removing
# region k (filled with 0) lowers the logit by 4 · w_k; all regions go in 4 steps.
REGION = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]).flatten()
WEIGHT = torch.tensor([1.0, 4.0, 2.0, 3.0])
FLIP = PixelFlipping(patch_size=2, n_steps=4, max_fraction=1.0, fill=0.0)


def _linear() -> torch.nn.Module:
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2, bias=False))
    model[1].weight.data = torch.stack([WEIGHT[REGION], torch.zeros(16)])
    return model.eval()


def test_each_ordering_flips_the_regions_its_relevance_ranks_first():
    x, y = torch.ones(1, 1, 4, 4), torch.tensor([0])
    found = aopc(_linear(), x, y, "epsilon_plus_flat", seed=3, flipping=FLIP)
    # Gradient × input is w: regions 1, 3, 2, 0; drops 0, 16, 28, 36, 40.
    assert found["gradient"] == pytest.approx(120 / 5)
    # LRP's first (here only) dense layer takes the flat rule: every pixel alike, ties go by region index 0, 1, 2, 3;
    # drops 0, 4, 20, 28, 40.
    assert found["lrp"] == pytest.approx(92 / 5)
    # The random ordering: the regions ranked by their sums of standard normal draws (seed 3).
    draw = np.random.default_rng(3).standard_normal(16)
    order = np.argsort(-np.bincount(REGION.numpy(), weights=draw), kind="stable")
    assert found["random"] == pytest.approx(np.cumsum([0, *(4 * WEIGHT.numpy()[order])]).mean())
    assert list(found) == ["lrp", "gradient", "random"]


def test_the_flipped_subset_is_spread_evenly_over_the_test_set():
    assert spread(10, 4).tolist() == [0, 3, 6, 9]
    assert spread(3, 64).tolist() == [0, 1, 2]
    assert len(spread(500)) == 64 and spread(500)[[0, -1]].tolist() == [0, 499]
