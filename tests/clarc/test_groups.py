"""Inferred groups: ids and names, the stratified split, worst-group accuracy with counterfactual groups."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from spray.clarc.groups import group_accuracies, infer_groups, worst_group_accuracy


def test_groups_are_the_cluster_the_rest_of_its_class_and_one_per_other_class():
    labels = np.array([2, 0, 2, 1, 2, 0, 2])
    inferred = infer_groups(labels, 2, np.array([0, 6]))
    assert inferred.groups.tolist() == [0, 2, 1, 3, 1, 2, 0]
    assert inferred.names == ("2:cluster", "2:rest", "0", "1")
    assert inferred.sizes.tolist() == [2, 2, 2, 1]
    assert inferred.describe() == "2:cluster 2, 2:rest 2, 0 2, 1 1"
    assert inferred.n_counterfactual == 6
    assert inferred.classes.tolist() == [0, 1, 2]


def test_split_holds_out_a_share_of_every_group_and_keeps_one_to_fit():
    labels = np.repeat([0, 1, 2], [10, 20, 3])
    inferred = infer_groups(labels, 1, np.arange(10, 14))
    fit, val = inferred.split(0.3, seed=0)
    assert np.bincount(inferred.groups[val]).tolist() == [1, 5, 3, 1]  # 30 % of 4, 16, 10, 3
    assert sorted(np.concatenate([fit, val]).tolist()) == list(range(33))
    assert np.array_equal(val, inferred.split(0.3, seed=0)[1])
    assert not np.array_equal(val, inferred.split(0.3, seed=1)[1])


def test_group_accuracies_are_per_group_and_nan_where_empty():
    acc = group_accuracies(np.array([1, 0, 1, 1]), np.array([1, 1, 1, 0]), np.array([0, 0, 2, 2]), 4)
    assert acc[0] == 0.5 and np.isnan(acc[1]) and acc[2] == 0.5 and np.isnan(acc[3])


def test_worst_group_accuracy_counts_the_counterfactual_groups():
    # The model predicts class 1 exactly when the first input is positive: a shortcut on x[0].
    model = nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0]]))
        model.bias.zero_()
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [-1.0, 0.0]])
    y = torch.tensor([1, 1, 0, 0])
    data = TensorDataset(x, y)
    inferred = infer_groups(y.numpy(), 1, np.array([0]))
    every = np.arange(4)
    assert worst_group_accuracy(model, data, every, inferred) == 1.0
    add_shortcut = lambda batch: batch + torch.tensor([2.0, 0.0])  # noqa: E731
    assert worst_group_accuracy(model, data, every, inferred, add_shortcut) == 0.0
