"""Eigengap heuristic."""

from __future__ import annotations

import numpy as np
import pytest

from spray.analysis.eigengap import eigengaps, propose_n_clusters
from spray.analysis.knn import KNNGraph
from spray.analysis.spectral import SpectralEmbedding
from spray.errors import BadInputError


def test_three_planted_clusters_give_three(blobs):
    X, _ = blobs([120, 150, 90], d=10, seed=5)
    lam = SpectralEmbedding(16, random_state=0).fit(KNNGraph(10).fit(X).adjacency_).eigenvalues_
    assert propose_n_clusters(lam) == 3
    gaps = eigengaps(lam)
    assert gaps.shape == (15,) and np.argmax(gaps) == 2


def test_max_clusters_limits_the_search_and_ties_go_to_the_first():
    lam = [0.0, 0.5, 0.5, 1.0, 1.0, 1.9]
    assert propose_n_clusters(lam) == 5
    assert propose_n_clusters(lam, max_clusters=3) == 1


@pytest.mark.parametrize(
    ("values", "match"), [([0.0], "at least 2"), ([0.5, 0.1], "ascending"), ([0.0, np.nan], "non-finite")]
)
def test_bad_eigenvalues_are_reported(values, match):
    with pytest.raises(BadInputError, match=match):
        propose_n_clusters(values)


def test_bad_max_clusters_is_named():
    with pytest.raises(BadInputError, match="max_clusters"):
        propose_n_clusters([0, 1, 2], max_clusters=0)
