"""UMAP and t-SNE maps. All umap use lives in this module: numba compiles once per session."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from spray.analysis.knn import KNNGraph
from spray.analysis.maps import TSNEMap, UMAPMap, _umap_schedule
from spray.analysis.spectral import SpectralEmbedding
from spray.errors import BadInputError


@pytest.fixture(scope="module")
def pipeline():
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(size=(40, 8)) + 12 * i for i in range(3)]).astype(np.float32)
    graph = KNNGraph(10).fit(X)
    embedding = SpectralEmbedding(6, random_state=0).fit(graph.adjacency_).embedding_
    return embedding, graph, np.repeat(np.arange(3), 40)


def _separated(points, labels):
    """Every point's nearest other point in the map has its label."""
    d = np.linalg.norm(points[:, None] - points[None], axis=2)
    np.fill_diagonal(d, np.inf)
    return np.mean(labels[d.argmin(axis=1)] == labels)


def test_umap_reuses_the_knn_graph_is_seeded_and_separates_clusters(pipeline):
    embedding, graph, labels = pipeline
    first = UMAPMap(n_neighbors=15, random_state=0).fit(embedding, knn=graph)
    assert first.embedding_.shape == (120, 2) and first.embedding_.dtype == np.float32
    assert first.n_neighbors_ == 11 and "reduced to 11" in first.notes_[0]  # k = 10 neighbours + self
    again = UMAPMap(n_neighbors=15, random_state=0).fit(embedding, knn=(graph.indices_, graph.distances_))
    np.testing.assert_array_equal(first.embedding_, again.embedding_)
    assert _separated(first.embedding_, labels) == 1.0


def test_umap_is_given_the_graphs_neighbours_and_runs_no_search_or_eigensolve_of_its_own(pipeline, monkeypatch):
    import umap
    import umap.umap_

    embedding, graph, _ = pipeline
    given = {}

    class Recording(umap.UMAP):
        def fit(self, X, *args, **kwargs):
            given["knn"], given["init"], given["X"] = self.precomputed_knn, self.init, X
            return super().fit(X, *args, **kwargs)

    def refused(*args, **kwargs):
        raise AssertionError("UMAP ran its own neighbour search or spectral layout")

    monkeypatch.setattr(umap, "UMAP", Recording)
    monkeypatch.setattr(umap.umap_, "nearest_neighbors", refused)
    monkeypatch.setattr(umap.umap_, "spectral_layout", refused)
    UMAPMap(n_neighbors=15, random_state=0).fit(embedding, knn=graph)
    indices, distances = given["knn"]
    # UMAP counts a point as its own first neighbour: self at distance 0, then the graph's 10 lists as they are.
    np.testing.assert_array_equal(indices, np.hstack([np.arange(120)[:, None], graph.indices_]))
    np.testing.assert_array_equal(distances, np.hstack([np.zeros((120, 1)), graph.distances_]).astype(np.float32))
    # The start layout is the PCA of the spectral embedding of the same graph.
    assert given["init"] == "pca"
    np.testing.assert_array_equal(given["X"], embedding.astype(np.float32))
    with pytest.raises(AssertionError, match="spectral layout"):  # the stand-in is live: UMAP's own start calls it
        UMAPMap(init="spectral", random_state=0).fit(embedding, knn=graph)


def test_umap_schedule_is_umaps_own_up_to_100k_then_one_negative_sample_and_fewer_epochs():
    sizes = (5_000, 10_001, 100_000, 100_001, 300_000, 500_000, 1_000_000, 2_000_000)
    assert [_umap_schedule(n) for n in sizes] == [(500, 5), (200, 5), (200, 5), (200, 1), (200, 1), (120, 1),
                                                  (60, 1), (50, 1)]
    X = np.random.default_rng(0).normal(size=(40, 3))
    fitted = UMAPMap(n_epochs=30, negative_sample_rate=2, random_state=0).fit(X)
    assert (fitted.n_epochs_, fitted.negative_sample_rate_) == (30, 2)


def test_umap_up_to_100k_points_is_umap_with_its_own_defaults(pipeline):
    import umap

    embedding, graph, _ = pipeline
    ours = UMAPMap(n_neighbors=11, random_state=0).fit(embedding, knn=graph)
    assert (ours.n_epochs_, ours.negative_sample_rate_) == (500, 5)
    knn = (np.hstack([np.arange(120)[:, None], graph.indices_]),
           np.hstack([np.zeros((120, 1)), graph.distances_]).astype(np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = umap.UMAP(n_neighbors=11, random_state=0, init="pca", precomputed_knn=knn).fit_transform(embedding)
    np.testing.assert_array_equal(ours.embedding_, theirs)


def test_umap_without_knn_computes_its_own_neighbours(pipeline):
    embedding, _, labels = pipeline
    umap_map = UMAPMap(n_neighbors=8, random_state=0, n_epochs=50).fit(embedding)
    assert umap_map.n_neighbors_ == 8 and umap_map.notes_ == []
    assert _separated(umap_map.embedding_, labels) > 0.95


def test_umap_rejects_a_knn_graph_of_another_size(pipeline):
    embedding, graph, _ = pipeline
    with pytest.raises(BadInputError, match=r"knn indices and distances must both have shape \(60, k\)"):
        UMAPMap().fit(embedding[:60], knn=graph)


def test_tsne_clips_perplexity_with_a_note_and_separates_clusters(pipeline):
    embedding, _, labels = pipeline
    tsne = TSNEMap(perplexity=100, random_state=0, max_iter=300).fit(embedding)
    assert tsne.perplexity_ == pytest.approx(119 / 3) and "clipped" in tsne.notes_[0]
    assert tsne.embedding_.shape == (120, 2) and _separated(tsne.embedding_, labels) == 1.0
    assert TSNEMap(perplexity=10, random_state=0, max_iter=250).fit(embedding).notes_ == []


def test_tsne_on_the_knn_graph_uses_no_perplexity_is_seeded_and_separates_clusters(pipeline):
    embedding, graph, labels = pipeline
    tsne = TSNEMap(random_state=0, max_iter=300).fit(embedding, knn=graph)
    assert tsne.perplexity_ is None and tsne.notes_ == []
    assert tsne.embedding_.shape == (120, 2) and tsne.embedding_.dtype == np.float32
    assert _separated(tsne.embedding_, labels) == 1.0
    again = TSNEMap(random_state=0, max_iter=300).fit(embedding, knn=(graph.indices_, graph.distances_))
    np.testing.assert_array_equal(tsne.embedding_, again.embedding_)
    with pytest.raises(BadInputError, match=r"knn indices and distances must both have shape \(60, k\)"):
        TSNEMap().fit(embedding[:60], knn=graph)


@pytest.mark.parametrize(
    ("mapper", "name"),
    [
        (UMAPMap(n_neighbors=1), "n_neighbors"),
        (UMAPMap(min_dist=-1.0), "min_dist"),
        (UMAPMap(init="tsne"), "init"),
        (UMAPMap(negative_sample_rate=0), "negative_sample_rate"),
        (TSNEMap(perplexity=0), "perplexity"),
        (TSNEMap(init="spectral"), "init"),
        (TSNEMap(max_iter=10), "max_iter"),
        (TSNEMap(n_threads=0), "n_threads"),
        (TSNEMap(fft_interval=0), "fft_interval"),
    ],
)
def test_bad_parameters_are_named(mapper, name, pipeline):
    with pytest.raises(BadInputError, match=name):
        mapper.fit(pipeline[0])
