"""ClArC's default layer: the last feature map the model's head reads, found in the traced forward."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from spray.clarc.activations import default_layer
from spray.demo import FEATURE_LAYER, build_model
from spray.zoo import CNBlockConfig, convnext_tiny, densenet121, efficientnet_b0, mobilenet_v2, resnet18, resnet50


@pytest.mark.parametrize(("build", "expected"), [
    # after the residual addition and its ReLU: registration order gave the last block's conv2 (before both)
    (lambda: resnet18(4), "layer4.1"),
    (lambda: resnet50(4), "layer4.2"),
    # the final BatchNorm, before the head's functional F.relu: registration order gave the last dense
    # layer's conv2, whose output is one slice of the concatenation the head reads
    (lambda: densenet121(4, growth_rate=4, block_config=(2, 2), num_init_features=8, bn_size=2), "features.norm5"),
    (lambda: mobilenet_v2(4, width_mult=0.25, inverted_residual_setting=[[1, 16, 1, 1], [6, 24, 2, 2]]),
     "features.4.2"),
    (lambda: efficientnet_b0(4, stages=3, width_mult=0.25), "features.4.2"),
    # the last block's output after its residual addition, not a depthwise convolution inside it
    (lambda: convnext_tiny(4, block_setting=[CNBlockConfig(8, 16, 1), CNBlockConfig(16, None, 2)]), "features.3.1"),
], ids=["resnet18", "resnet50", "densenet121", "mobilenet_v2", "efficientnet_b0", "convnext_tiny"])
def test_default_layer_is_the_last_feature_map_the_head_reads(build, expected):
    torch.manual_seed(0)
    model = build().train()
    # 32 × 32 ends the ResNet's last stage on a 1 × 1 map: the pooling's input counts, not its size
    assert default_layer(model, torch.randn(2, 3, 32, 32)) == expected
    assert model.training  # traced in eval mode, the model's own mode restored


def test_a_flattening_head_reads_the_last_block_not_the_input_of_a_pooling_between_blocks():
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 2))
    assert default_layer(model, torch.randn(1, 1, 8, 8)) == "4"


def test_the_demo_cnns_default_layer_is_its_feature_layer():
    assert default_layer(build_model(3, seed=0), torch.randn(1, 1, 32, 32)) == FEATURE_LAYER == "features.10"


class _Untraceable(nn.Module):
    """Control flow on a tensor's value stops fx: the registration order decides."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.relu1 = nn.Conv2d(1, 2, 3), nn.ReLU()
        self.conv2, self.bn2, self.relu2 = nn.Conv2d(2, 2, 3), nn.BatchNorm2d(2), nn.ReLU()
        self.fc = nn.Linear(2, 2)

    def forward(self, x: Tensor) -> Tensor:
        h = self.relu1(self.conv1(x))
        if h.sum() > 0:
            h = self.relu2(self.bn2(self.conv2(h)))
        return self.fc(h.mean((2, 3)))


def test_an_untraceable_models_default_layer_follows_the_last_convolution_in_registration_order():
    assert default_layer(_Untraceable(), torch.randn(1, 1, 8, 8)) == "relu2"
