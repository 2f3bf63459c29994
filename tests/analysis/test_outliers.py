"""kNN-distance outlier groups: a small group far from the bulk of its class is found from the kNN graph."""

from __future__ import annotations

import numpy as np
import pytest

from spray.analysis import KNNGraph, KNNOutlierGroups, robust_z
from spray.errors import BadInputError


def _far_group(seed: int, n_rest: int = 190, n_group: int = 10, d: int = 8):
    """A Gaussian class and a group of ``n_group`` samples as spread as it, 8 standard deviations away."""
    rng = np.random.default_rng(seed)
    shift = np.zeros(d)
    shift[0] = 8.0
    X = np.concatenate([rng.normal(size=(n_rest, d)), rng.normal(size=(n_group, d)) + shift])
    return KNNGraph(10).fit(X), np.arange(n_rest, n_rest + n_group)


@pytest.mark.parametrize("seed", range(5))
def test_a_group_too_small_for_its_own_neighbourhood_is_found_exactly(seed):
    # 10 members with k = 10: each member's 10th neighbour lies outside the group, far away.
    graph, group = _far_group(seed)
    fitted = KNNOutlierGroups(thresholds=[3.0]).fit(graph.indices_, graph.distances_)
    labels = fitted.named_labels()["outliers_3"]
    assert np.array_equal(np.flatnonzero(labels >= 0), group) and set(labels[group]) == {0}
    assert fitted.skipped_ == {} and labels.dtype == np.int64
    assert fitted.scores_[group].min() > 3.0


def test_one_labelling_per_threshold_named_by_it_and_a_lower_threshold_keeps_more_samples():
    graph, _ = _far_group(0)
    fitted = KNNOutlierGroups(thresholds=[3.0, 1.5]).fit(graph.indices_, graph.distances_)
    named = fitted.named_labels()
    assert list(named) == ["outliers_1.5", "outliers_3"]
    assert np.sum(named["outliers_1.5"] >= 0) > np.sum(named["outliers_3"] >= 0) == 10


def test_groups_smaller_than_min_group_size_are_noise_and_groups_are_numbered_by_first_member():
    # Two far groups of 3 (rows 0-2 and 10-12) and a far pair (rows 20-21), each nearer the bulk than the others.
    rng = np.random.default_rng(1)
    X = rng.normal(size=(120, 4))
    for rows, axis, offset in ((slice(10, 13), 0, 30.0), (slice(0, 3), 0, -30.0), (slice(20, 22), 1, 30.0)):
        X[rows] = rng.normal(size=(X[rows].shape[0], 4)) * 0.1
        X[rows, axis] += offset
    graph = KNNGraph(5).fit(X)
    fitted = KNNOutlierGroups(thresholds=[10.0], min_group_size=3).fit(graph.indices_, graph.distances_)
    labels = fitted.labels_[10.0]
    assert labels[:3].tolist() == [0, 0, 0] and labels[10:13].tolist() == [1, 1, 1]
    assert np.all(np.delete(labels, [0, 1, 2, 10, 11, 12]) == -1) and fitted.scores_[20:22].min() > 10.0


def test_a_class_without_outliers_is_all_noise():
    X = np.arange(40, dtype=np.float64)[:, None]  # evenly spaced: every 4th-neighbour distance but the ends' is 2
    graph = KNNGraph(4).fit(X)
    labels = KNNOutlierGroups(thresholds=[50.0]).fit(graph.indices_, graph.distances_).labels_[50.0]
    assert np.all(labels == -1)


def test_robust_z_falls_back_to_the_mean_deviation_when_most_values_tie_and_is_zero_without_spread():
    values = np.array([1.0, 1.0, 1.0, 1.0, 5.0])
    assert np.allclose(robust_z(values), (values - 1.0) / (1.2533 * 0.8))
    assert np.array_equal(robust_z(np.full(6, 2.5)), np.zeros(6))
    assert np.allclose(robust_z(np.array([1.0, 2.0, 3.0, 10.0])), (np.array([1.0, 2.0, 3.0, 10.0]) - 2.5) / 1.4826)


@pytest.mark.parametrize(
    ("params", "fit", "message"),
    [
        ({"thresholds": []}, None, "thresholds must be a non-empty list of numbers, got \\[\\]"),
        ({"thresholds": 2.0}, None, "thresholds must be a non-empty list of numbers, got 2.0"),
        ({"thresholds": [-1.0]}, None, "thresholds"),
        ({"min_group_size": 0}, None, "min_group_size"),
        ({"neighbor": 11}, None, "neighbor=11 exceeds the 10 stored neighbours; lower neighbor"),
        ({}, "shape", "distances must have the shape of indices \\(200, 10\\), got \\(200, 9\\)"),
        ({}, "range", "indices must be row numbers in \\[0, 200\\), got values in \\[0, 200\\]"),
    ],
)
def test_bad_parameters_and_inputs_are_named(params, fit, message):
    graph, _ = _far_group(0)
    indices, distances = graph.indices_.copy(), graph.distances_
    if fit == "shape":
        distances = distances[:, 1:]
    if fit == "range":
        indices[0, 0] = 200
    with pytest.raises(BadInputError, match=message):
        KNNOutlierGroups(**params).fit(indices, distances)
