"""Fisher discriminant separability of clusterings in the spectral embedding, with a permutation null.

Anders et al. (2022) rank classes by how separable their clusterings are; a small, well separated cluster is a
Clever Hans candidate. Definitions (exactly what is computed; docs/spray-method.md has the derivations):

For an embedding E (n, d) and labels ℓ, with group means μ_q, sizes n_q and grand mean μ:

- ``S_W = Σ_q Σ_{i∈q} (e_i − μ_q)(e_i − μ_q)ᵀ``, ``S_B = Σ_q n_q (μ_q − μ)(μ_q − μ)ᵀ``, ``S_T = S_W + S_B``.
- Regulariser ``r = regularization · tr(S_T)/d + 1e-12`` — label-free, so the same r serves the observed
  labels and every permutation.
- Clustering score ``J``: the largest generalised eigenvalue of ``S_B w = J (S_W + rI) w``, over the samples
  that are not noise (label −1, from HDBSCAN/DBSCAN): noise is not a cluster.
- Per cluster q, one vs rest r (the rest includes noise): ``τ_q = (n_q n_r / n) δᵀ (S_W^{(q)} + rI)⁻¹ δ``
  with ``δ = μ_q − μ_r`` and ``S_W^{(q)}`` the two-group within scatter; τ_q is J of the two-group split.

Both are computed from one Cholesky factor of the label-independent ``A = S_T + rI``: with ``K = M A⁻¹ Mᵀ``
(rows of M: ``√n_q (μ_q − μ)``), Woodbury gives ``J = κ/(1 − κ)`` for the top eigenvalue κ of K, and
Sherman–Morrison gives ``τ_q = s/(1 − s)`` with ``s = (n_q n_r / n) δᵀ A⁻¹ δ``. A permutation then costs only
group sums of whitened rows — 100 permutations of n = 10k, d = 32, 30 clusters take about 0.2 s.

Null: labels shuffled uniformly at random (sizes kept). For J the shuffle is among the non-noise samples;
for τ_q it is over all samples, so the null of τ_q is τ of a uniformly random subset of size n_q.

- Per cluster, deterministic: the null mean and variance of s over *all* subsets of size n_q are exact closed
  forms in three label-free sums of the whitened rows (:func:`_subset_moments`). τ = s/(1 − s) is
  standardised by the delta method: ``τ₀ = E s/(1 − E s)``, ``σ_τ = sd(s)/(1 − E s)²``,
  ``z = (τ − τ₀)/σ_τ = z_s · (1 + τ)/(1 + τ₀)`` with ``z_s = (s − E s)/sd(s)``. z_s alone saturates as
  s → 1; the factor (1 + τ)/(1 + τ₀) = (1 − E s)/(1 − s) keeps the range of near-disconnected clusters.
- By ``n_permutations`` shuffles (seeded by ``random_state``): J's ``z = (J − mean(null)) / std(null)``
  (J has no closed-form null), and every ``p = (1 + #{null ≥ score}) / (1 + n_permutations)``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import scipy.linalg
import scipy.sparse as sp

from spray.analysis._common import check_int, check_labels, check_matrix, check_real, rng_from
from spray.analysis.cut import SMALL_NEIGHBORS, candidate_cuts, normalized_cuts
from spray.errors import BadInputError

_PERM_NNZ = 4_000_000  # indicator entries per permutation batch (bounds memory for large n)


def _whiten(E: np.ndarray, regularization: float) -> tuple[np.ndarray, float]:
    """Rows of E centred and whitened by ``A = S_T + rI``: ``Z = (E − μ) L⁻ᵀ`` with ``A = L Lᵀ``; returns (Z, r)."""
    Ec = E - E.mean(axis=0)
    S_T = Ec.T @ Ec
    r = regularization * float(np.trace(S_T)) / E.shape[1] + 1e-12
    L = scipy.linalg.cholesky(S_T + r * np.eye(E.shape[1]), lower=True)
    return scipy.linalg.solve_triangular(L, Ec.T, lower=True).T, r


def _ratio(x: np.ndarray) -> np.ndarray:
    """x / (1 − x) for x in [0, 1), guarded against round-off at 1."""
    x = np.clip(x, 0.0, None)
    return x / np.maximum(1.0 - x, 1e-15)


def _group_sums(Z: np.ndarray, codes: np.ndarray, n_groups: int) -> np.ndarray:
    """Per-group sums of rows of Z: ``codes`` (P, n) in 0..n_groups−1 -> (P, n_groups, d)."""
    P, n = codes.shape
    # Column i (sample i) has one entry per labeling p, in row p·G + code: built as CSC directly (no sort).
    rows = (codes + (np.arange(P) * n_groups)[:, None]).T.ravel()
    ind = sp.csc_matrix((np.ones(P * n), rows, np.arange(0, P * n + 1, P)), shape=(P * n_groups, n))
    return np.asarray(ind @ Z).reshape(P, n_groups, Z.shape[1])


def _clustering_scores(sums: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """J for each of P labelings from group sums of centred whitened rows (P, G, d)."""
    M = sums / np.sqrt(sizes)[None, :, None]  # rows √n_q (μ_q − μ), μ = 0 after centring
    gram = M @ M.transpose(0, 2, 1) if M.shape[1] <= M.shape[2] else M.transpose(0, 2, 1) @ M
    return _ratio(np.linalg.eigvalsh(gram)[:, -1])


def _one_vs_rest_scores(sums: np.ndarray, sizes: np.ndarray, n: int) -> np.ndarray:
    """τ for each group and labeling (P, G), from group sums of rows centred and whitened over all n."""
    rest = n - sizes
    norm2 = np.einsum("pgd,pgd->pg", sums, sums)
    denom = np.broadcast_to(sizes * rest, norm2.shape)
    s = np.divide(n * norm2, denom, out=np.zeros_like(norm2), where=denom > 0)
    return _ratio(s)  # a group with no rest has s = 0, hence τ = 0


def _subset_moments(Z: np.ndarray, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact mean and variance of ``s = n‖Σ_{i∈q} z_i‖² / (m(n − m))`` over the uniformly random subsets q of
    each size m in ``sizes`` (drawn without replacement), for rows z_i of Z summing to 0.

    With W = ZᵀZ, a = tr W, b = ‖W‖²_F − a²/(n − 1), c = Σ_i (‖z_i‖² − a/n)² and the inclusion probabilities
    π_k = m(m−1)⋯(m−k+1) / (n(n−1)⋯(n−k+1)) of k distinct samples (derivation: docs/spray-method.md §7):
    E‖Σ z‖² = (π₁ − π₂) a, Var‖Σ z‖² = 2(π₂ − 2π₃ + π₄) b + (π₁ − 7π₂ + 12π₃ − 6π₄) c.
    A group of all n samples has s = 0: mean and variance 0.
    """
    n = Z.shape[0]
    W = Z.T @ Z
    a = float(np.trace(W))
    b = float(np.sum(W * W)) - a**2 / (n - 1)
    c = float(np.sum((np.einsum("ij,ij->i", Z, Z) - a / n) ** 2))
    m = np.asarray(sizes, dtype=np.float64)
    pi = [np.ones_like(m)]
    for k in range(4):  # π_k = 0 for k > m; then the numerator vanishes, also where n − k ≤ 0
        pi.append(pi[-1] * np.clip(m - k, 0.0, None) / max(n - k, 1))
    mean_x = (pi[1] - pi[2]) * a
    var_x = 2 * (pi[2] - 2 * pi[3] + pi[4]) * b + (pi[1] - 7 * pi[2] + 12 * pi[3] - 6 * pi[4]) * c
    rest = n - m
    scale = np.divide(n, m * rest, out=np.zeros_like(m), where=rest > 0)
    mean_s, var_s = scale * mean_x, scale**2 * np.clip(var_x, 0.0, None)
    # The terms of var_x cancel exactly for a null without spread (e.g. n = 2): round-off is no spread.
    return mean_s, np.where(var_s > (1e-9 * mean_s) ** 2, var_s, 0.0)


def _tau_null(mean_s: np.ndarray, var_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Location and scale of τ = s/(1 − s) under the subset null, to first order in s − E s (delta method):
    ``τ₀ = E s / (1 − E s)`` and ``σ_τ = sd(s) / (1 − E s)²``."""
    return _ratio(mean_s), np.sqrt(var_s) / np.maximum(1.0 - mean_s, 1e-15) ** 2


def _standardise(observed: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """``(observed − mean) / std``; where the null has no spread: 0 if observed equals its mean, else ±inf."""
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (observed - mean) / std
    return np.where(std > 0, z, np.where(np.isclose(observed, mean), 0.0, np.copysign(np.inf, observed - mean)))


def _p_values(observed: np.ndarray, null: np.ndarray) -> np.ndarray:
    """Permutation p-values ``(1 + #{null ≥ observed}) / (1 + P)`` along axis 0 of ``null`` (P, ...); NaN if P = 0."""
    if null.shape[0] == 0:
        return np.full(observed.shape, np.nan)
    tol = 1e-12 * np.abs(observed)
    return (1 + (null >= observed - tol).sum(axis=0)) / (1 + null.shape[0])


class FisherSeparability:
    """FDA separability of a clustering and of each of its clusters, calibrated by the random-relabelling null.

    ``fit(embedding, labels)``; see the module docstring for the definitions. Fitted attributes:

    - ``score_`` (J), ``null_mean_``, ``null_std_``, ``z_score_``, ``p_value_``, ``null_scores_`` (P,): J
      against its permutation null;
    - ``cluster_ids_`` (sorted, noise excluded), ``cluster_sizes_``, ``cluster_scores_`` (τ_q),
      ``cluster_null_mean_`` (τ₀), ``cluster_null_std_`` (σ_τ), ``cluster_z_scores_`` (exact subset moments,
      independent of ``random_state`` and ``n_permutations``), ``cluster_p_values_`` (permutations): dicts
      keyed by cluster id;
    - ``n_samples_``, ``n_clusters_`` (non-noise clusters), ``n_noise_``, ``regularization_`` (the absolute r used for J),
      ``notes_`` (e.g. "a single cluster: score 0").

    Fewer than two non-noise clusters give ``score_ = 0``, z = 0, p = 1 and a note, not an error; a cluster
    with no rest (all samples) gets τ = 0. ``std(null) = 0`` gives z = 0 when the score equals the null mean,
    ±inf otherwise. ``n_permutations = 0`` skips the permutations (J's null and z, every p NaN).
    """

    def __init__(self, n_permutations: int = 100, random_state: Any = 0, regularization: float = 1e-6) -> None:
        self.n_permutations = n_permutations
        self.random_state = random_state
        self.regularization = regularization

    def fit(self, embedding: Any, labels: Any) -> FisherSeparability:
        P = check_int(self.n_permutations, "n_permutations", minimum=0)
        reg = check_real(self.regularization, "regularization", minimum=0.0)
        rng = rng_from(self.random_state)
        E = check_matrix(embedding, "embedding", min_rows=2)
        labels = check_labels(labels, E.shape[0])
        return self._fit(E, labels, P, reg, rng, _whiten(E, reg))

    def _fit(self, E, labels, P, reg, rng, whitened_all) -> FisherSeparability:
        n = E.shape[0]
        self.n_samples_ = n
        self.notes_ = []
        ids, codes = np.unique(labels, return_inverse=True)
        has_noise = ids[0] == -1
        sizes = np.bincount(codes, minlength=len(ids)).astype(np.float64)
        cluster_ids = ids[1:] if has_noise else ids
        self.cluster_ids_ = [int(c) for c in cluster_ids]
        self.n_clusters_ = len(cluster_ids)
        self.n_noise_ = int(sizes[0]) if has_noise else 0

        # --- clustering score J over the non-noise samples
        keep = labels >= 0
        if self.n_clusters_ >= 2:
            Zc, r = whitened_all if not has_noise else _whiten(E[keep], reg)
            c_codes, c_sizes = codes[keep] - int(has_noise), sizes[int(has_noise):]
            self.score_ = float(_clustering_scores(_group_sums(Zc, c_codes[None], len(c_sizes)), c_sizes)[0])
            null = np.concatenate(
                [
                    _clustering_scores(_group_sums(Zc, perm, len(c_sizes)), c_sizes)
                    for perm in _permutations(c_codes, P, rng)
                ]
                or [np.empty(0)]
            )
        else:
            r = whitened_all[1]
            self.score_ = 0.0
            null = np.zeros(P)
            self.notes_.append(f"{self.n_clusters_} non-noise cluster(s): clustering score is 0")
        self.regularization_ = r
        self.null_scores_ = null
        if P:
            self.null_mean_, self.null_std_ = float(null.mean()), float(null.std(ddof=1)) if P > 1 else 0.0
            self.z_score_ = float(_standardise(np.asarray(self.score_), self.null_mean_, self.null_std_))
        else:
            self.null_mean_ = self.null_std_ = self.z_score_ = np.nan
        self.p_value_ = float(_p_values(np.asarray(self.score_), null))

        # --- one-vs-rest τ per cluster over all samples (the rest includes noise)
        Z = whitened_all[0]
        tau = _one_vs_rest_scores(_group_sums(Z, codes[None], len(ids)), sizes, n)[0]
        mean, std = _tau_null(*_subset_moments(Z, sizes))
        z = _standardise(tau, mean, std)
        tau_null = np.concatenate(
            [_one_vs_rest_scores(_group_sums(Z, perm, len(ids)), sizes, n) for perm in _permutations(codes, P, rng)]
            or [np.empty((0, len(ids)))]
        )
        p = _p_values(tau, tau_null)
        offset = int(has_noise)
        pick = range(offset, len(ids))
        self.cluster_sizes_ = {int(ids[g]): int(sizes[g]) for g in pick}
        self.cluster_scores_ = {int(ids[g]): float(tau[g]) for g in pick}
        self.cluster_null_mean_ = {int(ids[g]): float(mean[g]) for g in pick}
        self.cluster_null_std_ = {int(ids[g]): float(std[g]) for g in pick}
        self.cluster_z_scores_ = {int(ids[g]): float(z[g]) for g in pick}
        self.cluster_p_values_ = {int(ids[g]): float(p[g]) for g in pick}
        if any(sizes[g] == n for g in pick):
            self.notes_.append("a cluster holds every sample: its one-vs-rest score is 0")
        return self

    def cluster_stats(self, cluster_id: int) -> dict[str, float]:
        """The fitted numbers of one cluster, and of its clustering, as a flat JSON-ready dict."""
        if cluster_id not in self.cluster_scores_:
            raise BadInputError(f"cluster_id={cluster_id} is not a cluster of the fitted labels {self.cluster_ids_}")
        return {
            "size": self.cluster_sizes_[cluster_id],
            "tau": self.cluster_scores_[cluster_id],
            "z_score": self.cluster_z_scores_[cluster_id],
            "p_value": self.cluster_p_values_[cluster_id],
            "null_mean": self.cluster_null_mean_[cluster_id],
            "null_std": self.cluster_null_std_[cluster_id],
            "clustering_score": self.score_,
            "clustering_z_score": self.z_score_,
            "clustering_p_value": self.p_value_,
            "n_clusters": self.n_clusters_,
        }


def _permutations(codes: np.ndarray, P: int, rng: np.random.Generator):
    """Yield batches (b, n) of uniformly shuffled copies of ``codes``, P rows in all."""
    step = max(1, _PERM_NNZ // max(1, codes.size))
    for start in range(0, P, step):
        yield rng.permuted(np.broadcast_to(codes, (min(step, P - start), codes.size)), axis=1)


def separabilities(
    embedding: Any,
    clusterings: dict[str, Any],
    n_permutations: int = 100,
    random_state: Any = 0,
    regularization: float = 1e-6,
) -> dict[str, FisherSeparability]:
    """:class:`FisherSeparability` fitted to every clustering ``{name: labels}`` of one embedding.

    The embedding is validated and whitened once for all of them; each clustering's permutations start from
    ``random_state`` afresh, so a clustering's result does not depend on the others.
    """
    P = check_int(n_permutations, "n_permutations", minimum=0)
    reg = check_real(regularization, "regularization", minimum=0.0)
    if not isinstance(clusterings, dict) or not clusterings:
        raise BadInputError("clusterings must be a non-empty dict {name: labels}")
    E = check_matrix(embedding, "embedding", min_rows=2)
    whitened = _whiten(E, reg)
    fits = {}
    for name in sorted(clusterings):
        labels = check_labels(clusterings[name], E.shape[0], name=f"clusterings[{name!r}]")
        fits[name] = FisherSeparability(P, random_state, reg)._fit(E, labels, P, reg, rng_from(random_state), whitened)
    return fits


def most_separable(
    fits: dict[str, FisherSeparability], max_fraction: float = 0.5, min_size: int = 2,
    cuts: dict[str, dict[int, float]] | None = None,
) -> tuple[str | None, int | None, dict[str, Any]]:
    """The rule of :func:`best_cluster`, applied to fitted separabilities (from :func:`separabilities`) and,
    when given, the clusters' normalised cuts ``{clustering: {cluster id: ncut}}``
    (:func:`spray.analysis.cut.normalized_cuts`)."""
    max_fraction = check_real(max_fraction, "max_fraction", minimum=0.0, strict=True)
    min_size = check_int(min_size, "min_size", minimum=1)
    n = next(iter(fits.values())).n_samples_ if fits else 0
    best, best_key, n_candidates = None, None, 0
    for name in sorted(fits):
        fs = fits[name]
        for cid in fs.cluster_ids_:
            size = fs.cluster_sizes_[cid]
            if not (min_size <= size <= max_fraction * n):
                continue
            n_candidates += 1
            ncut = cuts[name][cid] if cuts is not None else None
            z = fs.cluster_z_scores_[cid]
            key = (-np.inf if ncut is None or np.isnan(ncut) else -ncut,  # equal for all without cuts
                   np.nan_to_num(z, nan=-np.inf), fs.cluster_scores_[cid], -size)
            if best_key is None or key > best_key:
                best, best_key = (name, cid, {**fs.cluster_stats(cid), "ncut": ncut}), key
    if best is None:
        return None, None, {
            "reason": f"no cluster with {min_size} <= size <= {max_fraction:g} * n = {max_fraction * n:g} "
            f"in {len(fits)} clustering(s)",
            "n_candidates": 0,
        }
    name, cid, stats = best
    stats["n_candidates"] = n_candidates
    return name, cid, stats


def best_cluster(
    embedding: Any,
    clusterings: dict[str, Any],
    n_permutations: int = 100,
    random_state: Any = 0,
    max_fraction: float = 0.5,
    min_size: int = 2,
    regularization: float = 1e-6,
    affinity: Any = None,
    knn: tuple[Any, Any] | None = None,
    small_neighbors: int | None = SMALL_NEIGHBORS,
    features: Any = None,
) -> tuple[str | None, int | None, dict[str, Any]]:
    """The most separable small cluster over several clusterings of one class's embedding.

    Rule: a Clever Hans cluster is small, nearly disconnected from the rest of its class and well separated.
    Candidates are the clusters of every clustering whose size is within ``[min_size, max_fraction · n]``
    (noise −1 is never a candidate). The candidate with the lowest normalised cut wins, cut either in the class's
    kNN graph ``knn = (indices, distances)`` (each (n, k), :class:`spray.analysis.KNNGraph`'s ``indices_`` and
    ``distances_``) as the pipeline's fda node cuts it (:func:`spray.analysis.cut.candidate_cuts`: clusters of
    at most k samples in the graph of ``small_neighbors`` neighbours; None: every cluster in all k), or in a
    given ``affinity`` graph (n, n) sparse, symmetric, every cluster alike; ties, and every comparison without
    either, go to the larger per-cluster z-score of τ_q against the null of random subsets of its size (see
    :class:`FisherSeparability`), then to the larger τ, the smaller cluster, the first clustering name in
    sorted order and the smaller id. Both the cut and the z-score, unlike τ itself, are comparable across
    cluster sizes. The z-score comes from exact null moments, so the choice does not depend on
    ``random_state`` or ``n_permutations``: they only set the p-values and the clusterings' J null (one seed
    for all clusterings).

    Returns ``(clustering_name, cluster_id, stats)``; ``stats`` is :meth:`FisherSeparability.cluster_stats`
    plus ``"ncut"`` (None without a graph), ``"n_candidates"`` and, given the class's ``features`` (n, D), the rows
    the embedding embeds, ``"separation"`` of the chosen cluster in them (:func:`separation`). With no candidate
    cluster it returns ``(None, None, {"reason": ...})``.
    """
    check_real(max_fraction, "max_fraction", minimum=0.0, strict=True)  # before the fits, not after them
    check_int(min_size, "min_size", minimum=1)
    if affinity is not None and knn is not None:
        raise BadInputError("best_cluster: give the cuts' graph as affinity or as knn, not both")
    fits = separabilities(embedding, clusterings, n_permutations, random_state, regularization)
    n = next(iter(fits.values())).n_samples_
    cuts = None
    if affinity is not None:
        if not sp.issparse(affinity) or affinity.shape != (n, n):
            raise BadInputError(f"affinity must be a sparse ({n}, {n}) matrix, got {type(affinity).__name__} "
                                f"of shape {getattr(affinity, 'shape', None)}")
        cuts = {name: normalized_cuts(affinity, np.asarray(labels)) for name, labels in clusterings.items()}
    elif knn is not None:
        indices, distances = (np.asarray(a) for a in knn)
        if indices.ndim != 2 or indices.shape[0] != n or distances.shape != indices.shape:
            raise BadInputError(f"knn must be (indices, distances), each of shape ({n}, k), got "
                                f"{indices.shape} and {distances.shape}")
        cuts = candidate_cuts(indices, distances, clusterings, small_neighbors)
    if features is not None:
        features = check_matrix(features, "features")
        if features.shape[0] != n:
            raise BadInputError(f"features must have one row per embedded sample ({n}), got {features.shape[0]}")
    name, cid, stats = most_separable(fits, max_fraction, min_size, cuts)
    if features is not None and name is not None:
        stats["separation"] = separation(features, np.asarray(clusterings[name]) == cid)
    return name, cid, stats


def separation(features: Any, members: Any) -> float:
    """How far a group lies from the rest of its class, in the rest's spread: ``d = ‖Δ‖² / sd_rest(x·Δ)`` with
    ``Δ = μ_group − μ_rest`` of the rows of ``features`` (n, D), ``members`` a boolean mask (n,) of the group.

    It is the standardised difference of the two groups' means along Δ, the group's pattern direction (the
    direction of the pattern CAV, Pahde et al. 2024): the rest's standard deviation (ddof 1) of its rows'
    projections on Δ is the unit. The cut (docs/spray-method.md §8) says how few neighbours a group shares with the
    rest of its class, a local property that a legitimate style with its own neighbourhood has too; ``d`` says how
    far off the group's mean lies, which a feature the rest of the class lacks (a patch, an artifact's channels)
    makes large. 0 when the two means agree; infinite when the rest does not vary along Δ."""
    X = check_matrix(features, "features")
    mask = np.asarray(members)
    if mask.dtype != bool or mask.shape != (X.shape[0],):
        raise BadInputError(f"members must be a boolean mask of shape ({X.shape[0]},), got {mask.dtype} {mask.shape}")
    n_group = int(mask.sum())
    if n_group < 1 or X.shape[0] - n_group < 2:
        raise BadInputError(f"separation needs a group of at least 1 row and a rest of at least 2, got {n_group} "
                            f"and {X.shape[0] - n_group}")
    delta = X[mask].mean(axis=0) - X[~mask].mean(axis=0)
    gap = float(delta @ delta)
    if gap == 0.0:
        return 0.0
    spread = float(np.std(X[~mask] @ delta, ddof=1))
    return gap / spread if spread > 0.0 else math.inf
