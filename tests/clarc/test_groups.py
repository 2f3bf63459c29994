"""Inferred groups: ids and names, the stratified split, the worst group with counterfactual groups."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from spray.clarc.groups import (WorstGroup, group_accuracies, group_tallies, infer_groups, worst_group,
                                worst_group_accuracy)


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
    correct, count = group_tallies(np.array([1, 0, 1, 1]), np.array([1, 1, 1, 0]), np.array([0, 0, 2, 2]), 4)
    assert correct.tolist() == [1, 0, 1, 0] and count.tolist() == [2, 0, 2, 0]


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


class Shifted:
    """A counterfactual transformation of a kind, as spray.clarc.transform's carry one."""

    kind = "local"

    def __call__(self, batch):
        return batch + torch.tensor([2.0, 0.0])


def test_the_worst_group_is_named_with_its_samples_right_and_its_size():
    # the shortcut model of the test above, on 3 samples of class 1 (one of them the cluster) and 4 of class 0
    model = nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0]]))
        model.bias.zero_()
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [-1.0, 0.0], [-1.0, 0.0], [-3.0, 0.0], [-1.0, 0.0]])
    y = torch.tensor([1, 1, 1, 0, 0, 0, 0])
    data = TensorDataset(x, y)
    inferred = infer_groups(y.numpy(), 1, np.array([0]))
    every = np.arange(7)
    # without the shortcut, the rest of class 1 has one sample of 2 wrong (x[0] = -1): the worst of the groups
    assert worst_group(model, data, every, inferred) == WorstGroup("1:rest", 1, 2)
    # with it pasted into class 0, 3 of its 4 samples flip to class 1 (x[0] = -3 + 2 stays negative)
    found = worst_group(model, data, every, inferred, Shifted())
    assert found == WorstGroup("0+local", 1, 4) and found.accuracy == 0.25
    assert str(found) == "0.250 (1/4 of 0+local)"
    assert found.to_dict() == {"worst_group": 0.25, "worst_group_name": "0+local", "worst_group_correct": 1,
                               "worst_group_size": 4}
    assert worst_group_accuracy(model, data, every, inferred, Shifted()) == 0.25
