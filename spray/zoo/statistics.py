"""Untrained models whose normalisations are not the identity and whose zero-initialised parameters are not
zero: what the tests and benchmarks of the LRP engine need, since a freshly built BatchNorm (mean 0, variance
1, weight 1, bias 0) hides folding errors, a LayerNorm's zero shift absorbs nothing, and a zero head (as
torchvision initialises a ViT's) gives logits of 0, which explain nothing."""

from __future__ import annotations

import torch
from torch import nn


def randomize_batch_norms(model: nn.Module, *, eps: float | None = None) -> nn.Module:
    """Draw every BatchNorm's running statistics and affine parameters from torch's global generator
    (variance in [0.5, 2], mean ~ N(0, 0.2²), weight in [0.5, 1.5], bias ~ N(0, 0.2²)), in place, in
    module order; ``eps`` replaces their ε when given. Returns ``model``."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            if eps is not None:
                module.eps = eps
            with torch.no_grad():
                module.running_var.uniform_(0.5, 2.0)
                module.running_mean.normal_(0.0, 0.2)
            _draw_affine(module)
    return model


def randomize_layer_norms(model: nn.Module) -> nn.Module:
    """Draw every LayerNorm's affine parameters (``LayerNorm2d`` included) from torch's global generator
    (weight in [0.5, 1.5], bias ~ N(0, 0.2²)), in place, in module order. Returns ``model``."""
    for module in model.modules():
        if isinstance(module, nn.LayerNorm) and module.elementwise_affine:
            _draw_affine(module)
    return model


def _draw_affine(module: nn.Module) -> None:
    """A normalisation's affine parameters drawn in place: weight in [0.5, 1.5], then bias ~ N(0, 0.2²)."""
    with torch.no_grad():
        module.weight.uniform_(0.5, 1.5)
        module.bias.normal_(0.0, 0.2)


def draw_zero_parameters(model: nn.Module, std: float = 0.1) -> nn.Module:
    """Draw every parameter that is all zeros (heads, biases, class tokens as initialised) from N(0, std²)
    with torch's global generator, in place, in parameter order. Returns ``model``."""
    with torch.no_grad():
        for parameter in model.parameters():
            if not parameter.any():
                parameter.normal_(0.0, std)
    return model
