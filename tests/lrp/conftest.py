"""Small bias-free networks shared by the LRP tests (float64, eval mode)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from spray.lrp import Sum


class ResidualBlock(nn.Module):
    """conv → BN → ReLU → conv, added to the input through ``Sum`` (as a ResNet basic block)."""

    def __init__(self, channels: int, bias: bool = False) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=bias), nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True), nn.Conv2d(channels, channels, 3, padding=1, bias=bias),
        )
        self.add = Sum()
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.add(self.body(x), x))


class ResNetLike(nn.Module):
    """A stem, two residual blocks, global pooling and a classifier; flattening is functional."""

    def __init__(self, bias: bool = False, channels: int = 4, classes: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(2, channels, 3, padding=1, bias=bias), nn.BatchNorm2d(channels),
                                  nn.ReLU(inplace=True), nn.MaxPool2d(2))
        self.blocks = nn.ModuleList([ResidualBlock(channels, bias), ResidualBlock(channels, bias)])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, classes, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.fc(self.pool(x).flatten(1))


def _randomise_batchnorm(model: nn.Module, bias: bool) -> nn.Module:
    """Non-trivial running statistics (mean zero without biases, so that folding adds no bias)."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                if bias:
                    module.running_mean.normal_()
                    module.bias.normal_()
                else:
                    module.bias.zero_()
    return model


@pytest.fixture
def randomise_batchnorm() -> Callable[[nn.Module, bool], nn.Module]:
    return _randomise_batchnorm


@pytest.fixture
def resnet() -> nn.Module:
    torch.manual_seed(0)
    return _randomise_batchnorm(ResNetLike(bias=True), bias=True).double().eval()


@pytest.fixture
def bias_free_resnet() -> nn.Module:
    torch.manual_seed(1)
    return _randomise_batchnorm(ResNetLike(bias=False), bias=False).double().eval()
