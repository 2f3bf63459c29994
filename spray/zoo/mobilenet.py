"""MobileNetV2 as torchvision 0.2x writes it (Sandler et al., CVPR 2018), without weights.

Inverted residuals: a 1x1 expansion, a 3x3 depthwise convolution (``groups`` = channels), both
BatchNorm → ``nn.ReLU6(inplace=True)``, and a linear 1x1 projection with BatchNorm; ``x + self.conv(x)``
where shape allows. The head pools functionally (``nn.functional.adaptive_avg_pool2d``), flattens and
applies Dropout → Linear. ``width_mult`` and ``inverted_residual_setting`` make tiny ones for tests.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from spray.zoo.ops import Conv2dNormActivation, _make_divisible, init_mobile

#: Expansion t, output channels c, repetitions n, first stride s of each stage.
MOBILENET_V2 = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1], [6, 160, 3, 2],
                [6, 320, 1, 1]]


class InvertedResidual(nn.Module):
    """Expand (1x1, ReLU6) → depthwise 3x3 (ReLU6) → project (1x1, linear); residual at stride 1."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        self.stride = stride
        if stride not in [1, 2]:
            raise ValueError(f"stride should be 1 or 2 instead of {stride}")
        hidden_dim = int(round(inp * expand_ratio))
        self.use_res_connect = self.stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(Conv2dNormActivation(inp, hidden_dim, kernel_size=1, activation_layer=nn.ReLU6))
        layers.extend([
            Conv2dNormActivation(hidden_dim, hidden_dim, stride=stride, groups=hidden_dim,
                                 activation_layer=nn.ReLU6),
            nn.Conv2d(hidden_dim, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        ])
        self.conv = nn.Sequential(*layers)
        self.out_channels = oup

    def forward(self, x: Tensor) -> Tensor:
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    """Stem (3x3/2, ReLU6), inverted residual stages, 1x1 to ``last_channel`` (ReLU6), pooled linear head."""

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0,
                 inverted_residual_setting: list[list[int]] | None = None, round_nearest: int = 8,
                 dropout: float = 0.2) -> None:
        super().__init__()
        input_channel, last_channel = 32, 1280
        setting = MOBILENET_V2 if inverted_residual_setting is None else inverted_residual_setting
        input_channel = _make_divisible(input_channel * width_mult, round_nearest)
        self.last_channel = _make_divisible(last_channel * max(1.0, width_mult), round_nearest)
        features: list[nn.Module] = [Conv2dNormActivation(3, input_channel, stride=2, activation_layer=nn.ReLU6)]
        for t, c, n, s in setting:
            output_channel = _make_divisible(c * width_mult, round_nearest)
            for i in range(n):
                stride = s if i == 0 else 1
                features.append(InvertedResidual(input_channel, output_channel, stride, expand_ratio=t))
                input_channel = output_channel
        features.append(Conv2dNormActivation(input_channel, self.last_channel, kernel_size=1,
                                             activation_layer=nn.ReLU6))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(self.last_channel, num_classes))

        init_mobile(self, lambda m: nn.init.normal_(m.weight, 0, 0.01))

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)
        x = nn.functional.adaptive_avg_pool2d(x, (1, 1))
        x = torch.flatten(x, 1)
        x = self.classifier(x)
        return x


def mobilenet_v2(num_classes: int = 1000, *, width_mult: float = 1.0,
                 inverted_residual_setting: list[list[int]] | None = None) -> MobileNetV2:
    """MobileNetV2: 3,504,872 parameters at 1000 classes; the keywords shrink it for tests."""
    return MobileNetV2(num_classes, width_mult, inverted_residual_setting)
