"""Normalised cuts in the locally scaled kNN affinity: definitions, exact zeros, and the choice they drive."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from spray.analysis import (KNNGraph, best_cluster, candidate_cuts, local_scaling_affinity, most_separable,
                            normalized_cuts, separabilities)
from spray.analysis.cut import SCALE_NEIGHBOR
from spray.errors import BadInputError


def _style_and_artifact(seed=0):
    """A class in miniature: a bulk, a large 'style' group joined to it by a bridge of intermediate samples,
    and a small tight 'artifact' group off to the side with no bridge."""
    rng = np.random.default_rng(seed)
    bulk = rng.normal(size=(200, 2))
    bridge = np.c_[np.linspace(1.5, 4, 25), rng.normal(scale=0.3, size=25)]
    style = rng.normal(size=(80, 2)) * 0.6 + [5, 0]
    artifact = rng.normal(size=(30, 2)) * 0.3 + [0, 4.5]
    X = np.vstack([bulk, bridge, style, artifact])
    labels = {"style": np.r_[np.zeros(225, int), np.ones(80, int), np.zeros(30, int)],
              "artifact": np.r_[np.zeros(305, int), np.ones(30, int)]}
    return X, labels


def test_affinity_is_symmetric_with_self_tuning_weights_on_the_knn_edges():
    X, _ = _style_and_artifact()
    graph = KNNGraph(n_neighbors=10).fit(X)
    W = local_scaling_affinity(graph.indices_, graph.distances_)
    assert abs(W - W.T).max() == 0 and W.diagonal().max() == 0
    sigma = graph.distances_[:, SCALE_NEIGHBOR - 1]
    for i in (0, 100, 300):
        for j, d in zip(graph.indices_[i], graph.distances_[i]):
            assert W[i, j] == pytest.approx(math.exp(-d**2 / (sigma[i] * sigma[j])), rel=1e-12)
    # Edges are those of the kNN graph in either direction, nothing else.
    assert (W != 0).toarray().tolist() == (graph.adjacency_ != 0).toarray().tolist()


def test_fewer_neighbours_than_the_scale_neighbour_use_the_last_one_and_duplicates_get_a_positive_scale():
    indices = np.array([[1, 2], [0, 2], [0, 1], [0, 1]])
    distances = np.array([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [2.0, 2.0]])  # 0, 1, 2 coincide; 3 is off
    W = local_scaling_affinity(indices, distances).toarray()
    assert W[0, 1] == W[1, 2] == 1.0
    assert W[3, 0] == pytest.approx(math.exp(-4.0 / (2.0 * 2.0)))  # σ of 0 is the smallest positive σ, 2


def test_ncut_matches_its_definition_on_a_hand_made_graph():
    # Two triangles joined by one edge of weight 0.5; noise (−1) belongs to the rest of every cluster.
    W = sp.csr_matrix(np.array([
        [0, 1, 1, 0, 0, 0],
        [1, 0, 1, 0, 0, 0],
        [1, 1, 0, 0.5, 0, 0],
        [0, 0, 0.5, 0, 1, 1],
        [0, 0, 0, 1, 0, 1],
        [0, 0, 0, 1, 1, 0],
    ]))
    cuts = normalized_cuts(W, np.array([0, 0, 0, 1, 1, -1]))
    assert set(cuts) == {0, 1}
    assert cuts[0] == pytest.approx(0.5 / 6.5 + 0.5 / 6.5)
    # Cluster 1 = {3, 4}: cut = 0.5 (to 2) + 1 (3–5) + 1 (4–5), vol = 2.5 + 2, rest = 13 − 4.5.
    assert cuts[1] == pytest.approx(2.5 / 4.5 + 2.5 / 8.5)


def test_a_disconnected_cluster_has_a_cut_of_exactly_zero_and_a_cluster_of_everything_none():
    W = sp.block_diag([np.ones((3, 3)) - np.eye(3), np.ones((4, 4)) - np.eye(4)], format="csr")
    assert normalized_cuts(W * 0.1, np.array([0, 0, 0, 1, 1, 1, 1])) == {0: 0.0, 1: 0.0}
    assert math.isnan(normalized_cuts(W, np.zeros(7, dtype=int))[0])


def test_the_cut_prefers_the_cut_off_group_to_a_larger_z_score_of_a_bridged_one():
    X, labels = _style_and_artifact()
    graph = KNNGraph(n_neighbors=10).fit(X)
    W = local_scaling_affinity(graph.indices_, graph.distances_)
    by_z = best_cluster(X, labels, n_permutations=0)
    by_cut = best_cluster(X, labels, n_permutations=0, affinity=W)
    cuts = {name: normalized_cuts(W, lab)[1] for name, lab in labels.items()}
    print(f"z: {by_z[2]['z_score']:.0f} (style) vs {by_cut[2]['z_score']:.0f} (artifact); cuts {cuts}")
    assert by_z[:2] == ("style", 1) and by_z[2]["ncut"] is None
    assert by_cut[:2] == ("artifact", 1) and by_cut[2]["ncut"] == cuts["artifact"]
    assert by_z[2]["z_score"] > by_cut[2]["z_score"] and cuts["artifact"] < cuts["style"] / 10


def test_equal_cuts_are_decided_by_the_z_score():
    X, labels = _style_and_artifact()
    no_edges = sp.csr_matrix((X.shape[0], X.shape[0]))  # every cut NaN: nothing to compare, z decides
    assert best_cluster(X, labels, n_permutations=0, affinity=no_edges)[:2] == ("style", 1)


def test_an_affinity_of_the_wrong_shape_is_refused_by_name():
    X, labels = _style_and_artifact()
    with pytest.raises(BadInputError, match=r"affinity must be a sparse \(335, 335\) matrix, got ndarray"):
        best_cluster(X, labels, affinity=np.eye(3))


def _bulk_and_small_group():
    """60 samples of a bulk and a tight group of 8 beside it: with 10 neighbours each of the 8 reaches into
    the bulk, with 5 none does."""
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(size=(60, 2)), rng.normal(size=(8, 2)) * 0.3 + [3.5, 0.0]])
    labels = {"group": np.r_[np.zeros(60, int), np.ones(8, int)], "halves": (X[:, 1] > 0).astype(int)}
    return X, KNNGraph(n_neighbors=10).fit(X), labels


def test_small_clusters_are_cut_in_the_graph_of_fewer_neighbours_and_larger_ones_as_before():
    _, graph, labels = _bulk_and_small_group()
    W = local_scaling_affinity(graph.indices_, graph.distances_)
    full = {name: normalized_cuts(W, lab) for name, lab in labels.items()}
    assert candidate_cuts(graph.indices_, graph.distances_, labels) == full
    small = candidate_cuts(graph.indices_, graph.distances_, labels, small_neighbors=5)
    W5 = local_scaling_affinity(graph.indices_[:, :5], graph.distances_[:, :5])
    # The group of 8 (at most k = 10) cannot be disconnected with 10 neighbours; with its first 5 it is.
    assert full["group"][1] > 0.01 and small["group"][1] == normalized_cuts(W5, labels["group"])[1] == 0.0
    # The 60 of the bulk and both halves (more than 10 each) keep the 10-neighbour cut.
    assert np.bincount(labels["halves"]).min() > 10
    assert small["group"][0] == full["group"][0] and small["halves"] == full["halves"]


def test_a_small_graph_as_large_as_the_knn_graph_changes_no_cut_and_a_count_below_one_is_refused():
    _, graph, labels = _bulk_and_small_group()
    full = candidate_cuts(graph.indices_, graph.distances_, labels)
    assert candidate_cuts(graph.indices_, graph.distances_, labels, small_neighbors=10) == full
    assert candidate_cuts(graph.indices_, graph.distances_, labels, small_neighbors=12) == full
    with pytest.raises(BadInputError, match=r"^small_neighbors must be >= 1, got 0$"):
        candidate_cuts(graph.indices_, graph.distances_, labels, small_neighbors=0)


def test_best_cluster_on_the_knn_graph_cuts_as_the_fda_node_small_clusters_in_five_neighbours():
    X, graph, labels = _bulk_and_small_group()
    knn = (graph.indices_, graph.distances_)
    chosen = best_cluster(X, labels, n_permutations=0, knn=knn)
    node = most_separable(separabilities(X, labels, n_permutations=0), cuts=candidate_cuts(*knn, labels, 5))
    np.testing.assert_equal(chosen, node)  # the same cluster and statistics (NaN p-values: no permutations)
    assert chosen[:2] == ("group", 1) and chosen[2]["ncut"] == 0.0
    # small_neighbors=None: every cluster in the 10-neighbour graph, as the whole affinity cuts it.
    W = local_scaling_affinity(*knn)
    every = best_cluster(X, labels, n_permutations=0, knn=knn, small_neighbors=None)
    np.testing.assert_equal(every, best_cluster(X, labels, n_permutations=0, affinity=W))
    assert every[2]["ncut"] == normalized_cuts(W, labels[every[0]])[every[1]] > 0.01


def test_best_cluster_refuses_two_graphs_and_a_knn_graph_of_other_samples():
    X, graph, labels = _bulk_and_small_group()
    knn = (graph.indices_, graph.distances_)
    W = local_scaling_affinity(*knn)
    with pytest.raises(BadInputError, match=r"^best_cluster: give the cuts' graph as affinity or as knn, not both$"):
        best_cluster(X, labels, affinity=W, knn=knn)
    with pytest.raises(BadInputError, match=r"^knn must be \(indices, distances\), each of shape \(68, k\), "
                                            r"got \(67, 10\) and \(68, 10\)$"):
        best_cluster(X, labels, knn=(graph.indices_[1:], graph.distances_))
