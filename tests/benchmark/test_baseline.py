"""The baselines without attribution name the groups their definitions say, and order the classes by them."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from spray.benchmark.baseline import BASELINES, error_slice_baseline, knn_outlier_baseline, penultimate_layer


def _identity_model(weight: np.ndarray) -> nn.Module:
    """The features are the inputs themselves (the Identity feeds the last linear layer)."""
    model = nn.Sequential(nn.Identity(), nn.Linear(weight.shape[1], weight.shape[0], bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.from_numpy(weight))
    return model


def test_knn_outliers_are_the_samples_far_from_their_class():
    lattice = np.stack(np.meshgrid(np.arange(6), np.arange(6)), -1).reshape(-1, 2) * 0.01  # even kNN distances
    x = np.concatenate([np.c_[np.ones(36), lattice], [[0, 1, 0], [0, 0, 1]],  # class 0: a lattice and two far
                        np.c_[lattice[:, 0], np.ones(36), lattice[:, 1]]]).astype(np.float32)  # class 1: a lattice
    y = np.array([0] * 38 + [1] * 36)
    found = knn_outlier_baseline(_identity_model(np.eye(2, 3, dtype=np.float32)), x, y)
    assert [(c.label, c.members.tolist()) for c in found] == [(0, [36, 37])]  # class 1 has no outlier


def test_the_error_slice_is_the_misclassified_and_low_margin_samples_and_the_worst_class_comes_first():
    # logits = x (identity weights): softmax margins follow the inputs directly
    x = np.array([[5, 0], [0.1, 0], [0, 5], [-1, 0],  # class 0: sure, low margin, wrong, wrong
                  [0, 5], [0, 5], [0, 0.5], [0, 5]], np.float32)  # class 1: one low margin
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    found = error_slice_baseline(_identity_model(np.eye(2, dtype=np.float32)), x, y)
    assert [(c.label, c.members.tolist()) for c in found] == [(0, [1, 2, 3]), (1, [6])]


def test_every_baseline_reads_the_penultimate_layer_of_the_benchmarks_cnn():
    from spray.benchmark.models import build

    assert penultimate_layer(build("cnn", 0)) == "classifier.0" and list(BASELINES) == [
        "activation", "knn_outlier", "error_slice"]


def test_the_activation_baseline_cuts_a_group_of_at_most_ten_in_five_neighbours_as_spray_does():
    # class 0: 120 samples spread around one direction and a tight group of 8 around another; class 1: one blob
    rng = np.random.default_rng(0)
    spread = np.c_[np.ones(120), rng.normal(0, 0.3, (120, 2))]
    group = np.c_[rng.normal(0, 0.01, 8), np.ones(8), rng.normal(0, 0.01, 8)]
    other = np.c_[rng.normal(0, 0.3, (60, 2)), np.ones(60)]
    x = np.concatenate([spread, group, other]).astype(np.float32)
    y = np.array([0] * 128 + [1] * 60)
    found = {c.label: c for c in BASELINES["activation"](_identity_model(np.eye(2, 3, dtype=np.float32)), x, y)}
    # each of the 8 has 7 others in the group: in 10 neighbours it keeps 3 edges to the rest, in 5 none
    assert found[0].members.tolist() == list(range(120, 128)) and found[0].key[0] == 0.0
    assert found[1].key[0] > 0.0
