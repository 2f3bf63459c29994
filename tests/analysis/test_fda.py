"""FisherSeparability and best_cluster: definitions, invariances, permutation null calibration, speed."""

from __future__ import annotations

import time

import numpy as np
import pytest
import scipy.linalg

from spray.analysis.clustering import KMeansRange
from spray.analysis.fda import FisherSeparability, best_cluster
from spray.analysis.knn import KNNGraph
from spray.analysis.spectral import SpectralEmbedding
from spray.errors import BadInputError


def _planted(n=600, d=8, n_small=40, shift=3.0, seed=0):
    rng = np.random.default_rng(seed)
    E = rng.normal(size=(n, d))
    E[:n_small, 0] += shift
    labels = np.zeros(n, dtype=int)
    labels[:n_small] = 1
    return E, labels


def _direct_scores(E, labels, reg=1e-6):
    """J and τ_q straight from the scatter-matrix definitions (docs/spray-method.md)."""
    n, d = E.shape
    Ec = E - E.mean(axis=0)
    r = reg * np.trace(Ec.T @ Ec) / d + 1e-12
    mu = E.mean(axis=0)
    S_W, S_B = np.zeros((d, d)), np.zeros((d, d))
    for q in np.unique(labels):
        X = E[labels == q]
        S_W += (X - X.mean(0)).T @ (X - X.mean(0))
        S_B += len(X) * np.outer(X.mean(0) - mu, X.mean(0) - mu)
    J = scipy.linalg.eigh(S_B, S_W + r * np.eye(d), eigvals_only=True)[-1]
    tau = {}
    for q in np.unique(labels):
        A, B = E[labels == q], E[labels != q]
        delta = A.mean(0) - B.mean(0)
        S_W2 = (A - A.mean(0)).T @ (A - A.mean(0)) + (B - B.mean(0)).T @ (B - B.mean(0))
        tau[int(q)] = len(A) * len(B) / n * delta @ np.linalg.solve(S_W2 + r * np.eye(d), delta)
    return J, tau


def test_scores_match_the_scatter_matrix_definitions():
    rng = np.random.default_rng(1)
    E = rng.normal(size=(300, 6))
    labels = rng.integers(0, 4, 300)
    E[labels == 2] += 0.5
    fs = FisherSeparability(n_permutations=10).fit(E, labels)
    J, tau = _direct_scores(E, labels)
    assert fs.score_ == pytest.approx(J, rel=1e-8)
    assert fs.cluster_scores_ == pytest.approx(tau, rel=1e-8)
    assert fs.cluster_sizes_ == {q: int(np.sum(labels == q)) for q in range(4)}


def test_separable_labels_score_higher_than_random_labels():
    E, labels = _planted()
    random_labels = np.random.default_rng(2).permutation(labels)
    assert FisherSeparability(10).fit(E, labels).score_ > 10 * FisherSeparability(10).fit(E, random_labels).score_


def test_scores_are_invariant_to_renaming_the_clusters():
    rng = np.random.default_rng(3)
    E, labels = rng.normal(size=(200, 5)), rng.integers(0, 3, 200)
    renamed = np.array([7, 2, 5])[labels]
    a, b = FisherSeparability(50).fit(E, labels), FisherSeparability(50).fit(E, renamed)
    assert a.score_ == pytest.approx(b.score_)
    assert a.z_score_ == pytest.approx(b.z_score_)
    for old, new in zip(range(3), [7, 2, 5]):
        assert a.cluster_scores_[old] == pytest.approx(b.cluster_scores_[new])
        assert a.cluster_z_scores_[old] == pytest.approx(b.cluster_z_scores_[new])


def test_planted_cluster_has_a_large_z_score_and_minimal_p_value():
    E, labels = _planted()
    fs = FisherSeparability(n_permutations=100, random_state=0).fit(E, labels)
    assert fs.z_score_ > 5 and fs.cluster_z_scores_[1] > 5
    assert fs.p_value_ == pytest.approx(1 / 101) and fs.cluster_p_values_[1] == pytest.approx(1 / 101)
    assert fs.null_scores_.shape == (100,) and fs.null_mean_ < fs.score_


def test_random_labels_give_roughly_standard_normal_z_scores():
    rng = np.random.default_rng(4)
    E = rng.normal(size=(400, 6))
    z, zc, p = [], [], []
    for seed in range(40):
        labels = rng.integers(0, 3, 400)
        fs = FisherSeparability(n_permutations=100, random_state=seed).fit(E, labels)
        z.append(fs.z_score_)
        zc.append(fs.cluster_z_scores_[0])
        p.append(fs.p_value_)
    for values in (z, zc):
        assert abs(np.mean(values)) < 0.5 and 0.6 < np.std(values) < 1.5
    assert 0.3 < np.mean(p) < 0.7


def test_noise_is_excluded_from_the_clustering_score_but_is_part_of_the_rest():
    rng = np.random.default_rng(5)
    E, labels = rng.normal(size=(300, 4)), rng.integers(-1, 3, 300)
    fs = FisherSeparability(5).fit(E, labels)
    keep = labels >= 0
    assert fs.score_ == pytest.approx(_direct_scores(E[keep], labels[keep])[0], rel=1e-8)
    assert fs.cluster_ids_ == [0, 1, 2] and fs.n_noise_ == int(np.sum(~keep))
    assert fs.cluster_scores_ == pytest.approx({q: v for q, v in _direct_scores(E, labels)[1].items() if q >= 0})


def test_a_single_cluster_scores_zero_with_a_note():
    E = np.random.default_rng(6).normal(size=(50, 3))
    fs = FisherSeparability(20).fit(E, np.zeros(50, dtype=int))
    assert fs.score_ == 0 and fs.z_score_ == 0 and fs.p_value_ == 1
    assert fs.cluster_scores_ == {0: 0.0} and fs.notes_


def test_hundred_permutations_on_ten_thousand_samples_are_fast():
    rng = np.random.default_rng(7)
    E, labels = rng.normal(size=(10_000, 32)), rng.integers(0, 30, 10_000)
    FisherSeparability(5).fit(E[:100], labels[:100])  # warm-up
    start = time.perf_counter()
    FisherSeparability(n_permutations=100).fit(E, labels)
    assert time.perf_counter() - start < 2.0


def test_best_cluster_finds_the_small_planted_cluster():
    # The SpRAy setting: a class of 800 whose 50 planted samples sit apart, through kNN graph, spectral
    # embedding and k-means. Every k-means cut beats random subsets, so the rule has to prefer the planted one.
    rng = np.random.default_rng(8)
    X = rng.normal(size=(800, 16))
    X[:50, 0] += 6.0
    truth = np.arange(800) < 50
    E = SpectralEmbedding(16, random_state=0).fit(KNNGraph(10).fit(X).adjacency_).embedding_
    clusterings = KMeansRange(2, 6, random_state=0).fit(E).named_labels()
    clusterings["random"] = rng.integers(0, 4, 800)
    name, cid, stats = best_cluster(E, clusterings, n_permutations=50)
    members = clusterings[name] == cid
    assert np.sum(members & truth) / np.sum(members | truth) >= 0.9
    assert stats["size"] <= 400 and stats["z_score"] > 5
    assert {"tau", "p_value", "clustering_score", "n_candidates"} <= set(stats)


def test_best_cluster_without_candidates_returns_none_with_reason():
    E = np.random.default_rng(9).normal(size=(20, 3))
    name, cid, stats = best_cluster(E, {"all": np.zeros(20, dtype=int)})
    assert name is None and cid is None and "no cluster" in stats["reason"]


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda E: FisherSeparability(-1).fit(E, np.zeros(10, int)), "n_permutations"),
        (lambda E: FisherSeparability(regularization=-1.0).fit(E, np.zeros(10, int)), "regularization"),
        (lambda E: FisherSeparability().fit(E, np.zeros(9, int)), r"labels must have shape \(10,\)"),
        (lambda E: FisherSeparability().fit(E, np.full(10, -2)), "labels must be >= -1"),
        (lambda E: best_cluster(E, {}), "clusterings"),
        (lambda E: best_cluster(E, {"x": np.zeros(3, int)}), r"clusterings\['x'\]"),
        (lambda E: best_cluster(E, {"x": np.zeros(10, int)}, max_fraction=0), "max_fraction"),
    ],
)
def test_bad_inputs_are_named(call, match):
    with pytest.raises(BadInputError, match=match):
        call(np.random.default_rng(0).normal(size=(10, 2)))
