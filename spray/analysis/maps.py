"""2-D maps of a spectral embedding for people to look at: UMAP and t-SNE, both reusing the kNN graph."""

from __future__ import annotations

import functools
import warnings
from typing import Any

import numpy as np

from spray.analysis._common import cache_numba_kernels, check_choice, check_int, check_matrix, check_real, seed_from
from spray.analysis.knn import knn_adjacency
from spray.analysis.placement import fuzzy_graph, place, sample_graph, sample_rows
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


_UMAP_LARGE_N = 100_000  # up to here UMAP's own schedule; above, one negative sample (see _umap_schedule)
_UMAP_STEPS = 120_000_000  # gradient steps n · epochs · (1 + negative samples) above that: UMAP's own at 100k


def _umap_schedule(n: int) -> tuple[int, int]:
    """Default (epochs, negative samples per positive one) of UMAP's optimisation of n points.

    Up to ``_UMAP_LARGE_N`` points UMAP's own: 500 epochs up to 10k points, 200 above, 5 negative samples.
    Above, one negative sample, and the epochs that ``_UMAP_STEPS`` gradient steps ``n · epochs · (1 + 1)``
    allow, between 50 and 200: 200 up to 300k points, 120 at 500k, 60 at 1M, 50 from 1.2M — so a map above
    100k points takes no more steps than UMAP's own at 100k until the floor of 50 epochs. Seeded UMAP optimises
    on one thread, in a time proportional to the gradient steps: at n = 100k on the bench's graph
    (docs/benchmarks.md, one process) 0.25 / 0.13 / 0.08 s CPU per epoch with 5 / 2 / 1 negative samples.
    Spent on epochs, the same steps show the kNN graph better: the share of each point's 10 graph neighbours
    among its 10 nearest map neighbours was 0.063 after 50 epochs with five negative samples, 0.066 after
    100 with two, 0.064 after 100 with one (at two thirds of the steps). Fewer negative samples weaken the
    repulsion relative to the attraction (Böhm, Berens & Kobak 2022): clusters come out more compact; the
    planted clusters stayed as separated (99.9 % of the map neighbours in the point's own cluster). At 1M
    the map takes 0.4× the steps of the earlier 50 epochs with five negative samples (≈ 0.55× the time) and
    shows fewer neighbours: at n = 300k, purity 0.030 against 0.032.
    """
    if n <= _UMAP_LARGE_N:
        return (500 if n <= 10_000 else 200), 5
    return max(50, min(200, _UMAP_STEPS // (2 * n))), 1


# UMAP's kernels on the path UMAPMap takes (fuzzy graph from given neighbours, seeded single-threaded epochs) that
# umap-learn (0.5.12) declares without numba's cache. Not the parallel twin of the epoch kernel
# (``_nb_optimize_layout_euclidean_single_epoch_parallel``, unseeded maps): it compiles the same Python function,
# and numba's cache index does not tell the two apart.
_UMAP_UNCACHED_KERNELS = (
    ("umap_", "smooth_knn_dist"),
    ("umap_", "compute_membership_strengths"),
    ("layouts", "_nb_optimize_layout_euclidean_single_epoch"),
)


@functools.cache
def _cache_umap_kernels() -> None:
    """numba's on-disk cache for :data:`_UMAP_UNCACHED_KERNELS` (once per process, before they compile).

    Without it every process compiled them on its first map: ≈ 8 s CPU, more than the optimisation of a
    20k-point map on its graph (≈ 5–10 s CPU; docs/benchmarks.md).
    """
    from umap import layouts, umap_

    modules = {"umap_": umap_, "layouts": layouts}  # a fixed table: nothing is imported by a name read
    cache_numba_kernels(getattr(modules[module], name, None) for module, name in _UMAP_UNCACHED_KERNELS)


class UMAPMap:
    """UMAP (McInnes et al. 2018) of an embedding into 2-D; ``embedding_`` (n, 2) float32 after ``fit``.

    ``fit(embedding, knn=None)``: with ``knn`` (a fitted :class:`~spray.analysis.knn.KNNGraph`, or a tuple
    ``(indices, distances)`` of shape (n, k), self excluded) UMAP's own neighbour search is skipped and its
    fuzzy graph is built from those neighbours — then the map shows the kNN graph of the space ``knn`` was
    built on (normally the heatmap features, the same graph the spectral embedding comes from), and
    ``embedding`` only fixes n and the starting layout. UMAP counts a point as its own first neighbour, so it
    uses ``n_neighbors_ = min(n_neighbors, k + 1)``; without ``knn`` ``n_neighbors_ = min(n_neighbors, n − 1)``.
    Any such reduction is recorded in ``notes_``.

    ``init="pca"`` starts from the first two principal components of ``embedding``: that is already a
    spectral embedding of the kNN graph, so UMAP's own ``"spectral"`` start (an eigensolve of its fuzzy
    graph, 58 of 109 s CPU at n = 100k) would recompute much the same thing. ``"spectral"`` and
    ``"random"`` are UMAP's. ``n_epochs=None`` and ``negative_sample_rate=None``: see :func:`_umap_schedule`
    (UMAP's defaults up to 100k samples; above, one negative sample and 50–200 epochs); ``n_epochs_`` and
    ``negative_sample_rate_`` are the numbers used.

    ``max_fit_samples``: with ``knn`` and more points than this, the map is fitted on a seeded subsample of
    that many and every other point placed along the kNN graph (:mod:`spray.analysis.placement`), with the
    epochs of UMAP's schedule for the fitted points and the negative samples of the class's (one above 100k:
    five spread the fitted clusters apart, and the placed points between them). ``fit_samples_``: the points
    the map was fitted on (n without a subsample); ``None`` (default) always fits every point.
    """

    def __init__(
        self,
        n_neighbors: int = 15,
        min_dist: float = 0.1,
        random_state: Any = None,
        n_epochs: int | None = None,
        init: str = "pca",
        negative_sample_rate: int | None = None,
        max_fit_samples: int | None = None,
    ) -> None:
        self.n_neighbors = n_neighbors
        self.min_dist = min_dist
        self.random_state = random_state
        self.n_epochs = n_epochs
        self.init = init
        self.negative_sample_rate = negative_sample_rate
        self.max_fit_samples = max_fit_samples

    def fit(self, embedding: Any, y: Any = None, knn: Any = None) -> UMAPMap:
        k = check_int(self.n_neighbors, "n_neighbors", minimum=2)
        min_dist = check_real(self.min_dist, "min_dist", minimum=0.0)
        n_epochs = None if self.n_epochs is None else check_int(self.n_epochs, "n_epochs", minimum=1)
        negatives = self.negative_sample_rate
        negatives = None if negatives is None else check_int(negatives, "negative_sample_rate", minimum=1)
        init = check_choice(self.init, "init", ("pca", "spectral", "random"))
        seed = seed_from(self.random_state)
        X = check_matrix(embedding, "embedding", min_rows=3, dtype=np.float32)
        n = X.shape[0]
        limit = self.max_fit_samples
        limit = None if limit is None else check_int(limit, "max_fit_samples", minimum=3)
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
        if init == "spectral" and n <= 10:
            init = "random"  # UMAP's spectral start needs more points than components
            self.notes_.append("init='spectral' replaced by 'random' for n <= 10 samples")
        fit_samples = n if knn is None or limit is None else min(n, limit)
        default_epochs, default_negatives = _umap_schedule(fit_samples)[0], _umap_schedule(n)[1]
        n_epochs = default_epochs if n_epochs is None else n_epochs
        negatives = default_negatives if negatives is None else negatives
        self.n_neighbors_, self.n_epochs_, self.negative_sample_rate_ = used, n_epochs, negatives

        _cache_umap_kernels()
        if fit_samples < n:
            return self._fit_sample(X, precomputed, fit_samples, min_dist, init, seed)

        from umap import UMAP  # lazy: numba compiles on first use

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # seeds disable parallelism; no search index -> no transform
            model = UMAP(
                n_neighbors=used,
                n_components=2,
                min_dist=min_dist,
                random_state=seed,
                n_epochs=n_epochs,
                negative_sample_rate=negatives,
                init=init,
                precomputed_knn=precomputed,
            )
            self.embedding_ = model.fit_transform(X).astype(np.float32)
        self.fit_samples_ = n
        return self

    def _fit_sample(self, X: np.ndarray, knn: tuple[np.ndarray, np.ndarray], m: int, min_dist: float, init: str,
                    seed: int | None) -> UMAPMap:
        """The map of :mod:`spray.analysis.placement`: UMAP of a subsample on its graph, the rest placed."""
        from umap.umap_ import find_ab_params, simplicial_set_embedding

        graph = fuzzy_graph(*knn, self.n_neighbors_, seed)
        rows = sample_rows(graph, m, seed)
        a, b = find_ab_params(1.0, min_dist)  # UMAP's spread 1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            layout, _ = simplicial_set_embedding(
                X[rows], sample_graph(graph, rows, self.n_neighbors_), 2, 1.0, a, b, 1.0, self.negative_sample_rate_,
                self.n_epochs_, init, np.random.RandomState(seed), "euclidean", {}, False, {}, False)
        self.embedding_ = place(graph, rows, layout)
        self.fit_samples_ = len(rows)
        self.notes_.append(f"map fitted on {len(rows)} of {X.shape[0]} points, the others placed along the kNN graph")
        return self

    def fit_transform(self, embedding: Any, y: Any = None, knn: Any = None) -> np.ndarray:
        return self.fit(embedding, knn=knn).embedding_


class TSNEMap:
    """t-SNE (van der Maaten & Hinton 2008) of an embedding into 2-D with openTSNE; ``embedding_`` (n, 2) float32.

    ``fit(embedding, knn=None)``: with ``knn`` (as for :class:`UMAPMap`) the affinities are uniform over the
    symmetrised kNN graph, ``P ∝ (B + Bᵀ)/2`` with B the binary k-neighbour matrix — no neighbour search and
    no perplexity calibration; uniform kNN affinities give t-SNE maps close to perplexity-based ones (Böhm,
    Berens & Kobak 2022) and make the map show the same graph as UMAP and the spectral analysis. Without
    ``knn`` the affinities are openTSNE's perplexity-based ones on ``embedding``; t-SNE calibrates each
    kernel on about 3·perplexity neighbours, so ``perplexity`` above ``(n − 1) / 3`` is clipped to that value
    (``perplexity_``, with a note in ``notes_``); with ``knn`` ``perplexity_`` is None.

    The gradient is FFT-accelerated (FIt-SNE interpolation, Linderman et al. 2019) for n ≥ 10k, Barnes-Hut
    below (openTSNE's choice): 16 s on one thread at n = 20k with the default ``fft_interval`` (scikit-learn's
    Barnes-Hut, used before: 226 s wall on one thread, docs/benchmarks.md). ``max_iter`` counts all iterations, the first 250 with
    early exaggeration. ``init``: "pca" of ``embedding`` or "random". Needs n ≥ 4. ``n_threads``: openTSNE's
    threads (``None``: all cores; 1 by default, see :func:`spray.analysis._common.limited_threads`).

    ``fft_interval``: the side of one interpolation interval of the FFT gradient, in map units (openTSNE's
    ``ints_in_interval``; 1 in openTSNE and FIt-SNE). A t-SNE map of well separated clusters spreads over
    ≈ 150 units, and the FFT grid grows with (extent / interval)², so its cost is set by this value; the
    kernel 1/(1 + d²) is smooth on that scale. At n = 20k (uniform kNN affinities, one thread): 1 → 37.3 s,
    exact KL divergence 2.527; 1.5 → 16.0 s, KL 2.568; 2 → 10.7 s, KL 2.612; the share of each point's 10 nearest map
    neighbours from its own planted cluster was 0.9993 in all three (docs/benchmarks.md).
    """

    def __init__(
        self,
        perplexity: float = 30.0,
        random_state: Any = None,
        init: str = "pca",
        max_iter: int = 750,
        n_threads: int | None = 1,
        fft_interval: float = 1.5,
    ) -> None:
        self.perplexity = perplexity
        self.random_state = random_state
        self.init = init
        self.max_iter = max_iter
        self.n_threads = n_threads
        self.fft_interval = fft_interval

    def fit(self, embedding: Any, y: Any = None, knn: Any = None) -> TSNEMap:
        from openTSNE import TSNE
        from openTSNE.affinity import PrecomputedAffinities

        perplexity = check_real(self.perplexity, "perplexity", minimum=0.0, strict=True)
        init = check_choice(self.init, "init", ("pca", "random"))
        max_iter = check_int(self.max_iter, "max_iter", minimum=250)
        n_jobs = -1 if self.n_threads is None else check_int(self.n_threads, "n_threads", minimum=1)
        fft_interval = check_real(self.fft_interval, "fft_interval", minimum=0.0, strict=True)
        seed = seed_from(self.random_state)
        X = check_matrix(embedding, "embedding", min_rows=4, dtype=np.float32)
        n = X.shape[0]
        self.notes_ = []
        affinities = None
        if knn is not None:
            ind, _ = _knn_arrays(knn, n)
            affinities = PrecomputedAffinities(knn_adjacency(ind, "mean"))
            self.perplexity_ = None
        else:
            limit = (n - 1) / 3
            if perplexity > limit:
                self.notes_.append(f"perplexity={perplexity:g} clipped to (n - 1)/3 = {limit:g} for n={n} samples")
                perplexity = limit
            self.perplexity_ = perplexity
        model = TSNE(
            n_components=2,
            perplexity=perplexity,
            n_iter=max_iter - 250,
            early_exaggeration_iter=250,
            initialization=init,
            random_state=seed,
            n_jobs=n_jobs,
            ints_in_interval=fft_interval,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # openTSNE's notes on small data (kNN method choice)
            self.embedding_ = np.asarray(model.fit(X, affinities=affinities), dtype=np.float32)
        return self

    def fit_transform(self, embedding: Any, y: Any = None, knn: Any = None) -> np.ndarray:
        return self.fit(embedding, knn=knn).embedding_
