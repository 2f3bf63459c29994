"""ConvNeXt-T as torchvision 0.2x writes it (Liu et al., CVPR 2022), without weights.

A CNBlock is a depthwise 7x7 convolution, a permute to channels-last, ``nn.LayerNorm`` over the channels,
Linear → GELU → Linear (the inverted bottleneck), a permute back, a layer scale (``self.layer_scale *
...``, a per-channel parameter), stochastic depth (the identity in eval mode) and ``result += input``. The
stem (4x4/4 convolution) and the downsampling layers use ``LayerNorm2d``, an ``nn.LayerNorm`` subclass
whose forward permutes to normalise the channels of a channels-first map; so does the head, before
``nn.Flatten`` and the Linear. ``block_setting`` and ``layer_scale`` make tiny ones for tests (torchvision's
layer scale of 1e-6 all but switches the residual branches off in an untrained model).
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spray.zoo.ops import Conv2dNormActivation, Permute, StochasticDepth


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a (B, C, H, W) map."""

    def forward(self, x: Tensor) -> Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        x = x.permute(0, 3, 1, 2)
        return x


class CNBlock(nn.Module):
    """Depthwise 7x7 → channels-last LayerNorm → Linear (4x) → GELU → Linear → layer scale, residual."""

    def __init__(self, dim: int, layer_scale: float, stochastic_depth_prob: float) -> None:
        super().__init__()
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        self.block = nn.Sequential(
            nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim, bias=True),
            Permute([0, 2, 3, 1]),
            norm_layer(dim),
            nn.Linear(in_features=dim, out_features=4 * dim, bias=True),
            nn.GELU(),
            nn.Linear(in_features=4 * dim, out_features=dim, bias=True),
            Permute([0, 3, 1, 2]),
        )
        self.layer_scale = nn.Parameter(torch.ones(dim, 1, 1) * layer_scale)
        self.stochastic_depth = StochasticDepth(stochastic_depth_prob, "row")

    def forward(self, input: Tensor) -> Tensor:  # noqa: A002 (torchvision's name)
        result = self.layer_scale * self.block(input)
        result = self.stochastic_depth(result)
        result += input
        return result


class CNBlockConfig:
    """One stage: its channels, the next stage's (None for the last) and its number of blocks."""

    def __init__(self, input_channels: int, out_channels: int | None, num_layers: int) -> None:
        self.input_channels = input_channels
        self.out_channels = out_channels
        self.num_layers = num_layers


class ConvNeXt(nn.Module):
    """Patchify stem (4x4/4 conv, LayerNorm2d), stages of CNBlocks with LayerNorm2d + 2x2/2 conv between
    them, average pooling, LayerNorm2d → Flatten → Linear."""

    def __init__(self, block_setting: list[CNBlockConfig], stochastic_depth_prob: float = 0.0,
                 layer_scale: float = 1e-6, num_classes: int = 1000) -> None:
        super().__init__()
        norm_layer = partial(LayerNorm2d, eps=1e-6)
        layers: list[nn.Module] = []
        firstconv_output_channels = block_setting[0].input_channels
        layers.append(Conv2dNormActivation(3, firstconv_output_channels, kernel_size=4, stride=4, padding=0,
                                           norm_layer=norm_layer, activation_layer=None, bias=True))
        total_stage_blocks = sum(cnf.num_layers for cnf in block_setting)
        stage_block_id = 0
        for cnf in block_setting:
            stage: list[nn.Module] = []
            for _ in range(cnf.num_layers):
                sd_prob = stochastic_depth_prob * stage_block_id / (total_stage_blocks - 1.0)
                stage.append(CNBlock(cnf.input_channels, layer_scale, sd_prob))
                stage_block_id += 1
            layers.append(nn.Sequential(*stage))
            if cnf.out_channels is not None:
                layers.append(nn.Sequential(norm_layer(cnf.input_channels),
                                            nn.Conv2d(cnf.input_channels, cnf.out_channels, kernel_size=2, stride=2)))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        lastblock = block_setting[-1]
        lastconv_output_channels = (lastblock.out_channels if lastblock.out_channels is not None
                                    else lastblock.input_channels)
        self.classifier = nn.Sequential(norm_layer(lastconv_output_channels), nn.Flatten(1),
                                        nn.Linear(lastconv_output_channels, num_classes))

        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)
        x = self.avgpool(x)
        x = self.classifier(x)
        return x


def convnext_tiny(num_classes: int = 1000, *, block_setting: list[CNBlockConfig] | None = None,
                  layer_scale: float = 1e-6) -> ConvNeXt:
    """ConvNeXt-T (stages of 96, 192, 384, 768 channels with 3, 3, 9, 3 blocks): 28,589,128 parameters at
    1000 classes; ``block_setting``/``layer_scale`` make tiny ones for tests."""
    if block_setting is None:
        block_setting = [CNBlockConfig(96, 192, 3), CNBlockConfig(192, 384, 3), CNBlockConfig(384, 768, 9),
                         CNBlockConfig(768, None, 3)]
    return ConvNeXt(block_setting, stochastic_depth_prob=0.1, layer_scale=layer_scale, num_classes=num_classes)
