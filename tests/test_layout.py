"""Which axis of a layer's output holds its channels (spray._layout): channels-first for convolutions,
last for a transformer's tokens; the canonical view and its inverse; a channels-last map refused."""

from __future__ import annotations

import pytest
import torch

from spray._layout import Layout, layer_layout
from spray.errors import BadInputError
from spray.zoo.convnext import convnext_tiny
from spray.zoo.resnet import resnet18
from spray.zoo.vit import VisionTransformer


def _outputs(model, x, names):
    outputs = {}
    handles = [model.get_submodule(name).register_forward_hook(
        lambda _m, _a, out, name=name: outputs.setdefault(name, out)) for name in names]
    with torch.no_grad():
        model.eval()(x)
    for handle in handles:
        handle.remove()
    return outputs


def test_convolutional_feature_maps_are_channels_first():
    model = resnet18(num_classes=3)
    out = _outputs(model, torch.rand(1, 3, 32, 32), ["relu", "layer4.1", "layer4"])
    for name, a in out.items():
        layout = layer_layout(model, name)
        assert not layout.channels_last(a)
        assert layout.canonical(a) is a
    assert layer_layout(model, "layer4.1").source == "layer4.1.bn2"


def test_transformer_blocks_are_tokens_read_with_channels_at_dim_1():
    model = VisionTransformer(28, 4, 4, 4, 64, 128, num_classes=3)
    names = ["conv_proj", "encoder.layers.encoder_layer_1", "encoder.layers.encoder_layer_1.mlp.1", "encoder.ln"]
    out = _outputs(model, torch.rand(2, 3, 28, 28), names)
    assert not layer_layout(model, "conv_proj").channels_last(out["conv_proj"])
    assert layer_layout(model, names[1]) == Layout(names[1], names[1] + ".mlp.3", 64)
    for name, width in zip(names[1:], (64, 128, 64), strict=True):
        layout, a = layer_layout(model, name), out[name]
        assert layout.channels_last(a)
        view = layout.canonical(a)
        assert view.shape == (2, width, 50)
        assert torch.equal(view[:, :, 7], a[:, 7, :])
        assert torch.equal(layout.restore(view, a), a)


def test_convnext_s_layer_norm_2d_and_block_outputs_are_channels_first_and_its_permuted_insides_refused():
    model = convnext_tiny(num_classes=3, layer_scale=1.0)
    block = "features.1.0"
    out = _outputs(model, torch.rand(1, 3, 32, 32), ["features.0.1", block, block + ".block.3"])
    assert not layer_layout(model, "features.0.1").channels_last(out["features.0.1"])  # LayerNorm2d
    assert not layer_layout(model, block).channels_last(out[block])
    with pytest.raises(BadInputError) as raised:
        layer_layout(model, block + ".block.3").canonical(out[block + ".block.3"])
    assert str(raised.value) == (
        "layer 'features.1.0.block.3' outputs shape (8, 8, 384) per sample, features last after "
        "'features.1.0.block.3' (384 features); spray reads channels-first feature maps (C, H, W) and tokens "
        "(T, D), not channels-last maps: choose a layer whose output is channels-first (e.g. the block's output)")


def test_vectors_are_the_same_in_both_layouts():
    layout = Layout("head", "head", 5)
    a = torch.rand(4, 5)
    assert not layout.channels_last(a) and layout.canonical(a) is a
