"""FisherSeparability and best_cluster: definitions, invariances, exact and permutation nulls, speed."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import scipy.linalg

from spray.analysis.clustering import KMeansRange
from spray.analysis.fda import (
    FisherSeparability,
    _subset_moments,
    _whiten,
    best_cluster,
    most_separable,
    separabilities,
    separation,
)
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


def _subset_s(Z, subsets):
    """s = n‖Σ_{i∈q} z_i‖² / (m(n − m)) for each row of ``subsets`` (b, m) of row indices."""
    n, m = Z.shape[0], subsets.shape[1]
    sums = Z[subsets].sum(axis=1)
    return n * np.einsum("bd,bd->b", sums, sums) / (m * (n - m))


@pytest.mark.parametrize(("n", "d"), [(2, 1), (3, 2), (4, 3), (9, 3), (11, 5)])
def test_subset_moments_equal_the_mean_and_variance_over_every_subset(n, d):
    Z = np.random.default_rng(n).standard_t(3, size=(n, d))  # heavy tails: the Σ‖z_i‖⁴ term matters
    Z -= Z.mean(axis=0)
    sizes = np.arange(1, n + 1)
    mean, var = _subset_moments(Z, sizes)
    for m, mu, v in zip(sizes[:-1], mean, var):
        s = _subset_s(Z, np.array(list(itertools.combinations(range(n), m))))
        assert mu == pytest.approx(s.mean(), rel=1e-12, abs=1e-14)
        assert v == pytest.approx(s.var(), rel=1e-9, abs=1e-14)
    assert mean[-1] == 0 and var[-1] == 0  # a group of all samples has no rest: s = 0


@pytest.mark.parametrize("m", [2, 13, 60])
def test_subset_moments_agree_with_two_hundred_thousand_random_subsets(m):
    # n = 120 rows, 5 of them outliers: a heavy-tailed population, like a spectral embedding's rows.
    rng = np.random.default_rng(m)
    E = rng.normal(size=(120, 6))
    E[:5] *= 8.0
    Z = _whiten(E, 1e-6)[0]
    mean, var = _subset_moments(Z, np.array([m]))
    s = np.concatenate([_subset_s(Z, np.argpartition(rng.random((20_000, 120)), m, axis=1)[:, :m])
                        for _ in range(10)])
    # Monte-Carlo standard errors of the sample mean and the sample variance of N = 200k draws.
    se_mean = s.std() / np.sqrt(s.size)
    se_var = np.sqrt((np.mean((s - s.mean()) ** 4) - s.var() ** 2) / s.size)
    assert abs(s.mean() - mean[0]) < 4 * se_mean
    assert abs(s.var() - var[0]) < 4 * se_var
    assert se_var < 0.02 * var[0]  # the check is sharp: 4 standard errors are a few per cent


def test_cluster_z_scores_come_from_exact_moments_not_from_the_permutations():
    E, labels = _planted()
    fits = [FisherSeparability(n_permutations=P, random_state=seed).fit(E, labels)
            for P, seed in [(0, 0), (20, 1), (100, 2)]]
    for fit in fits[1:]:
        assert fit.cluster_z_scores_ == fits[0].cluster_z_scores_
        assert fit.cluster_null_std_ == fits[0].cluster_null_std_
    assert np.isnan(fits[0].cluster_p_values_[1]) and np.isnan(fits[0].z_score_)
    fit = fits[2]
    tau, tau0, sd = fit.cluster_scores_[1], fit.cluster_null_mean_[1], fit.cluster_null_std_[1]
    assert fit.cluster_z_scores_[1] == pytest.approx((tau - tau0) / sd)
    # τ₀ and σ_τ come from E s = tr W/(n − 1) by the delta method: τ₀ = E s/(1 − E s), σ_τ = sd(s)/(1 − E s)².
    Z = _whiten(E, 1e-6)[0]
    mean_s, var_s = _subset_moments(Z, np.array([40]))
    assert mean_s[0] == pytest.approx(np.trace(Z.T @ Z) / (len(E) - 1))
    assert tau0 == pytest.approx(mean_s[0] / (1 - mean_s[0]))
    assert sd == pytest.approx(np.sqrt(var_s[0]) / (1 - mean_s[0]) ** 2)


def test_the_delta_method_null_of_tau_is_close_to_a_large_permutation_null():
    # First order in s − E s: the mean is exact up to E s's curvature term, the std a few per cent low.
    E, labels = _planted(n=300, d=8, n_small=30)
    fit = FisherSeparability(n_permutations=0).fit(E, labels)
    Z = _whiten(E, 1e-6)[0]
    rng = np.random.default_rng(10)
    s = np.concatenate([_subset_s(Z, np.argpartition(rng.random((10_000, 300)), 30, axis=1)[:, :30])
                        for _ in range(4)])
    tau = s / (1 - s)
    assert fit.cluster_null_mean_[1] == pytest.approx(tau.mean(), rel=0.01)
    assert 0.95 < fit.cluster_null_std_[1] / tau.std() < 1.0


def test_a_near_disconnected_cluster_outscores_a_merely_well_separated_one():
    # Both clusters have s > 0.9, so a z-score of s alone is near its ceiling for both. The first is a
    # connected component of its own (its spectral eigenvector is its indicator): no within-group spread along
    # that direction, and τ grows like 1/regularization.
    rng = np.random.default_rng(11)
    E = rng.normal(size=(400, 5))
    labels = np.zeros(400, dtype=int)
    labels[:30], labels[30:60] = 1, 2
    E[:, 4] = labels == 1
    E[30:60, 1] += 25.0
    fit = FisherSeparability(n_permutations=0).fit(E, labels)
    s = {q: t / (1 + t) for q, t in fit.cluster_scores_.items()}
    mean_s, var_s = _subset_moments(_whiten(E, 1e-6)[0], np.array([30]))
    z_s = {q: (s[q] - mean_s[0]) / np.sqrt(var_s[0]) for q in (1, 2)}
    assert s[1] > 0.999 and s[2] > 0.97 and z_s[1] < 1.03 * z_s[2]
    assert fit.cluster_z_scores_[1] > 100 * fit.cluster_z_scores_[2] > 0


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


def test_separabilities_equal_separate_fits_and_feed_the_same_choice_as_best_cluster():
    E, labels = _planted(n=300, d=4, n_small=30, seed=4)
    rng = np.random.default_rng(4)
    clusterings = {"planted": labels, "random": rng.integers(0, 3, 300),
                   "noisy": np.where(rng.random(300) < 0.1, -1, labels)}
    fits = separabilities(E, clusterings, n_permutations=20, random_state=3)
    assert list(fits) == sorted(clusterings)
    for name, labels_ in clusterings.items():
        alone = FisherSeparability(20, random_state=3).fit(E, labels_)
        assert fits[name].score_ == alone.score_ and fits[name].p_value_ == alone.p_value_
        assert fits[name].cluster_z_scores_ == alone.cluster_z_scores_
        assert fits[name].cluster_p_values_ == alone.cluster_p_values_
        assert fits[name].n_samples_ == 300
    assert most_separable(fits, 0.5, 2) == best_cluster(E, clusterings, n_permutations=20, random_state=3)
    assert most_separable(fits, 0.5, 2)[:2] == ("planted", 1)


def test_separation_is_the_mean_difference_in_the_rests_spread_along_it():
    rng = np.random.default_rng(5)
    X = rng.normal(size=(120, 6)) @ rng.normal(size=(6, 6))
    group = np.arange(120) < 12
    X[group] += np.array([4.0, 0, 1.0, 0, 0, 0])
    delta = X[group].mean(0) - X[~group].mean(0)
    covariance = np.cov(X[~group], rowvar=False)  # ddof 1
    d = separation(X, group)
    assert d == pytest.approx(delta @ delta / np.sqrt(delta @ covariance @ delta), rel=1e-12)
    rotation = np.linalg.qr(rng.normal(size=(6, 6)))[0]
    assert separation(3.0 * X @ rotation + 7.0, group) == pytest.approx(d, rel=1e-9)  # no unit, no frame
    assert separation(X[:, :1], group) == pytest.approx(abs(delta[0]) / X[~group, 0].std(ddof=1), rel=1e-12)
    random = np.zeros(120, dtype=bool)
    random[rng.choice(120, 12, replace=False)] = True
    assert separation(X, random) < d / 2
    same = np.vstack([np.ones((3, 2)), np.zeros((3, 2)), np.full((3, 2), 2.0)])
    assert separation(same, np.arange(9) < 3) == 0.0  # the group's mean is the rest's
    assert separation(same[:6], np.arange(6) < 3) == math.inf  # the rest does not vary along Δ


def test_best_cluster_given_the_features_reports_the_chosen_clusters_separation():
    rng = np.random.default_rng(8)
    X = rng.normal(size=(300, 8))
    X[:20, 0] += 6.0
    E = SpectralEmbedding(8, random_state=0).fit(KNNGraph(10).fit(X).adjacency_).embedding_
    clusterings = KMeansRange(2, 5, random_state=0).fit(E).named_labels()
    name, cid, stats = best_cluster(E, clusterings, n_permutations=0, features=X)
    assert stats["separation"] == separation(X, clusterings[name] == cid) > 5.0
    assert (name, cid) == best_cluster(E, clusterings, n_permutations=0)[:2]
    assert "separation" not in best_cluster(E, clusterings, n_permutations=0)[2]


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
        (lambda E: best_cluster(E, {"x": np.arange(10) % 2}, features=E[:9]),
         r"features must have one row per embedded sample \(10\), got 9"),
        (lambda E: separation(E, np.arange(10) % 2), r"members must be a boolean mask of shape \(10,\), got int64"),
        (lambda E: separation(E, np.ones(10, bool)),
         "a group of at least 1 row and a rest of at least 2, got 10 and 0"),
        (lambda E: separation(E, np.zeros(10, bool)), "got 0 and 10"),
    ],
)
def test_bad_inputs_are_named(call, match):
    with pytest.raises(BadInputError, match=match):
        call(np.random.default_rng(0).normal(size=(10, 2)))
