"""The zoo's architectures have torchvision's layouts: parameter counts, state_dict names, forward code."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from spray.zoo import (
    BasicBlock, Bottleneck, convnext_tiny, densenet121, efficientnet_b0, mobilenet_v2, resnet18, resnet50,
    timm_vit_tiny_16, vgg16_bn, vit_tiny_16,
)
from spray.zoo.convnext import LayerNorm2d
from spray.zoo.ops import SqueezeExcitation


@pytest.mark.parametrize(("build", "parameters"), [(resnet18, 11_689_512), (resnet50, 25_557_032),
                                                   (vgg16_bn, 138_365_992), (densenet121, 7_978_856),
                                                   (mobilenet_v2, 3_504_872), (efficientnet_b0, 5_288_548),
                                                   (convnext_tiny, 28_589_128), (vit_tiny_16, 5_717_416),
                                                   (timm_vit_tiny_16, 5_717_416)],
                         ids=["resnet18", "resnet50", "vgg16_bn", "densenet121", "mobilenet_v2", "efficientnet_b0",
                              "convnext_tiny", "vit_tiny_16", "timm_vit_tiny_16"])
def test_parameter_counts_are_torchvisions(build, parameters):
    with torch.device("meta"):  # no memory, no initialisation cost
        model = build()
    assert sum(p.numel() for p in model.parameters()) == parameters


def test_resnet_keeps_torchvisions_names_and_blocks():
    with torch.device("meta"):
        model = resnet50()
    names = set(model.state_dict())
    assert {"conv1.weight", "bn1.running_var", "layer1.0.downsample.0.weight", "layer1.0.downsample.1.bias",
            "layer4.2.conv3.weight", "layer4.2.bn3.num_batches_tracked", "fc.weight", "fc.bias"} <= names
    assert isinstance(model.layer2[0], Bottleneck) and isinstance(model.layer2[0].relu, nn.ReLU)
    assert model.layer2[0].relu.inplace and model.layer2[0].conv2.stride == (2, 2)
    with torch.device("meta"):
        small = resnet18()
    assert isinstance(small.layer1[0], BasicBlock) and small.layer1[0].downsample is None
    assert "layer2.0.downsample.0.weight" in small.state_dict()


def test_vits_keep_torchvisions_and_timms_names_and_attention():
    with torch.device("meta"):
        torchvision_layout, timm_layout = vit_tiny_16(), timm_vit_tiny_16()
    assert {"class_token", "conv_proj.weight", "encoder.pos_embedding", "encoder.layers.encoder_layer_11.ln_1.bias",
            "encoder.layers.encoder_layer_0.self_attention.in_proj_weight",
            "encoder.layers.encoder_layer_0.self_attention.out_proj.bias",
            "encoder.layers.encoder_layer_0.mlp.3.weight",
            "encoder.ln.weight", "heads.head.weight"} <= set(torchvision_layout.state_dict())
    attention = torchvision_layout.encoder.layers.encoder_layer_0.self_attention
    assert isinstance(attention, nn.MultiheadAttention) and attention.batch_first and attention.num_heads == 3
    assert {"cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.11.attn.qkv.weight",
            "blocks.11.attn.qkv.bias", "blocks.11.attn.proj.weight", "blocks.11.mlp.fc2.bias", "norm.weight",
            "head.bias"} <= set(timm_layout.state_dict())
    assert timm_layout.blocks[0].attn.qkv.out_features == 3 * 192


@pytest.mark.parametrize("build", [lambda: resnet18(num_classes=7), lambda: vgg16_bn(num_classes=7, pool=1, hidden=32),
                                   lambda: vit_tiny_16(7, image_size=32, patch_size=8, num_layers=2, hidden_dim=48,
                                                       mlp_dim=96),
                                   lambda: timm_vit_tiny_16(7, img_size=32, patch_size=8, depth=2, embed_dim=48)],
                         ids=["resnet18", "vgg16_bn", "vit_tiny_16", "timm_vit_tiny_16"])
def test_small_inputs_give_logits(build):
    torch.manual_seed(0)
    model = build().eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)


def test_densenet_keeps_torchvisions_names_and_concatenates():
    with torch.device("meta"):
        model = densenet121()
    names = set(model.state_dict())
    assert {"features.conv0.weight", "features.denseblock1.denselayer1.norm1.running_mean",
            "features.denseblock4.denselayer16.conv2.weight", "features.transition3.conv.weight",
            "features.norm5.bias", "classifier.weight"} <= names
    assert model.features.denseblock2.denselayer12.norm1.num_features == 128 + 11 * 32  # the concatenation


def test_mobile_and_modern_networks_keep_torchvisions_names_and_blocks():
    with torch.device("meta"):
        mobile, efficient, convnext = mobilenet_v2(), efficientnet_b0(), convnext_tiny()
    assert {"features.0.0.weight", "features.1.conv.0.0.weight", "features.2.conv.1.0.weight",
            "features.17.conv.3.running_var", "features.18.1.bias", "classifier.1.weight"} <= set(mobile.state_dict())
    assert isinstance(mobile.features[2].conv[1][2], nn.ReLU6) and mobile.features[2].conv[1][0].groups == 96
    assert {"features.1.0.block.1.fc1.weight", "features.7.0.block.3.1.running_mean", "features.8.0.weight",
            "classifier.1.weight"} <= set(efficient.state_dict())
    assert isinstance(efficient.features[1][0].block[1], SqueezeExcitation)
    assert {"features.0.0.weight", "features.1.0.layer_scale", "features.1.0.block.2.weight",
            "features.2.0.weight", "features.7.2.block.5.bias", "classifier.0.weight"} <= set(convnext.state_dict())
    assert isinstance(convnext.features[2][0], LayerNorm2d) and type(convnext.features[1][0].block[2]) is nn.LayerNorm
