"""Layer choice: the candidates are the feature maps up to the default layer; the chosen one separates the
cluster within the tolerance of the best and concentrates the CAV's relevance on it most."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from spray.benchmark.models import cnn
from spray.clarc.activations import activations, candidate_layers, first_layer, pool
from spray.clarc.cav import CAV
from spray.clarc.layer_choice import AUC_TOLERANCE, MIN_KEPT, LayerFigures, choose_layer, layer_figures, pick_layer
from spray.clarc.projective import project_model
from spray.lrp import EpsilonPlusFlat

STAMPED = np.arange(1, 24, 2)  # tiny_dataset's 12 stamped samples of class 1
REST = np.arange(25, 80, 2)
CLEAN = np.arange(0, 80, 2)  # class 0


class Block(nn.Module):
    """A residual block: the block is a candidate, its insides are not (but for the default layer)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.conv(x) + x)


def blocks_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict(
        stem=nn.Conv2d(1, 4, 3, padding=1), act=nn.ReLU(),
        layer1=nn.Sequential(Block(4), Block(4)), layer2=nn.Sequential(Block(4), Block(4)),
        pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(), head=nn.Linear(4, 2),
    )).eval()


def test_candidates_of_a_sequential_cnn_are_its_activations_up_to_the_default_layer():
    assert candidate_layers(cnn(), torch.zeros(2, 1, 28, 28)) == ["features.2", "features.6", "features.10"]


def test_candidates_of_a_block_model_are_its_blocks_the_last_ones_up_to_the_limit():
    model, x = blocks_model(), torch.zeros(2, 1, 8, 8)
    # the default layer is the innermost module with the last block's output: its ReLU
    assert candidate_layers(model, x) == ["layer1.0", "layer1.1", "layer2.0", "layer2.1.relu"]
    assert candidate_layers(model, x, limit=6) == ["act", "layer1.0", "layer1.1", "layer2.0", "layer2.1.relu"]
    assert candidate_layers(model, x, limit=1) == ["layer2.1.relu"]


def test_the_first_layer_is_the_first_feature_map_of_the_forward_pass():
    assert first_layer(cnn(), torch.zeros(2, 1, 28, 28)) == "features.2"  # the first block's ReLU
    model = blocks_model()
    assert first_layer(model, torch.zeros(2, 1, 8, 8)) == "act"  # the stem's ReLU, before any block
    model.FEATURE_LAYER = "layer1.1"
    assert first_layer(model, torch.zeros(2, 1, 8, 8)) == "layer1.1"  # its author chose the one layer


def test_a_declared_feature_layer_is_the_only_candidate():
    model = blocks_model()
    model.FEATURE_LAYER = "layer1.1"
    assert candidate_layers(model, torch.zeros(2, 1, 8, 8)) == ["layer1.1"]


def figures(*rows: tuple[str, float, float, float]) -> list[LayerFigures]:
    return [LayerFigures(layer, 8, auc, concentration, kept) for layer, auc, concentration, kept in rows]


def test_pick_takes_the_most_concentrated_of_the_layers_within_the_auc_tolerance():
    choice = pick_layer(figures(("a", 0.992, 0.90, 1.0), ("b", 0.985, 0.70, 1.0), ("c", 0.995, 0.60, 0.97)))
    assert choice.layer == "a"
    assert choice.reason == ("3 of 3 candidates keep at least 95% of clean predictions; out-of-fold CAV AUC 0.992 "
                             "(best of them 0.995, tolerance 0.005); highest concentration on the cluster among "
                             "the 2 that separate it as well: 0.900")
    assert [c["layer"] for c in choice.to_dict()["candidates"]] == ["a", "b", "c"]
    assert choice.to_dict()["candidates"][2] == {"layer": "c", "channels": 8, "auc": 0.995, "concentration": 0.60,
                                                 "kept": 0.97}


def test_pick_never_takes_a_concentrated_layer_that_separates_worse():
    choice = pick_layer(figures(("a", 0.99 - AUC_TOLERANCE - 0.001, 0.99, 1.0), ("b", 0.99, 0.51, 1.0)))
    assert choice.layer == "b"


def test_pick_passes_over_a_layer_whose_projection_changes_clean_predictions():
    choice = pick_layer(figures(("a", 0.99, 0.9, MIN_KEPT - 0.01), ("b", 0.90, 0.5, MIN_KEPT)))
    assert choice.layer == "b"
    assert choice.reason.startswith("1 of 2 candidates keep at least 95% of clean predictions; ")
    none = pick_layer(figures(("a", 0.99, 0.9, 0.5), ("b", 0.90, 0.5, 0.6), ("c", 0.95, 0.5, 0.55)))
    assert none.layer == "b"
    assert none.reason.startswith("no candidate keeps 95% of clean predictions; the one that keeps most (60.0%); ")


def test_pick_breaks_ties_towards_the_later_layer():
    assert pick_layer(figures(("a", 0.9, 0.6, 1.0), ("b", 0.9, 0.6, 1.0))).layer == "b"
    only = pick_layer(figures(("a", 0.9, 0.6, 0.5)))
    assert only.reason == ("the only candidate (out-of-fold CAV AUC 0.900, concentration 0.600, keeps 50.0% of "
                           "clean predictions)")


def rest_of(x: torch.Tensor) -> TensorDataset:
    """The rest of the stamped samples' class as the layer choice reads it: a dataset."""
    return TensorDataset(x[REST], torch.ones(len(REST), dtype=torch.long))


def test_layer_figures_are_the_cavs_out_of_fold_auc_and_the_relevance_share_of_the_cluster(new_model, tiny_dataset):
    model, x, stamped, rest = new_model(), tiny_dataset.tensors[0], STAMPED, REST
    found = layer_figures(model, "features.3", x[stamped], rest_of(x), x[CLEAN], EpsilonPlusFlat())
    cav = CAV().fit(pool(activations(model, "features.3", x[stamped])).numpy(),
                    pool(activations(model, "features.3", x[rest])).numpy())
    assert found.layer == "features.3" and found.channels == 6
    assert found.auc == cav.auc_
    assert 0.0 <= found.concentration <= 1.0
    a_rest = activations(model, "features.3", x[rest])
    projected = project_model(model, "features.3", torch.from_numpy(cav.direction_), a_rest.mean(0))
    same = (projected(x[CLEAN]).argmax(1) == model(x[CLEAN]).argmax(1)).float().mean()
    assert found.kept == pytest.approx(float(same))
    choice = choose_layer(model, x[stamped], rest_of(x), x[CLEAN], EpsilonPlusFlat())
    assert [c.layer for c in choice.candidates] == ["features.1", "features.3"]
    assert choice.candidates[1] == found
    assert choice.layer == pick_layer(list(choice.candidates)).layer


@pytest.mark.parametrize("cav", ["signal", "subspace"])
def test_choose_layer_fits_the_runs_cav_method(cav, new_model, tiny_dataset):
    model, x, stamped, rest = new_model(), tiny_dataset.tensors[0], STAMPED, REST
    choice = choose_layer(model, x[stamped], rest_of(x), x[CLEAN], EpsilonPlusFlat(), cav=cav)
    a = [pool(activations(model, choice.layer, x[i])).numpy() for i in (stamped, rest)]
    assert choice.candidates[[c.layer for c in choice.candidates].index(choice.layer)].auc == CAV(cav).fit(*a).auc_
