"""2-D maps of a spectral embedding for people to look at: UMAP (reusing the kNN graph) and t-SNE."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from spray.analysis._common import check_int, check_matrix, check_real, limited_threads, seed_from
from spray.errors import BadInputError


def _knn_arrays(knn: Any, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, distances) (n, k), self excluded, from a fitted KNNGraph or a tuple of the two arrays."""
    if hasattr(knn, "indices_") and hasattr(knn, "distances_"):
        ind, dist = knn.indices_, knn.distances_
    elif isinstance(knn, tuple) and len(knn) >= 2:
        ind, dist = knn[0], knn[1]
    else:
        raise BadInputError("knn must be a fitted KNNGraph or a tuple (indices, distances)")
    ind, dist = np.asarray(ind), np.asarray(dist, dtype=np.float32)
    if ind.ndim != 2 or ind.shape != dist.shape or ind.shape[0] != n:
        raise BadInputError(
            f"knn indices and distances must both have shape ({n}, k) to match the embedding; "
            f"got {ind.shape} and {dist.shape}"
        )
    return ind.astype(np.int64), dist


class UMAPMap:
    """UMAP (McInnes et al. 2018) of an embedding into 2-D; ``embedding_`` (n, 2) float32 after ``fit``.

    ``fit(embedding, knn=None)``: with ``knn`` (a fitted :class:`~spray.analysis.knn.KNNGraph`, or a tuple
    ``(indices, distances)`` of shape (n, k), self excluded) UMAP's own neighbour search is skipped and its
    fuzzy graph is built from those neighbours — then the map shows the kNN graph of the space ``knn`` was
    built on (normally the heatmap features, the same graph the spectral embedding comes from), and
    ``embedding`` only fixes n. UMAP counts a point as its own first neighbour, so it uses
    ``n_neighbors_ = min(n_neighbors, k + 1)``; without ``knn`` ``n_neighbors_ = min(n_neighbors, n − 1)``.
    Any such reduction is recorded in ``notes_``.
    """

    def __init__(
        self, n_neighbors: int = 15, min_dist: float = 0.1, random_state: Any = None, n_epochs: int | None = None
    ) -> None:
        self.n_neighbors = n_neighbors
        self.min_dist = min_dist
        self.random_state = random_state
        self.n_epochs = n_epochs

    def fit(self, embedding: Any, y: Any = None, knn: Any = None) -> UMAPMap:
        k = check_int(self.n_neighbors, "n_neighbors", minimum=2)
        min_dist = check_real(self.min_dist, "min_dist", minimum=0.0)
        n_epochs = None if self.n_epochs is None else check_int(self.n_epochs, "n_epochs", minimum=1)
        seed = seed_from(self.random_state)
        X = check_matrix(embedding, "embedding", min_rows=3, dtype=np.float32)
        n = X.shape[0]
        self.notes_ = []
        precomputed = (None, None, None)
        if knn is not None:
            ind, dist = _knn_arrays(knn, n)
            used = min(k, ind.shape[1] + 1)
            if used < k:
                self.notes_.append(f"n_neighbors={k} reduced to {used}: the given kNN graph has k={ind.shape[1]}")
            ind = np.hstack([np.arange(n)[:, None], ind[:, : used - 1]])
            dist = np.hstack([np.zeros((n, 1), np.float32), dist[:, : used - 1]])
            precomputed = (ind, dist)
        else:
            used = min(k, n - 1)
            if used < k:
                self.notes_.append(f"n_neighbors={k} reduced to n - 1 = {used}")
        # UMAP's spectral initialisation needs more points than components; tiny inputs start at random.
        init = "spectral" if n > 10 else "random"

        from umap import UMAP  # lazy: numba compiles on first use

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # seeds disable parallelism; no search index -> no transform
            model = UMAP(
                n_neighbors=used,
                n_components=2,
                min_dist=min_dist,
                random_state=seed,
                n_epochs=n_epochs,
                init=init,
                precomputed_knn=precomputed,
            )
            self.embedding_ = model.fit_transform(X).astype(np.float32)
        self.n_neighbors_ = used
        return self

    def fit_transform(self, embedding: Any, y: Any = None, knn: Any = None) -> np.ndarray:
        return self.fit(embedding, knn=knn).embedding_


class TSNEMap:
    """Barnes-Hut t-SNE (scikit-learn) of an embedding into 2-D; ``embedding_`` (n, 2) float32.

    t-SNE calibrates each point's kernel on about 3·perplexity neighbours, so ``perplexity`` above
    ``(n − 1) / 3`` is clipped to that value (``perplexity_``, with a note in ``notes_``) instead of failing.
    Needs n ≥ 4. ``n_threads`` caps OpenMP threads as in :class:`~spray.analysis.clustering.KMeansRange`.
    """

    def __init__(
        self,
        perplexity: float = 30.0,
        random_state: Any = None,
        init: str = "pca",
        max_iter: int = 1000,
        n_threads: int | None = 1,
    ) -> None:
        self.perplexity = perplexity
        self.random_state = random_state
        self.init = init
        self.max_iter = max_iter
        self.n_threads = n_threads

    def fit(self, embedding: Any, y: Any = None) -> TSNEMap:
        from sklearn.manifold import TSNE

        perplexity = check_real(self.perplexity, "perplexity", minimum=0.0, strict=True)
        if self.init not in ("pca", "random"):
            raise BadInputError(f"init must be 'pca' or 'random', got {self.init!r}")
        max_iter = check_int(self.max_iter, "max_iter", minimum=250)  # sklearn's minimum
        seed = seed_from(self.random_state)
        X = check_matrix(embedding, "embedding", min_rows=4, dtype=np.float32)
        n = X.shape[0]
        self.notes_ = []
        limit = (n - 1) / 3
        if perplexity > limit:
            self.notes_.append(f"perplexity={perplexity:g} clipped to (n - 1)/3 = {limit:g} for n={n} samples")
            perplexity = limit
        model = TSNE(
            n_components=2,
            perplexity=perplexity,
            init=self.init,
            random_state=seed,
            method="barnes_hut",
            max_iter=max_iter,
        )
        with limited_threads(self.n_threads):
            self.embedding_ = model.fit_transform(X).astype(np.float32)
        self.perplexity_ = perplexity
        return self

    def fit_transform(self, embedding: Any, y: Any = None) -> np.ndarray:
        return self.fit(embedding).embedding_
