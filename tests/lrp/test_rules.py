"""Each rule on a single layer: conservation, hand-computed values, the ε convention."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.func import functional_call

from spray.errors import BadInputError, UnsupportedLayerError
from spray.lrp import (
    AlphaBeta, Rule, Flat, Gamma, Pass, Proportional, Sum, WinnerTakesAll, WSquare, ZBox, ZPlus, rules,
)
from spray.lrp.rules import stabilise

CONSERVING_RULES = [
    rules.Epsilon(1e-12), Gamma(0.25, 1e-12), ZPlus(), AlphaBeta(2.0, 1.0), AlphaBeta(1.5, 0.5),
    Flat(), WSquare(), ZBox(-3.0, 3.0),
]


def _redistribute(rule: Rule, layer: nn.Module, *inputs: torch.Tensor, relevance: torch.Tensor) -> tuple:
    """Call the rule as the engine does: inputs as leaves, the layer's output with its graph."""
    leaves = tuple(x.detach().requires_grad_(True) for x in inputs)
    return rule.redistribute(layer, leaves, layer(*leaves), relevance)


def _signed_output(layer: nn.Module, x: torch.Tensor, sign: int) -> torch.Tensor:
    """Σ_i (x_i w_ij)⁺ for sign 1, Σ_i (x_i w_ij)⁻ for sign -1."""
    same, other = (layer.weight.clamp(min=0), layer.weight.clamp(max=0))[::sign]
    return (functional_call(layer, {"weight": same}, (x.clamp(min=0),))
            + functional_call(layer, {"weight": other}, (x.clamp(max=0),)))


def _layer(kind: str, channels_in: int, channels_out: int, size: int) -> tuple[nn.Module, torch.Tensor]:
    """A bias-free layer and a random batch of inputs in [-3, 3) of matching shape."""
    if kind == "linear":
        return nn.Linear(channels_in, channels_out, bias=False), torch.rand(3, channels_in) * 6 - 3
    if kind == "conv1d":
        layer = nn.Conv1d(channels_in, channels_out, 3, padding=1, bias=False)
        return layer, torch.rand(3, channels_in, size) * 6 - 3
    layer = nn.Conv2d(channels_in, channels_out, 3, stride=2, padding=1, bias=False)
    return layer, torch.rand(3, channels_in, size, size) * 6 - 3


@settings(max_examples=25, deadline=None)
@given(
    kind=st.sampled_from(["linear", "conv1d", "conv2d"]),
    rule=st.sampled_from(CONSERVING_RULES),
    channels=st.tuples(st.integers(1, 5), st.integers(1, 5)),
    size=st.integers(3, 7),
    seed=st.integers(0, 2**16),
)
def test_bias_free_layer_conserves_relevance_per_sample(kind, rule, channels, size, seed):
    torch.manual_seed(seed)
    layer, x = _layer(kind, *channels, size)
    layer, x = layer.double(), x.double()
    with torch.no_grad():
        z = layer(x)
    relevance = torch.randn_like(z)
    if isinstance(rule, AlphaBeta):  # outputs without contributions of a needed sign pass nothing on
        relevance = relevance * (_signed_output(layer, x, 1) > 1e-9)
        if rule.beta:
            relevance = relevance * (_signed_output(layer, x, -1) < -1e-9)
    (relevance_in,) = _redistribute(rule, layer, x, relevance=relevance)
    assert relevance_in.shape == x.shape
    torch.testing.assert_close(
        relevance_in.flatten(1).sum(1), relevance.flatten(1).sum(1), rtol=1e-5, atol=1e-9
    )


def test_epsilon_equals_contributions_over_stabilised_output_including_bias():
    layer = nn.Linear(2, 1).double()
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[2.0, -1.0]]))
        layer.bias.fill_(0.5)
    x = torch.tensor([[1.0, 3.0]], dtype=torch.float64)  # z = 2 - 3 + 0.5 = -0.5
    relevance = torch.tensor([[1.0]], dtype=torch.float64)
    (relevance_in,) = _redistribute(rules.Epsilon(0.5), layer, x, relevance=relevance)
    torch.testing.assert_close(relevance_in, torch.tensor([[2.0, -3.0]], dtype=torch.float64) / -1.0)


def test_stabiliser_adds_epsilon_with_the_sign_of_z_and_sign_of_zero_is_plus():
    z = torch.tensor([0.0, -0.0, -0.5, 0.5], dtype=torch.float64)
    torch.testing.assert_close(stabilise(z, 0.1), torch.tensor([0.1, 0.1, -0.6, 0.6], dtype=torch.float64))


def test_zbox_matches_hand_computed_example():
    # contributions x_i w_i - l_i w_i⁺ - h_i w_i⁻ with l = 0, h = 1: 0.5·1 = 0.5 and 0.25·(-2) + 2 = 1.5
    layer = nn.Linear(2, 1, bias=False).double()
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -2.0]]))
    x = torch.tensor([[0.5, 0.25]], dtype=torch.float64)
    relevance = torch.tensor([[4.0]], dtype=torch.float64)
    (relevance_in,) = _redistribute(ZBox(0.0, 1.0), layer, x, relevance=relevance)
    torch.testing.assert_close(relevance_in, torch.tensor([[1.0, 3.0]], dtype=torch.float64))
    # Per-feature bounds broadcast to the input; l_2 = -1 meets only w_2⁺ = 0, so nothing changes.
    bounds = ZBox(torch.tensor([0.0, -1.0]), torch.tensor([1.0, 1.0]))
    (relevance_in,) = _redistribute(bounds, layer, x, relevance=relevance)
    torch.testing.assert_close(relevance_in, torch.tensor([[1.0, 3.0]], dtype=torch.float64))


def test_zplus_ignores_negative_contributions_and_alpha_beta_weights_both_signs():
    layer = nn.Linear(3, 1, bias=False).double()
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -1.0, 2.0]]))
    x = torch.tensor([[1.0, 1.0, -1.0]], dtype=torch.float64)  # contributions 1, -1, -2
    relevance = torch.tensor([[3.0]], dtype=torch.float64)
    (plus,) = _redistribute(ZPlus(), layer, x, relevance=relevance)
    torch.testing.assert_close(plus, torch.tensor([[3.0, 0.0, 0.0]], dtype=torch.float64))
    (alpha_beta,) = _redistribute(AlphaBeta(2.0, 1.0), layer, x, relevance=relevance)
    torch.testing.assert_close(alpha_beta, torch.tensor([[6.0, -1.0, -2.0]], dtype=torch.float64))


def test_flat_spreads_relevance_uniformly_over_the_receptive_field():
    layer = nn.Conv1d(1, 1, 2, bias=False).double()  # outputs see inputs (0, 1) and (1, 2)
    x = torch.randn(1, 1, 3, dtype=torch.float64)
    relevance = torch.tensor([[[2.0, 4.0]]], dtype=torch.float64)
    (relevance_in,) = _redistribute(Flat(), layer, x, relevance=relevance)
    torch.testing.assert_close(relevance_in, torch.tensor([[[1.0, 3.0, 2.0]]], dtype=torch.float64))


def test_winner_takes_all_gives_max_pool_relevance_to_the_argmax():
    x = torch.tensor([[[[1.0, 5.0, 0.0, -1.0], [2.0, 3.0, -4.0, -2.0]]]], dtype=torch.float64)
    relevance = torch.tensor([[[[7.0, -3.0]]]], dtype=torch.float64)
    (relevance_in,) = _redistribute(WinnerTakesAll(), nn.MaxPool2d(2), x, relevance=relevance)
    expected = torch.zeros_like(x)
    expected[0, 0, 0, 1], expected[0, 0, 0, 2] = 7.0, -3.0
    assert torch.equal(relevance_in, expected)
    (adaptive,) = _redistribute(WinnerTakesAll(), nn.AdaptiveMaxPool2d((1, 2)), x, relevance=relevance)
    assert torch.equal(adaptive, expected)


def test_proportional_splits_average_pool_and_sum_by_contribution():
    x = torch.tensor([[[1.0, 3.0, 2.0, 2.0]]], dtype=torch.float64)
    relevance = torch.tensor([[[4.0, 1.0]]], dtype=torch.float64)
    (pooled,) = _redistribute(Proportional(), nn.AvgPool1d(2), x, relevance=relevance)
    torch.testing.assert_close(pooled, torch.tensor([[[1.0, 3.0, 0.5, 0.5]]], dtype=torch.float64))
    a, b = torch.tensor([1.0, -3.0], dtype=torch.float64), torch.tensor([3.0, 1.0], dtype=torch.float64)
    relevance = torch.tensor([8.0, 4.0], dtype=torch.float64)
    share_a, share_b = _redistribute(Proportional(), Sum(), a, b, relevance=relevance)
    torch.testing.assert_close(share_a, torch.tensor([2.0, 6.0], dtype=torch.float64))
    torch.testing.assert_close(share_b, torch.tensor([6.0, -2.0], dtype=torch.float64))
    (stacked,) = _redistribute(Proportional(), Sum(), torch.stack([a, b]), relevance=relevance)
    torch.testing.assert_close(stacked, torch.stack([share_a, share_b]))


def test_pass_hands_relevance_through_reshaped_to_the_input():
    x = torch.randn(2, 3, 4)
    relevance = torch.randn(2, 12)
    (relevance_in,) = _redistribute(Pass(), nn.Flatten(), x, relevance=relevance)
    assert torch.equal(relevance_in, relevance.reshape(2, 3, 4))


def test_alpha_beta_requires_alpha_minus_beta_to_be_one():
    with pytest.raises(BadInputError, match="alpha - beta = 1"):
        AlphaBeta(2.0, 2.0)


@pytest.mark.parametrize("rule", [Gamma(), ZPlus(), Flat(), WSquare(), ZBox(0.0, 1.0)])
def test_weight_rules_refuse_layers_without_a_weight_matrix(rule):
    with pytest.raises(UnsupportedLayerError, match="'features.3'.*BatchNorm2d"):
        rule.check("features.3", nn.BatchNorm2d(3))


def test_rules_describe_their_parameters():
    assert repr(Gamma(0.5, 1e-3)) == "Gamma(gamma=0.5, epsilon=0.001)"
    assert ZBox(torch.tensor([0.0, -1.0]), 1).params() == {"low": [0.0, -1.0], "high": 1.0}
