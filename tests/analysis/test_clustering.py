"""Clusterers: k-means range recovers planted clusters; thin sklearn wrappers share one output shape."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

from spray.analysis.clustering import (
    Agglomerative,
    DBSCANClustering,
    HDBSCANClustering,
    KMeansRange,
    normalize_rows,
)
from spray.analysis.knn import KNNGraph
from spray.analysis.spectral import SpectralEmbedding
from spray.errors import BadInputError


@pytest.fixture
def planted(blobs):
    X, labels = blobs([150, 100, 60, 40], d=12, seed=6)
    graph = KNNGraph(10).fit(X)
    return SpectralEmbedding(8, random_state=0).fit(graph.adjacency_).embedding_, labels, graph


def test_kmeans_range_recovers_planted_clusters(planted):
    E, labels, _ = planted
    km = KMeansRange(k_min=2, k_max=6, random_state=0).fit(E)
    assert sorted(km.labels_) == [2, 3, 4, 5, 6] and km.skipped_ == {}
    assert adjusted_rand_score(labels, km.labels_[4]) >= 0.95
    assert all(v.dtype == np.int64 and v.shape == labels.shape for v in km.labels_.values())
    assert list(km.named_labels()) == [f"kmeans_{k}" for k in range(2, 7)]
    assert km.inertia_[6] <= km.inertia_[2]


def test_kmeans_on_all_columns_also_recovers_easy_clusters(planted):
    E, labels, _ = planted
    km = KMeansRange(k_min=4, k_max=4, columns="all", n_threads=None).fit(E)
    assert adjusted_rand_score(labels, km.labels_[4]) >= 0.95


def test_kmeans_on_a_subsample_labels_every_row_by_its_nearest_centre(blobs):
    X, labels = blobs([400, 300, 200, 100], d=4, separation=2.0, seed=6)  # touching blobs
    kwargs = {"k_min": 4, "k_max": 4, "columns": "all", "normalize_rows": False, "random_state": 0}
    full = KMeansRange(**kwargs).fit(X)
    sub = KMeansRange(**kwargs, max_fit_samples=200).fit(X)
    assert full.fit_samples_ == len(X) and sub.fit_samples_ == 200
    assert sub.labels_[4].shape == labels.shape and adjusted_rand_score(full.labels_[4], sub.labels_[4]) >= 0.9
    # every row sits with its nearest centre; the centres came from 200 rows, so compare with the members' means
    centres = np.stack([X[sub.labels_[4] == c].mean(axis=0) for c in range(4)])
    nearest = np.linalg.norm(X[:, None] - centres[None], axis=2).argmin(axis=1)
    assert np.mean(nearest == sub.labels_[4]) > 0.97
    # inertia over all rows, about the subsample's centres: at least the scatter about the members' own means
    scatter = sum(np.sum((X[sub.labels_[4] == c] - centres[c]) ** 2) for c in range(4))
    assert scatter <= sub.inertia_[4] <= 1.05 * scatter
    assert sub.inertia_[4] >= full.inertia_[4] * 0.999
    # exactly: the centres of the seeded subsample's fit, every row's squared distance to its nearest one
    rows = np.sort(np.random.default_rng(0).choice(len(X), size=200, replace=False))
    fitted = KMeans(n_clusters=4, n_init=3, random_state=0).fit(X[rows]).cluster_centers_
    d2 = ((X[:, None] - fitted[None]) ** 2).sum(axis=2)
    np.testing.assert_array_equal(sub.labels_[4], d2.argmin(axis=1))
    assert sub.inertia_[4] == pytest.approx(d2.min(axis=1).sum(), rel=1e-9)


def test_kmeans_result_for_one_k_does_not_depend_on_the_range(planted):
    E = planted[0]
    a = KMeansRange(3, 3, random_state=1).fit(E).labels_[3]
    b = KMeansRange(2, 5, random_state=1).fit(E).labels_[3]
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("n_threads", [1, None])
def test_kmeans_in_parallel_jobs_gives_the_same_labels_and_inertias(planted, n_threads):
    E = planted[0]
    one = KMeansRange(2, 8, random_state=2, n_threads=n_threads).fit(E)
    three = KMeansRange(2, 8, random_state=2, n_threads=n_threads, n_jobs=3).fit(E)
    assert list(three.labels_) == list(one.labels_) == list(range(2, 9))
    for k in one.labels_:
        np.testing.assert_array_equal(three.labels_[k], one.labels_[k])
        assert three.inertia_[k] == pytest.approx(one.inertia_[k], rel=1e-12)


@pytest.mark.parametrize("n_jobs", [1, 3])
def test_duplicate_rows_give_no_warnings_from_any_thread(n_jobs):
    X = np.repeat(np.random.default_rng(0).normal(size=(5, 3)), 4, axis=0)  # 5 distinct rows, k up to 12
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        km = KMeansRange(2, 12, n_jobs=n_jobs).fit(X)
    assert caught == [] and sorted(km.labels_) == list(range(2, 13))


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_k_larger_than_n_minus_one_is_skipped_with_reason(n_jobs):
    km = KMeansRange(2, 6, n_jobs=n_jobs).fit(np.random.default_rng(0).normal(size=(5, 3)))
    assert sorted(km.labels_) == [2, 3, 4] and sorted(km.skipped_) == [5, 6]
    assert "n - 1 = 4" in km.skipped_[5]


def test_agglomerative_hdbscan_dbscan_recover_planted_clusters(planted):
    E, labels, graph = planted
    agg = Agglomerative(n_clusters=[4, 2]).fit(E)
    assert sorted(agg.labels_) == [2, 4] and adjusted_rand_score(labels, agg.labels_[4]) >= 0.95
    agg_sparse = Agglomerative(4).fit(E, connectivity=graph.adjacency_)
    assert adjusted_rand_score(labels, agg_sparse.labels_[4]) >= 0.95
    hdb = HDBSCANClustering(min_cluster_size=10).fit(E)
    assert list(hdb.named_labels()) == ["hdbscan"]
    keep = hdb.labels_["hdbscan"] >= 0
    assert keep.mean() > 0.8 and adjusted_rand_score(labels[keep], hdb.labels_["hdbscan"][keep]) >= 0.95
    db = DBSCANClustering(eps=0.3, min_samples=5).fit(E)
    assert adjusted_rand_score(labels, db.labels_["dbscan"]) >= 0.95


def test_hdbscan_on_too_few_samples_is_skipped():
    hdb = HDBSCANClustering(min_cluster_size=10).fit(np.zeros((4, 2)))
    assert hdb.labels_ == {} and "min_cluster_size" in hdb.skipped_["hdbscan"]


def test_normalize_rows_leaves_zero_rows():
    out = normalize_rows(np.array([[3.0, 4.0], [0.0, 0.0]]))
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0]])


@pytest.mark.parametrize(
    ("clusterer", "name"),
    [
        (KMeansRange(k_min=0), "k_min"),
        (KMeansRange(k_min=5, k_max=3), "k_max"),
        (KMeansRange(n_init=0), "n_init"),
        (KMeansRange(columns="last"), "columns"),
        (KMeansRange(n_threads=0), "n_threads"),
        (KMeansRange(n_jobs=0), "n_jobs"),
        (KMeansRange(max_fit_samples=1), "max_fit_samples"),
        (Agglomerative(n_clusters=[]), "n_clusters"),
        (Agglomerative(linkage="centroid"), "linkage"),
        (HDBSCANClustering(min_cluster_size=1), "min_cluster_size"),
        (DBSCANClustering(eps=0), "eps"),
        (DBSCANClustering(min_samples=0), "min_samples"),
    ],
)
def test_bad_parameters_are_named(clusterer, name):
    with pytest.raises(BadInputError, match=name):
        clusterer.fit(np.random.default_rng(0).normal(size=(20, 3)))


def test_bad_embedding_is_named():
    with pytest.raises(BadInputError, match="embedding"):
        KMeansRange().fit(np.zeros(10))
