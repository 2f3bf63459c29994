"""TCAV: the share of positive directional derivatives along an independently fitted CAV, and its layer."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from spray.clarc.tcav import directional_derivatives, tcav, tcav_layer
from spray.errors import BadInputError
from tests.clarc.conftest import tiny_model


def _monotone_model(sign: float) -> nn.Module:
    """``features`` = identity on 2-channel 4×4 maps, then the class-1 logit is ``sign * exp(mean of channel
    0)`` (monotone in channel 0 everywhere), class 0's is the mean of channel 1."""

    class Head(nn.Module):
        def forward(self, a: torch.Tensor) -> torch.Tensor:
            pooled = a.flatten(2).mean(2)
            return torch.stack([pooled[:, 1], sign * pooled[:, 0].exp()], 1)

    return nn.Sequential(OrderedDict(features=nn.Identity(), head=Head())).eval()


def _concept_and_random(n: int = 40, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random 2×4×4 inputs; the concept samples have channel 0 raised by 1 (the artifact's direction)."""
    g = torch.Generator().manual_seed(seed)
    random = torch.rand(n, 2, 4, 4, generator=g)
    concept = random.clone()
    concept[:, 0] += 1.0
    return concept, random


def _samples(x: torch.Tensor) -> TensorDataset:
    return TensorDataset(x, torch.zeros(len(x), dtype=torch.long))


@pytest.mark.parametrize("sign, score", [(1.0, 1.0), (-1.0, 0.0)])
def test_tcav_score_of_a_model_monotone_along_the_concept_is_one_and_zero_when_it_falls(sign, score):
    concept, random = _concept_and_random()
    result = tcav(_monotone_model(sign), "features", concept=_samples(concept), random=_samples(random),
                  inputs=_samples(random), target=1)
    assert result.score == score and result.n == 40 and result.cav_auc == 1.0 and result.layer == "features"
    # the CAV is channel 0; d/da of sign*exp(mean a_0) along it, summed over the 16 positions, is sign*exp(.)
    expected = random[:, 0].flatten(1).mean(1).exp()
    assert result.magnitude == pytest.approx(float(expected.mean()), rel=1e-5)


def test_a_logit_that_ignores_the_concept_has_zero_derivatives_and_a_score_of_zero_positive():
    concept, random = _concept_and_random()
    result = tcav(_monotone_model(1.0), "features", concept=_samples(concept), random=_samples(random),
                  inputs=_samples(random), target=0)
    assert result.magnitude == pytest.approx(0.0, abs=1e-7) and result.score == 0.0


def test_directional_derivative_of_a_linear_map_is_its_weight_along_v_times_the_positions():
    conv = nn.Conv2d(3, 2, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[1.0, 2.0, 3.0], [0.5, -1.0, 0.0]])[:, :, None, None])
    model = nn.Sequential(OrderedDict(features=nn.Identity(), conv=conv, pool=nn.AdaptiveAvgPool2d(1),
                                      flatten=nn.Flatten())).eval()
    v = torch.tensor([0.0, 0.6, 0.8])
    x = torch.rand(5, 3, 4, 4)
    # logit 0 = mean over 16 positions of (a_0 + 2 a_1 + 3 a_2): along v at every position, 2*0.6 + 3*0.8
    assert directional_derivatives(model, "features", x, v, target=0).tolist() == pytest.approx([3.6] * 5)
    assert directional_derivatives(model, "features", x, v, target=1).tolist() == pytest.approx([-0.6] * 5)


def test_the_tcav_layer_is_the_last_other_block_before_the_corrected_layer_else_the_first_after():
    model, x = tiny_model(), torch.rand(2, 1, 8, 8)
    # features.2 (conv) and features.3 (its ReLU) share the corrected layer's 6×8×8 space: skipped
    assert tcav_layer(model, "features.3", x) == "features.1"
    assert tcav_layer(model, "features.2", x) == "features.1"
    # nothing of another shape before features.0/.1 (4×8×8): the first map after, of 6 channels
    assert tcav_layer(model, "features.1", x) == "features.2"
    # the whole feature stack: the pooled map after it (6×1×1) is the only other one
    assert tcav_layer(model, "features", x) == "pool"
    assert tcav_layer(nn.Sequential(OrderedDict(features=nn.Identity())), "features", x) is None


def test_tcav_without_samples_of_the_class_is_bad_input():
    concept, random = _concept_and_random()
    with pytest.raises(BadInputError, match="TCAV needs samples of class 1 to take derivatives on"):
        tcav(_monotone_model(1.0), "features", concept=_samples(concept), random=_samples(random),
             inputs=_samples(random[:0]), target=1)
