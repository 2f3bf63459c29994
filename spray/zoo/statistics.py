"""Untrained models whose BatchNorm layers are not the identity: what the tests and benchmarks of the LRP
engine need, since a freshly built BatchNorm (mean 0, variance 1, weight 1, bias 0) hides folding errors."""

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
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.2)
    return model
