"""spray.zoo.statistics: drawn LayerNorm affine parameters and zero-initialised parameters, from torch's global
generator in module order, leaving everything else as it was."""

from __future__ import annotations

import torch
from torch import nn

from spray.zoo import draw_zero_parameters, randomize_layer_norms
from spray.zoo.convnext import LayerNorm2d


def test_layer_norms_and_zero_parameters_are_drawn_in_order_and_nothing_else_changes():
    model = nn.Sequential(nn.Linear(2, 3), LayerNorm2d(3), nn.LayerNorm(3, elementwise_affine=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]))
        model[0].bias.zero_()
    torch.manual_seed(0)
    randomize_layer_norms(model)
    draw_zero_parameters(model, std=0.5)
    torch.manual_seed(0)  # the same draws, in the documented order
    weight, shift = torch.empty(3).uniform_(0.5, 1.5), torch.empty(3).normal_(0.0, 0.2)
    bias = torch.empty(3).normal_(0.0, 0.5)
    assert torch.equal(model[1].weight.detach(), weight) and torch.equal(model[1].bias.detach(), shift)
    assert torch.equal(model[0].bias.detach(), bias)
    assert torch.equal(model[0].weight.detach(), torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]))
