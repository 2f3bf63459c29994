"""The benchmark's architectures: each builds for grey and RGB cases, seeded, and is one the chain can explain."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from spray.attribution.methods import get_method
from spray.benchmark.baseline import penultimate_layer
from spray.benchmark.cases import QUICK, Case
from spray.benchmark.models import RECIPES, SmallResNet, build, training_config
from spray.benchmark.run import case_directory
from spray.clarc import default_layer
from spray.clarc.activations import activations
from spray.errors import BadInputError
from spray.training import TrainingConfig
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


def test_the_vit_is_the_zoos_at_28_pixels_in_7_pixel_patches_and_clarc_reads_its_final_norm_s_64_channels():
    model = build("vit", 0).eval()
    assert isinstance(model, VisionTransformer) and len(model.encoder.layers) == 4
    assert model.conv_proj.in_channels == 1 and model.encoder.pos_embedding.shape == (1, 17, 64)
    assert build("vit", 0, num_classes=2, channels=3)(torch.zeros(1, 3, 28, 28)).shape == (1, 2)
    x = torch.rand(3, 1, 28, 28)
    assert default_layer(model, x) == "encoder.ln"
    assert activations(model, "encoder.ln", x).shape == (3, 64, 17)


def test_the_vit_trains_with_its_own_recipe_and_the_others_with_the_sizes():
    assert training_config("vit", QUICK, 3) == TrainingConfig(epochs=60, batch_size=32, lr=1e-3, seed=3,
                                                              weight_decay=0.05, warmup=0.1, label_smoothing=0.1,
                                                              shift=2)
    assert training_config("cnn", QUICK, 3) == training_config("resnet", QUICK, 3) == TrainingConfig(
        epochs=5, batch_size=32, lr=2e-3, seed=3)


def test_the_cache_key_covers_the_vits_recipe(tmp_path, monkeypatch):
    vit, cnn = (Case("patch_fixed", 0.3, a, 0, "dev") for a in ("vit", "cnn"))
    before = [case_directory(tmp_path, c, QUICK, "mnist") for c in (vit, cnn)]
    monkeypatch.setitem(RECIPES, "vit", replace(RECIPES["vit"], epochs=61))
    after = [case_directory(tmp_path, c, QUICK, "mnist") for c in (vit, cnn)]
    assert after[0] != before[0] and after[1] == before[1]
