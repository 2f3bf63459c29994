"""Clusterings of a spectral embedding: k-means over a range of k, HDBSCAN, agglomerative, DBSCAN.

Thin wrappers over scikit-learn with one shape: ``fit(embedding)`` sets ``labels_``, a dict of label arrays
``(n,)`` int64 (noise, for the density-based methods, is ``-1``), and ``named_labels()`` gives the same
arrays under names unique across clusterers ("kmeans_5", "agglomerative_5", "hdbscan", "dbscan") — the
form :func:`spray.analysis.fda.best_cluster` and the store take. Settings that cannot run on the data (k
larger than n − 1, ...) are skipped, with the reason in ``skipped_``.

By default every clusterer works on the row-normalised embedding, ``e_i / ‖e_i‖`` (Ng, Jordan & Weiss 2002;
CoRelAy normalises the eigenvector rows in its embedding step; we keep ``SpectralEmbedding.embedding_`` plain
and normalise here). All-zero rows stay zero. k-means for k clusters uses, by default, only the first k
eigenvectors (Ng, Jordan & Weiss), normalised over those k columns: on 9 planted clusters (n = 10k,
d = 1024, 32 eigenpairs) that recovered them exactly (ARI 1.0) where all 32 columns (CoRelAy) gave 0.60.
``columns="all"`` reproduces CoRelAy.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import numpy as np

from spray.analysis._common import (
    check_choice,
    check_int,
    check_matrix,
    check_real,
    limited_threads,
    rng_from,
    seed_from,
)
from spray.errors import BadInputError


def normalize_rows(embedding: np.ndarray) -> np.ndarray:
    """Rows scaled to unit Euclidean norm; zero rows left as they are."""
    norms = np.linalg.norm(embedding, axis=1, keepdims=True)
    return embedding / np.where(norms > 0, norms, 1.0)


class _Clusterer:
    name = ""

    def _prepare(self, embedding: Any) -> np.ndarray:
        X = check_matrix(embedding, "embedding")
        return normalize_rows(X) if self.normalize_rows else X

    def named_labels(self) -> dict[str, np.ndarray]:
        """``labels_`` keyed ``"<name>_<k>"`` (k-indexed clusterers) or ``"<name>"``."""
        return {
            (f"{self.name}_{key}" if isinstance(key, int) else str(key)): labels
            for key, labels in self.labels_.items()
        }


def _cluster_counts(ks: Any, name: str, minimum: int) -> list[int]:
    values = [ks] if isinstance(ks, (int, np.integer)) and not isinstance(ks, bool) else ks
    if not isinstance(values, Sequence) and not isinstance(values, (range, np.ndarray)):
        raise BadInputError(f"{name} must be an integer or a sequence of integers, got {ks!r}")
    out = [check_int(v, name, minimum=minimum) for v in values]
    if not out:
        raise BadInputError(f"{name} must not be empty")
    return sorted(set(out))


class KMeansRange(_Clusterer):
    """k-means for every k in ``k_min..k_max`` (inclusive), each with ``n_init`` k-means++ restarts.

    ``columns="first_k"``: for k clusters, the first k columns of the embedding (the k smallest eigenpairs),
    row-normalised over those columns; ``"all"``: every column. Fitted: ``labels_`` dict ``k -> (n,) int64``;
    ``inertia_`` dict ``k -> float`` (over all n rows); ``skipped_`` dict ``k -> reason`` for k > n − 1. All k
    share the seed from ``random_state``, so the result for one k does not depend on the range. ``n_threads``
    caps OpenMP threads per fit (``None``: library default); see :func:`spray.analysis._common.limited_threads`
    for why 1. ``n_jobs``: fits (one per k) run at once, in threads; the labels do not depend on it. With one
    class on an otherwise idle machine, ``n_jobs`` = the core count uses the cores that ``n_threads=1`` leaves
    idle (k = 2 … 30 on 20k rows: 3.9 s with one job, 2.0 s with two, on 2 cores); when classes already run in
    parallel (the pipeline's per-class tasks), keep 1.

    ``max_fit_samples``: with more rows than this, each k is fitted on one seeded random subsample of
    ``max_fit_samples`` rows (the same for every k) and every row is then assigned to its nearest centre; the
    cost of the 30 fits stops growing with n (1M rows: one pass per k to assign them). A cluster of 0.1 % of
    the rows still has ~100 members in a subsample of 100k. ``fit_samples_``: rows the centres were fitted on
    (n when no subsample was needed); ``None`` always fits on every row.
    """

    name = "kmeans"

    def __init__(
        self,
        k_min: int = 2,
        k_max: int = 31,
        random_state: Any = 0,
        n_init: int = 3,
        normalize_rows: bool = True,
        columns: str = "first_k",
        max_iter: int = 300,
        n_threads: int | None = 1,
        max_fit_samples: int | None = 100_000,
        n_jobs: int = 1,
    ) -> None:
        self.k_min = k_min
        self.k_max = k_max
        self.random_state = random_state
        self.n_init = n_init
        self.normalize_rows = normalize_rows
        self.columns = columns
        self.max_iter = max_iter
        self.n_threads = n_threads
        self.max_fit_samples = max_fit_samples
        self.n_jobs = n_jobs

    def fit(self, embedding: Any, y: Any = None) -> KMeansRange:
        from sklearn.cluster import KMeans

        k_min = check_int(self.k_min, "k_min", minimum=1)
        k_max = check_int(self.k_max, "k_max", minimum=k_min)
        n_init = check_int(self.n_init, "n_init", minimum=1)
        max_iter = check_int(self.max_iter, "max_iter", minimum=1)
        n_jobs = check_int(self.n_jobs, "n_jobs", minimum=1)
        check_choice(self.columns, "columns", ("first_k", "all"))
        seed = seed_from(self.random_state)
        E = check_matrix(embedding, "embedding")
        n = E.shape[0]
        fit_rows = slice(None)
        if self.max_fit_samples is not None and n > check_int(self.max_fit_samples, "max_fit_samples", minimum=2):
            fit_rows = np.sort(rng_from(seed).choice(n, size=self.max_fit_samples, replace=False))
        self.fit_samples_ = n if isinstance(fit_rows, slice) else len(fit_rows)
        self.labels_, self.inertia_, self.skipped_ = {}, {}, {}
        ks = [k for k in range(k_min, k_max + 1) if k <= n - 1]
        for k in range(max(k_min, n), k_max + 1):
            self.skipped_[k] = f"k={k} > n - 1 = {n - 1} samples"

        def fit_one(k: int) -> tuple[int, np.ndarray, float]:
            X = E[:, :k] if self.columns == "first_k" else E
            X = normalize_rows(X) if self.normalize_rows else X
            km = KMeans(n_clusters=k, n_init=n_init, max_iter=max_iter, random_state=seed).fit(X[fit_rows])
            if isinstance(fit_rows, slice):
                labels = km.labels_
                return k, labels.astype(np.int64), float(np.sum((X - km.cluster_centers_[labels]) ** 2))
            # Every row assigned: scikit-learn's chunked assignment gives the inertia without an n x k
            # temporary (1M rows, k = 2 ... 31: 1.5 s CPU where the numpy expression above took 7.4 s).
            return k, km.predict(X).astype(np.int64), float(-km.score(X))

        # Warning filters are process-wide, so one catch_warnings here covers the pool threads too (one per
        # fit would race: a thread leaving its block restores the filters under another's fit).
        with limited_threads(self.n_threads), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "fewer distinct points than clusters" on duplicate rows
            if n_jobs == 1 or len(ks) < 2:
                results = [fit_one(k) for k in ks]
            else:
                # OpenMP's thread count is per calling thread: each pool thread sets its own (and dies with
                # the pool, so nothing is left changed); BLAS's is process-wide and set by limited_threads.
                init = None if self.n_threads is None else partial(_openmp_threads, self.n_threads)
                with ThreadPoolExecutor(min(n_jobs, len(ks)), initializer=init) as pool:
                    results = list(pool.map(fit_one, ks[::-1]))  # largest k (slowest) first
        for k, labels, inertia in sorted(results, key=lambda r: r[0]):
            self.labels_[k], self.inertia_[k] = labels, inertia
        return self


def _openmp_threads(n_threads: int) -> None:
    """Set the calling thread's OpenMP thread count (scikit-learn's k-means reads it when it fits)."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=n_threads, user_api="openmp")


class Agglomerative(_Clusterer):
    """Agglomerative clustering (scikit-learn) for one or several cluster counts ``n_clusters``.

    ``fit(embedding, connectivity=None)``: pass a sparse graph (e.g. ``KNNGraph.adjacency_``) as
    ``connectivity`` for large n — without it the memory grows as n². Fitted: ``labels_`` dict
    ``k -> labels``, ``skipped_`` dict ``k -> reason`` (k > n − 1).
    """

    name = "agglomerative"

    def __init__(self, n_clusters: int | Sequence[int] = 8, linkage: str = "ward", normalize_rows: bool = True):
        self.n_clusters = n_clusters
        self.linkage = linkage
        self.normalize_rows = normalize_rows

    def fit(self, embedding: Any, y: Any = None, connectivity: Any = None) -> Agglomerative:
        from sklearn.cluster import AgglomerativeClustering

        ks = _cluster_counts(self.n_clusters, "n_clusters", 1)
        if self.linkage not in ("ward", "complete", "average", "single"):
            raise BadInputError(f"linkage must be 'ward', 'complete', 'average' or 'single', got {self.linkage!r}")
        X = self._prepare(embedding)
        n = X.shape[0]
        self.labels_, self.skipped_ = {}, {}
        for k in ks:
            if k > n - 1:
                self.skipped_[k] = f"k={k} > n - 1 = {n - 1} samples"
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # connectivity with several components is completed by sklearn
                model = AgglomerativeClustering(n_clusters=k, linkage=self.linkage, connectivity=connectivity)
                self.labels_[k] = model.fit(X).labels_.astype(np.int64)
        return self


class HDBSCANClustering(_Clusterer):
    """HDBSCAN (scikit-learn ≥ 1.3). Fitted: ``labels_ = {"hdbscan": labels}`` (noise −1), ``skipped_``."""

    name = "hdbscan"

    def __init__(self, min_cluster_size: int = 5, min_samples: int | None = None, normalize_rows: bool = True):
        self.min_cluster_size = min_cluster_size
        self.min_samples = min_samples
        self.normalize_rows = normalize_rows

    def fit(self, embedding: Any, y: Any = None) -> HDBSCANClustering:
        from sklearn.cluster import HDBSCAN

        mcs = check_int(self.min_cluster_size, "min_cluster_size", minimum=2)
        ms = None if self.min_samples is None else check_int(self.min_samples, "min_samples", minimum=1)
        X = self._prepare(embedding)
        n = X.shape[0]
        self.labels_, self.skipped_ = {}, {}
        need = max(mcs, ms or mcs)
        if n < need:
            self.skipped_[self.name] = f"n={n} samples < min_cluster_size/min_samples = {need}"
            return self
        model = HDBSCAN(min_cluster_size=mcs, min_samples=ms, copy=True)
        self.labels_[self.name] = model.fit(X).labels_.astype(np.int64)
        return self


class DBSCANClustering(_Clusterer):
    """DBSCAN (scikit-learn). Fitted: ``labels_ = {"dbscan": labels}`` (noise −1), ``skipped_``."""

    name = "dbscan"

    def __init__(self, eps: float = 0.5, min_samples: int = 5, normalize_rows: bool = True):
        self.eps = eps
        self.min_samples = min_samples
        self.normalize_rows = normalize_rows

    def fit(self, embedding: Any, y: Any = None) -> DBSCANClustering:
        from sklearn.cluster import DBSCAN

        eps = check_real(self.eps, "eps", minimum=0.0, strict=True)
        ms = check_int(self.min_samples, "min_samples", minimum=1)
        X = self._prepare(embedding)
        self.labels_, self.skipped_ = {}, {}
        self.labels_[self.name] = DBSCAN(eps=eps, min_samples=ms).fit(X).labels_.astype(np.int64)
        return self
