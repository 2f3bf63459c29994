"""ClArC's default layer: the last feature map the model's head reads, found in the traced forward; pooling a
layer's activations over positions or to coarse cells."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from spray.clarc.activations import default_layer, pool
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


def test_pool_averages_over_every_position_by_default_and_leaves_vectors_as_they_are():
    a = torch.arange(2 * 3 * 4 * 5, dtype=torch.float64).reshape(2, 3, 4, 5)
    torch.testing.assert_close(pool(a), a.mean((2, 3)))
    torch.testing.assert_close(pool(a[:, :, 0, 0], 2), a[:, :, 0, 0])


def test_pool_to_a_grid_gives_each_channels_cell_means_channel_major():
    a = torch.arange(2 * 3 * 4 * 4, dtype=torch.float64).reshape(2, 3, 4, 4)
    cells = a.reshape(2, 3, 2, 2, 2, 2).mean((3, 5))  # (n, C, cell row, cell column)
    torch.testing.assert_close(pool(a, 2), cells.reshape(2, 12))


def test_pool_to_a_grid_that_does_not_divide_the_map_weighs_pixels_by_their_overlap_with_each_cell():
    # 7 x 7 into 2 x 2 cells of 3.5 x 3.5 pixels: the pixel (3, 3) lies a quarter in each cell, the pixel (0, 0)
    # wholly in the first; each cell's mean is its covered area's sum over 12.25
    a = torch.zeros(1, 2, 7, 7, dtype=torch.float64)
    a[0, 0, 3, 3], a[0, 1, 0, 0] = 1.0, 1.0
    expected = torch.tensor([[0.25, 0.25, 0.25, 0.25, 1.0, 0.0, 0.0, 0.0]], dtype=torch.float64) / 12.25
    torch.testing.assert_close(pool(a, 2), expected)
    torch.testing.assert_close(pool(a, 2).reshape(1, 2, 4).mean(2), pool(a))  # equal cells: their mean is the mean
    torch.testing.assert_close(pool(a, 7), a.reshape(1, -1))  # one cell per position: the map itself
