"""The selection null: how well would the best cluster of a class without structure stand out?

Every class has *some* candidate cluster that is weakly cut and well separated: the best of hundreds of
candidates beats random groups whatever the data (docs/spray-method.md §11). The null therefore reruns the
whole selection — kNN graph, locally scaled affinity, spectral embedding, every candidate clustering and the
best-cluster maximum — on resamples of a structure-free model of the class *in feature space*: a Gaussian
with the class's mean and Ledoit–Wolf-shrunk covariance (as SigClust, Liu et al. 2008, does for k-means),
analysed in reduced dimension (each sample's scores on its own leading principal components); a
per-feature permutation is no such model: it destroys the pixel correlations every real class has.

The observed statistic is computed by exactly the same procedure (same rows, same reduction), so observed
and null are comparable. The statistic is the selected cluster's ``t = −log max(ncut, NCUT_FLOOR)``; its
p-value comes from a Gumbel law (the law of a maximum) fitted to the ``n_resamples`` null values by moments,
with the fit's error accounted for (:func:`gumbel_p_value`), so p is not bounded below by
1/(n_resamples + 1).
"""

from __future__ import annotations

import math
from functools import lru_cache
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy import stats

from spray.analysis._common import check_int, check_matrix, rng_from

NCUT_FLOOR = 1e-12
"""A cut below this (a disconnected group: exactly 0) counts as this: t stays finite, ≈ 27.6."""
EULER_GAMMA = 0.5772156649015329

EXCESS_FLOOR = 0.01
"""Cut statistics below this (a cut of 0.99 or more: no group is cut off at all) count as this in
:func:`selection_excess`, so that the ratio is defined."""

Selection = Callable[[np.ndarray], tuple[float | None, float | None]]
"""The procedure under test: a feature matrix (n, d) -> the selected cluster's (ncut, z-score), or
(None, None) when it selects none."""


def cut_statistic(ncut: float | None) -> float:
    """``t = −log max(ncut, NCUT_FLOOR)``; a selection without a cluster (None, NaN) scores the worst cut,
    ``t = −log 2``."""
    if ncut is None or math.isnan(ncut):
        return -math.log(2.0)
    return -math.log(max(ncut, NCUT_FLOOR))


def selection_excess(statistic: float, null_statistics: np.ndarray) -> float:
    """``log(t / mean t*)``: how many times more strongly (in ``t = −log ncut``) the class's selected group is
    cut off than the best group the same selection finds in structure-free resamples of the class, on a log
    scale (0: no more than chance; log 2: twice as strongly). Both sides are floored at
    :data:`EXCESS_FLOOR`. This effect size, not the p-value, is what the classes of an audit are compared on
    (docs/spray-method.md §12): real classes are never Gaussian, so their p-values are all small and carry
    more of the null's sampling noise than of the group's distinctness. NaN when either side is NaN."""
    null_mean = float(np.mean(null_statistics)) if np.size(null_statistics) else math.nan
    if math.isnan(statistic) or math.isnan(null_mean):
        return math.nan
    return math.log(max(statistic, EXCESS_FLOOR) / max(null_mean, EXCESS_FLOOR))


PIVOT_DRAWS = 4096
"""Sets of standard Gumbel draws that tabulate the law of the fitted location and scale (fixed seed)."""


def gumbel_p_value(observed: float, null: np.ndarray) -> tuple[float, float, float]:
    """``(p, location, scale)``: ``P(T ≥ observed)`` for T and the R values of ``null`` independent draws
    of one Gumbel law, whose location ``μ = mean − γβ`` and scale ``β = sd·√6/π`` are fitted to ``null`` by
    moments (returned).

    The fit's error is part of p: for a location–scale law, ``u = (T − mean) / sd`` is pivotal, so with
    ``(m_k, s_k)`` the mean and sd of R standard Gumbel draws (``PIVOT_DRAWS`` sets, seed 0),
    ``p = mean_k F̄(m_k + u s_k)``, F̄ the standard Gumbel upper tail: exact up to the tabulation (plugging
    the fitted law in instead gives too many small p-values with R ≈ 10 — 5 of 30 below 0.05 on
    structure-free classes). A null without spread gives p = 1 at or below its value and 0 above it."""
    mean, sd = float(np.mean(null)), float(np.std(null, ddof=1)) if null.size > 1 else 0.0
    if not sd > 0:
        return (1.0 if observed <= mean else 0.0), mean, 0.0
    scale = sd * math.sqrt(6.0) / math.pi
    m, s = _pivot(null.size)
    p = float(np.mean(stats.gumbel_r.sf(m + (observed - mean) / sd * s)))
    return p, mean - EULER_GAMMA * scale, scale


@lru_cache(maxsize=8)
def _pivot(R: int) -> tuple[np.ndarray, np.ndarray]:
    """Means and sds (ddof 1) of ``PIVOT_DRAWS`` sets of R standard Gumbel draws."""
    draws = np.random.default_rng(0).gumbel(size=(PIVOT_DRAWS, R))
    return draws.mean(axis=1), draws.std(axis=1, ddof=1)


class SelectionNull:
    """The p-value of a class's best-cluster statistic under a Gaussian model of the class.

    ``fit(features, select)``: ``features`` (n, d) are the class's preprocessed heatmaps; ``select`` is the
    selection procedure (:data:`Selection`: kNN → affinity → spectral embedding → clusterings → best
    cluster), run on the observed rows and on every resample.

    1. Rows: all n, or a seeded subsample of ``max_samples`` when n is larger; centred: Xc (m, d).
    2. Model: ``N(0, Σ̂)``, Σ̂ = (1 − δ) S + δ μ I the Ledoit–Wolf shrinkage of S = XcᵀXc / m (μ = tr S / d,
       δ from :func:`ledoit_wolf_shrinkage`); a draw is ``√((1 − δ)/m) G Xc + √(δμ) G₂`` (G, G₂ standard
       normal, m × m and m × d): no d × d matrix is formed.
    3. Reduced space: observed rows and every draw are replaced by their scores on their own
       ``n_components`` leading principal components (at most the rank): the same map for both.
    4. Observed: ``select`` of the reduced rows; null: ``select`` of ``n_resamples`` seeded reduced draws.

    Fitted: ``statistic_`` (observed t), ``z_score_`` (the observed selected cluster's z-score),
    ``null_statistics_`` (R,), ``null_z_scores_`` (R,; NaN where nothing was selected), ``p_value_``
    (Gumbel tail, :func:`gumbel_p_value`), ``empirical_p_value_`` ``(1 + #{t* ≥ t}) / (1 + R)``,
    ``excess_`` (:func:`selection_excess`),
    ``gumbel_location_``, ``gumbel_scale_``, ``n_samples_`` (m), ``n_components_`` (c), ``shrinkage_``.
    Identical rows (no variance) have no structure to test: p = 1, the statistics NaN, nothing is run.
    """

    def __init__(self, n_resamples: int = 8, n_components: int = 16, max_samples: int = 500,
                 random_state: Any = 0) -> None:
        self.n_resamples = n_resamples
        self.n_components = n_components
        self.max_samples = max_samples
        self.random_state = random_state

    def fit(self, features: Any, select: Selection) -> SelectionNull:
        R = check_int(self.n_resamples, "n_resamples", minimum=2)
        c = check_int(self.n_components, "n_components", minimum=1)
        m = check_int(self.max_samples, "max_samples", minimum=3)
        rng = rng_from(self.random_state)
        # float32 features (the pipeline's) are validated as they are and only the sampled rows converted:
        # a float64 copy of a class of 1M heatmaps of 32 x 32 would be 8 GB.
        arr = np.asarray(features)
        X = check_matrix(arr, "features", min_rows=3, dtype=np.float32 if arr.dtype == np.float32 else np.float64)
        if X.shape[0] > m:
            X = X[np.sort(rng.choice(X.shape[0], size=m, replace=False))]
        X = X.astype(np.float64)
        Xc = X - X.mean(axis=0)
        n, d = Xc.shape
        gram = Xc @ Xc.T
        values = np.linalg.eigvalsh(gram)
        rank = int(np.sum(values > values[-1] * 1e-10)) if values[-1] > 0 else 0
        self.n_samples_, self.n_components_ = n, min(c, rank)
        if rank == 0:  # identical rows: no structure at all, nothing to test
            return self._no_structure(R)
        delta = ledoit_wolf_shrinkage(gram, d)
        floor = math.sqrt(delta * np.trace(gram) / (n * d))  # √(δ μ)
        ncut, z = select(_scores(Xc, self.n_components_))
        self.statistic_, self.z_score_ = cut_statistic(ncut), (np.nan if z is None else float(z))
        null_t, null_z = np.empty(R), np.empty(R)
        for r in range(R):
            # A draw of N(0, (1 − δ) S + δ μ I): G Xc (G n × n standard normal) has covariance n S in law.
            draw = math.sqrt((1 - delta) / n) * (rng.standard_normal((n, n)) @ Xc) + floor * rng.standard_normal((n, d))
            ncut_r, z_r = select(_scores(draw - draw.mean(axis=0), self.n_components_))
            null_t[r], null_z[r] = cut_statistic(ncut_r), np.nan if z_r is None else z_r
        self.null_statistics_, self.null_z_scores_ = null_t, null_z
        self.p_value_, self.gumbel_location_, self.gumbel_scale_ = gumbel_p_value(self.statistic_, null_t)
        self.empirical_p_value_ = float((1 + np.sum(null_t >= self.statistic_)) / (1 + R))
        self.excess_ = selection_excess(self.statistic_, null_t)
        self.shrinkage_ = delta
        return self

    def _no_structure(self, R: int) -> SelectionNull:
        self.statistic_ = self.z_score_ = self.gumbel_location_ = self.gumbel_scale_ = self.shrinkage_ = np.nan
        self.excess_ = np.nan
        self.null_statistics_, self.null_z_scores_ = np.full(R, np.nan), np.full(R, np.nan)
        self.p_value_ = self.empirical_p_value_ = 1.0
        return self


def ledoit_wolf_shrinkage(gram: np.ndarray, d: int) -> float:
    """Ledoit–Wolf's shrinkage intensity δ of the covariance ``S = XcᵀXc / n`` of n centred rows in d
    dimensions, from their Gram matrix ``XcXcᵀ`` (n, n) alone (sklearn's ``ledoit_wolf_shrinkage`` with
    ``assume_centered=True``, without its O(n d²) work): with ``‖S‖²_F = ‖XcXcᵀ‖²_F / n²``,
    ``tr S = tr(XcXcᵀ) / n``, ``b = (Σ_i ‖x_i‖⁴ / n − ‖S‖²_F) / (n d)``, ``a = (‖S‖²_F − (tr S)² / d) / d``:
    ``δ = min(b, a) / a`` (0 when a = 0)."""
    n = gram.shape[0]
    norms2 = np.diag(gram)
    frob = float(np.sum(gram * gram)) / n**2
    trace = float(norms2.sum()) / n
    b = (float(np.sum(norms2**2)) / n - frob) / (n * d)
    a = (frob - trace**2 / d) / d
    return 0.0 if a <= 0 else min(b, a) / a


def _scores(Xc: np.ndarray, c: int) -> np.ndarray:
    """The rows of the centred ``Xc`` (n, d) on their own ``c`` leading principal components (n, c), from the
    n × n Gram matrix (n ≤ max_samples: cheaper than an SVD of n × d when d is large)."""
    values, vectors = np.linalg.eigh(Xc @ Xc.T)
    top = np.argsort(values)[::-1][:c]
    return vectors[:, top] * np.sqrt(np.clip(values[top], 0.0, None))
