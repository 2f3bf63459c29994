"""The benchmark's architectures: each builds for grey and RGB cases, seeded, and is one the chain can explain."""

from __future__ import annotations

import pytest
import torch

from spray.attribution.methods import get_method
from spray.benchmark.baseline import penultimate_layer
from spray.benchmark.models import SmallResNet, build
from spray.clarc import default_layer
from spray.clarc.activations import activations
from spray.errors import BadInputError
from spray.zoo.resnet import BasicBlock
from spray.zoo.vit import VisionTransformer


def test_the_resnet_is_the_zoos_basic_block_at_the_papers_small_image_widths():
    model = build("resnet", 0)
    assert isinstance(model, SmallResNet) and all(isinstance(model.get_submodule(f"layer{i}.0"), BasicBlock)
                                                  for i in (1, 2, 3))
    assert sum(p.numel() for p in model.parameters()) == 77754
    assert [model.get_submodule(f"layer{i}.0.conv2").out_channels for i in (1, 2, 3)] == [16, 32, 64]
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert build("resnet", 0, num_classes=2, channels=3)(torch.zeros(1, 3, 28, 28)).shape == (1, 2)


def test_an_architecture_is_drawn_from_its_seed_alone():
    first, again, other = (build("resnet", s).state_dict()["conv1.weight"] for s in (0, 0, 1))
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_the_resnets_layers_are_those_clarc_and_the_baseline_read_and_lrp_explains_it():
    model = build("resnet", 0).eval()
    x = torch.rand(3, 1, 28, 28)
    assert default_layer(model, x) == "layer3.0" and penultimate_layer(model) == "avgpool"
    relevance, _ = get_method("epsilon_plus_flat").attribute(model, x, torch.tensor([1, 4, 7]))
    assert relevance.shape == x.shape and bool((relevance.abs().flatten(1).sum(1) > 0).all())


def test_an_unknown_architecture_is_refused_with_the_known_ones():
    with pytest.raises(BadInputError, match=r"^unknown architecture 'vgg' \(--architectures\); choose from cnn, "
                                            r"resnet, vit$"):
        build("vgg", 0)


def test_the_vit_is_the_zoos_at_28_pixels_and_clarc_reads_its_final_norm_s_64_channels():
    model = build("vit", 0).eval()
    assert isinstance(model, VisionTransformer) and len(model.encoder.layers) == 4
    assert model.conv_proj.in_channels == 1 and model.encoder.pos_embedding.shape == (1, 50, 64)
    assert build("vit", 0, num_classes=2, channels=3)(torch.zeros(1, 3, 28, 28)).shape == (1, 2)
    x = torch.rand(3, 1, 28, 28)
    assert default_layer(model, x) == "encoder.ln"
    assert activations(model, "encoder.ln", x).shape == (3, 64, 50)
