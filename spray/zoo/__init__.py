"""Architectures as users bring them: faithful copies of torchvision's ResNet, VGG-BN, DenseNet, MobileNetV2,
EfficientNet, ConvNeXt and ViT layouts, and timm's ViT.

torchvision is not a dependency of spray; these copies keep its module names, its ``forward`` code
(``out += identity``, ``nn.ReLU(inplace=True)``, BatchNorm held as attributes, ``downsample`` Sequentials,
functional ``torch.flatten``, ``torch.cat`` of features, squeeze-excitation's ``scale * input``, the layer
scale's ``self.layer_scale * ...``, ``LayerNorm2d``) and its initialisation, so that state_dicts of
torchvision models load into them. No weights are shipped or downloaded. They serve the tests and
benchmarks of the LRP engine (docs/lrp.md), which must explain such models without their being rewritten.
"""

from __future__ import annotations

from spray.zoo.convnext import CNBlockConfig, ConvNeXt, convnext_tiny
from spray.zoo.densenet import DenseNet, densenet121
from spray.zoo.efficientnet import EfficientNet, efficientnet_b0
from spray.zoo.mobilenet import InvertedResidual, MobileNetV2, mobilenet_v2
from spray.zoo.resnet import BasicBlock, Bottleneck, ResNet, resnet18, resnet50
from spray.zoo.statistics import draw_zero_parameters, randomize_batch_norms, randomize_layer_norms
from spray.zoo.vgg import VGG, vgg16_bn
from spray.zoo.vit import TimmVisionTransformer, VisionTransformer, timm_vit_tiny_16, vit_tiny_16

__all__ = [
    "VGG", "BasicBlock", "Bottleneck", "CNBlockConfig", "ConvNeXt", "DenseNet", "EfficientNet", "InvertedResidual",
    "MobileNetV2", "ResNet", "TimmVisionTransformer", "VisionTransformer", "convnext_tiny", "densenet121",
    "draw_zero_parameters", "efficientnet_b0", "mobilenet_v2", "randomize_batch_norms", "randomize_layer_norms",
    "resnet18", "resnet50", "timm_vit_tiny_16", "vgg16_bn", "vit_tiny_16",
]
