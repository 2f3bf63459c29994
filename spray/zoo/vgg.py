"""VGG-16 with BatchNorm (Simonyan & Zisserman, ICLR 2015) as torchvision writes it, without weights.

``features`` is one ``nn.Sequential`` of conv → BN → ReLU(inplace=True) and max pools, ``avgpool`` an
adaptive average pool to ``pool`` × ``pool``, ``classifier`` Linear → ReLU → Dropout twice and the output
layer. ``pool=7, hidden=4096`` is torchvision's layout; smaller values keep the classifier small for the
small inputs of tests (at 32×32 the features end on a 1×1 map).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

#: Configuration "D": output channels of each 3x3 convolution, "M" for a 2x2 max pool.
VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class VGG(nn.Module):
    """``features`` → ``avgpool`` → ``torch.flatten`` → ``classifier``; input (B, 3, H, W), H, W ≥ 32."""

    def __init__(self, features: nn.Sequential, num_classes: int = 1000, dropout: float = 0.5, pool: int = 7,
                 hidden: int = 4096) -> None:
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d((pool, pool))
        self.classifier = nn.Sequential(
            nn.Linear(512 * pool * pool, hidden),
            nn.ReLU(True),
            nn.Dropout(p=dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(True),
            nn.Dropout(p=dropout),
            nn.Linear(hidden, num_classes),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.constant_(m.bias, 0)

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        x = self.classifier(x)
        return x


def make_layers(cfg: list[int | str], batch_norm: bool = False) -> nn.Sequential:
    """The ``features`` Sequential of a configuration (torchvision's ``make_layers``)."""
    layers: list[nn.Module] = []
    in_channels = 3
    for v in cfg:
        if v == "M":
            layers += [nn.MaxPool2d(kernel_size=2, stride=2)]
        else:
            conv2d = nn.Conv2d(in_channels, v, kernel_size=3, padding=1)
            if batch_norm:
                layers += [conv2d, nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
            else:
                layers += [conv2d, nn.ReLU(inplace=True)]
            in_channels = v
    return nn.Sequential(*layers)


def vgg16_bn(num_classes: int = 1000, pool: int = 7, hidden: int = 4096) -> VGG:
    """VGG-16-BN; ``pool=7, hidden=4096`` (the defaults) is torchvision's layout, 138 M parameters."""
    return VGG(make_layers(VGG16, batch_norm=True), num_classes, pool=pool, hidden=hidden)
