"""UMAP and t-SNE maps. All umap use lives in this module: numba compiles once per session."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from spray.analysis.knn import KNNGraph
from spray.analysis.maps import TSNEMap, UMAPMap, _umap_schedule
from spray.analysis.placement import place, sample_graph, sample_rows
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


def test_umap_of_a_subsample_places_the_rest_along_the_graph_is_seeded_and_separates_clusters(pipeline):
    embedding, graph, labels = pipeline
    sub = UMAPMap(random_state=0, max_fit_samples=40).fit(embedding, knn=graph)
    assert sub.fit_samples_ == 40 and sub.notes_ == [
        "n_neighbors=15 reduced to 11: the given kNN graph has k=10",
        "map fitted on 40 of 120 points, the others placed along the kNN graph"]
    assert (sub.n_epochs_, sub.negative_sample_rate_) == (500, 5)  # UMAP's schedule for 40 points
    assert sub.embedding_.shape == (120, 2) and sub.embedding_.dtype == np.float32
    assert _separated(sub.embedding_, labels) == 1.0
    again = UMAPMap(random_state=0, max_fit_samples=40).fit(embedding, knn=(graph.indices_, graph.distances_))
    np.testing.assert_array_equal(sub.embedding_, again.embedding_)
    whole = UMAPMap(random_state=0).fit(embedding, knn=graph)
    for limit in (120, 500):  # no subsample when the class is not larger than the limit
        same = UMAPMap(random_state=0, max_fit_samples=limit).fit(embedding, knn=graph)
        assert same.fit_samples_ == 120
        np.testing.assert_array_equal(same.embedding_, whole.embedding_)
    alone = UMAPMap(random_state=0, max_fit_samples=40, n_epochs=50).fit(embedding)  # no graph: no subsample
    assert alone.fit_samples_ == 120


def test_placement_links_the_sample_by_its_strongest_paths_reaches_every_component_and_places_at_weighted_means():
    import scipy.sparse as sp

    # Nodes 0-4 and 5-6 are two components: a sample of one node still meets both.
    edges = {(0, 4): 1.0, (3, 4): 3.0, (4, 5 - 3): 0.5, (5, 6): 1.0, (1, 2): 2.0, (1, 0): 1.0}
    rows, cols = zip(*edges)
    graph = sp.coo_matrix((list(edges.values()), (rows, cols)), shape=(7, 7))
    graph = (graph + graph.T).tocsr()
    for seed in range(5):
        drawn = sample_rows(graph, 1, seed)
        assert len(drawn) == 2 and len({int(r) >= 5 for r in drawn}) == 2
    # Anchors 0 at (0, 0), 3 at (3, 0) and 5 at (0, 5): in the first round node 4 at (0·1 + 3·3) / 4, node 1 from
    # node 0 and node 6 from node 5; node 2, whose neighbours 4 and 1 were not placed yet, in the second round.
    positions = place(graph, np.array([0, 3, 5]), np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 5.0]]))
    np.testing.assert_allclose(positions[[0, 3, 5, 4, 1, 6]], [[0, 0], [3, 0], [0, 5], [2.25, 0], [0, 0], [0, 5]])
    np.testing.assert_allclose(positions[2], [(0.5 * 2.25 + 2 * 0) / 2.5, 0])
    among = sample_graph(graph, np.array([0, 3, 4]), keep=2).toarray()
    np.testing.assert_allclose(among, [[0, 3, 1], [3, 0, 3], [1, 3, 0]])  # 0-3: no edge, two steps via 4: 1 · 3
    # One link a point: 0 keeps 3 (3 > 1), 3 keeps 0 (tied with 4: the lower), 4 keeps 3; then symmetrised.
    np.testing.assert_allclose(sample_graph(graph, np.array([0, 3, 4]), keep=1).toarray(), [[0, 3, 0], [3, 0, 3], [0, 3, 0]])
    # A direct edge and a two-step path between the same points are united: a + b − ab.
    united = sp.csr_matrix(np.array([[0, 0.5, 0.5], [0.5, 0, 0.4], [0.5, 0.4, 0]]))
    np.testing.assert_allclose(sample_graph(united, np.array([0, 1]), keep=2).toarray(),
                               [[0, 0.5 + 0.2 - 0.1], [0.5 + 0.2 - 0.1, 0]])


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
        (UMAPMap(max_fit_samples=2), "max_fit_samples"),
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
