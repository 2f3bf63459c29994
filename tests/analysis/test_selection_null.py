"""The selection null: p-values of the best cut are uniform on structure-free classes and tiny for a planted
group; the Gumbel tail; refusals."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from spray.analysis import KMeansRange, KNNGraph, SelectionNull, SpectralEmbedding, best_cluster, local_scaling_affinity
from spray.analysis.selection_null import (EXCESS_FLOOR, NCUT_FLOOR, cut_statistic, gumbel_p_value,
                                          ledoit_wolf_shrinkage, selection_excess)
from spray.errors import BadInputError


def _select(X: np.ndarray) -> tuple[float | None, float | None]:
    """A small SpRAy selection: kNN (k = 5) -> local scaling -> 6 eigenpairs -> k-means k = 2, 3 -> best cut."""
    graph = KNNGraph(n_neighbors=5).fit(X)
    embedding = SpectralEmbedding(n_eigenpairs=6, random_state=0).fit(graph.adjacency_).embedding_
    clusterings = KMeansRange(k_min=2, k_max=3, n_init=1).fit(embedding).named_labels()
    _, _, best = best_cluster(embedding, clusterings, n_permutations=0,
                              affinity=local_scaling_affinity(graph.indices_, graph.distances_))
    return best.get("ncut"), best.get("z_score")


def _gaussian_class(seed: int, n: int = 30, d: int = 12) -> np.ndarray:
    """n samples of a correlated Gaussian in d dimensions (a random covariance): no structure."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)) @ rng.standard_normal((d, d))


def test_p_values_of_structure_free_classes_are_uniform():
    p = np.array([SelectionNull(n_resamples=8, n_components=8, random_state=seed).fit(_gaussian_class(seed), _select)
                  .p_value_ for seed in range(30)])
    print(np.sort(p).round(3))
    assert stats.kstest(p, "uniform").pvalue > 0.05
    assert 0.35 < p.mean() < 0.65 and (p < 0.05).sum() <= 4


def test_a_planted_disconnected_group_has_p_below_the_bh_threshold_of_a_20_class_audit():
    X = _gaussian_class(1, n=60)
    X[:8] += 10 * X.std()  # 8 of 60 samples far away: a group with (almost) no edge to the rest
    null = SelectionNull(n_resamples=10, n_components=8).fit(X, _select)
    assert null.p_value_ < 0.05 / 20 and null.statistic_ > null.null_statistics_.max()
    assert null.empirical_p_value_ == pytest.approx(1 / 11)  # the resamples alone could not say less
    assert (null.n_samples_, null.n_components_, null.null_statistics_.shape) == (60, 8, (10,))
    assert null.excess_ == pytest.approx(math.log(null.statistic_ / null.null_statistics_.mean())) and null.excess_ > 1


def test_the_null_is_seeded_and_subsamples_large_classes():
    X = _gaussian_class(3, n=80)
    a, b = (SelectionNull(n_resamples=4, n_components=6, max_samples=50, random_state=5).fit(X, _select)
            for _ in range(2))
    assert a.n_samples_ == 50 and np.array_equal(a.null_statistics_, b.null_statistics_) and a.p_value_ == b.p_value_
    c = SelectionNull(n_resamples=4, n_components=6, max_samples=50, random_state=6).fit(X, _select)
    assert not np.array_equal(a.null_statistics_, c.null_statistics_)


def test_float32_features_give_the_null_of_their_float64_values():
    X = _gaussian_class(4, n=80).astype(np.float32)
    seen = []

    def select(rows: np.ndarray) -> tuple[float | None, float | None]:
        seen.append(rows.dtype)
        return _select(rows)

    a = SelectionNull(n_resamples=3, n_components=6, max_samples=50).fit(X, select)
    b = SelectionNull(n_resamples=3, n_components=6, max_samples=50).fit(X.astype(np.float64), _select)
    assert set(seen) == {np.dtype(np.float64)} and a.statistic_ == b.statistic_
    np.testing.assert_array_equal(a.null_statistics_, b.null_statistics_)


def test_identical_rows_have_nothing_to_test():
    null = SelectionNull(n_resamples=3).fit(np.ones((20, 4)), _select)
    assert null.p_value_ == 1.0 and math.isnan(null.statistic_) and np.isnan(null.null_statistics_).all()
    assert math.isnan(null.excess_)


def test_the_excess_is_the_log_ratio_of_the_observed_cut_statistic_to_the_nulls_mean():
    assert selection_excess(4.0, np.array([1.0, 2.0, 3.0])) == pytest.approx(math.log(2.0))
    assert selection_excess(1.0, np.array([1.5, 0.5])) == 0.0
    # A statistic of 0 or less (a cut of 1 or more: nothing cut off) counts as the floor on either side.
    assert selection_excess(-0.5, np.array([1.0])) == pytest.approx(math.log(EXCESS_FLOOR))
    assert selection_excess(1.0, np.array([-0.7, -0.7])) == pytest.approx(-math.log(EXCESS_FLOOR))
    assert math.isnan(selection_excess(float("nan"), np.array([1.0])))
    assert math.isnan(selection_excess(1.0, np.array([])))


@pytest.mark.parametrize(("n", "d"), [(30, 12), (40, 200), (50, 3)])
def test_the_shrinkage_from_the_gram_matrix_is_sklearns(n, d):
    from sklearn.covariance import ledoit_wolf_shrinkage as sklearn_shrinkage

    X = _gaussian_class(n + d, n=n, d=d)
    Xc = X - X.mean(axis=0)
    assert ledoit_wolf_shrinkage(Xc @ Xc.T, d) == pytest.approx(sklearn_shrinkage(Xc, assume_centered=True))


def test_the_cut_statistic():
    assert cut_statistic(0.0) == -math.log(NCUT_FLOOR) and cut_statistic(None) == -math.log(2.0)
    assert cut_statistic(float("nan")) == -math.log(2.0) and cut_statistic(0.5) == pytest.approx(math.log(2.0))


def test_the_gumbel_tail_is_calibrated_with_its_parameters_fitted_to_ten_draws():
    rng = np.random.default_rng(1)
    draws = rng.gumbel(loc=3.0, scale=0.2, size=(4000, 11))  # observed, then its 10 null values
    p = np.array([gumbel_p_value(row[0], row[1:])[0] for row in draws])
    assert abs(np.mean(p < 0.05) - 0.05) < 0.01 and abs(np.mean(p < 0.01) - 0.01) < 0.005
    _, location, scale = gumbel_p_value(0.0, draws[0, 1:])
    assert scale == pytest.approx(draws[0, 1:].std(ddof=1) * math.sqrt(6) / math.pi)
    assert location == pytest.approx(draws[0, 1:].mean() - 0.5772156649015329 * scale)
    assert gumbel_p_value(1.0, np.ones(4)) == (1.0, 1.0, 0.0) and gumbel_p_value(1.5, np.ones(4))[0] == 0.0


@pytest.mark.parametrize(("params", "message"), [
    ({"n_resamples": 1}, "n_resamples must be >= 2, got 1"),
    ({"n_components": 0}, "n_components must be >= 1, got 0"),
    ({"max_samples": 2}, "max_samples must be >= 3, got 2"),
])
def test_bad_parameters_are_refused_by_name(params, message):
    with pytest.raises(BadInputError) as info:
        SelectionNull(**params).fit(_gaussian_class(0), _select)
    assert str(info.value) == message
