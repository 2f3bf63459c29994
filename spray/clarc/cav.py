"""Concept activation vectors: the direction (or subspace) in a layer's pooled activations that marks the
artifact.

Three estimators, each pointing from the rest of the class towards the artifact samples:

- ``"signal"`` (default; the pattern CAV of Pahde et al. 2024): ``v ∝ μ_artifact − μ_rest``, the difference
  of the two groups' mean activations. It is the covariance of the activations with the artifact label up
  to a positive factor, so it follows the artifact's *signal* rather than whatever direction best cancels
  noise, and aligns better with the true artifact than a classifier's normal.
- ``"svm"``: the normal of a linear SVM (scikit-learn ``LinearSVC``, balanced class weights) separating
  artifact from rest samples.
- ``"subspace"``: an orthonormal basis ``V`` (k, C) whose first row is the signal CAV; the further rows are
  the directions along which the artifact samples spread more about the rest's mean than the rest do (the
  leading eigenvectors, with positive eigenvalue, of ``Σ_artifact + d dᵀ − Σ_rest`` with ``d`` projected
  out, ``d = μ_artifact − μ_rest``): a diffuse or global confounder (a random position, a varying strength)
  moves the activations along several directions, not one. The rank ``k`` is chosen from the data: a
  direction is added while it raises the out-of-fold AUC of the subspace score (below) by at least
  ``min_gain``.

Separation quality is measured out of fold (stratified, seeded ``folds``-fold split; every sample is scored
by a direction fitted without it): ``auc_`` is the ROC AUC of the projection ``a · v`` on the first
direction; for ``"subspace"``, ``subspace_auc_`` is that of the score ``Σ_j (v_jᵀ(a − μ_rest))² / σ_j²``
(``σ_j²`` the rest's variance along ``v_j``): how far a sample lies from the rest inside the subspace. The
final directions are then refitted on all samples.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold

from spray._checks import check_choice
from spray.errors import BadInputError, GroupSizeError

#: Fewest samples per group (artifact, rest) to fit a CAV and score each sample out of fold.
MIN_SAMPLES = 4
#: Folds of the out-of-fold AUC (fewer where a group has fewer samples).
FOLDS = 5
#: The subspace CAV's largest rank, and the out-of-fold AUC a further direction must add to be kept.
MAX_RANK = 8
MIN_GAIN = 0.01
_METHODS = ("signal", "svm", "subspace")


def check_cav_sizes(n_artifact: int, n_rest: int, *, label: int, cluster: str | None = None) -> None:
    """Refuse a cluster (``n_artifact`` samples) or rest of class ``label`` (``n_rest``) too small for a CAV."""
    if min(n_artifact, n_rest) < MIN_SAMPLES:
        raise GroupSizeError(
            f"{f'cluster {cluster}' if cluster else 'the cluster'} has {n_artifact} samples and the rest of class "
            f"{label} {n_rest}; fitting a CAV needs at least {MIN_SAMPLES} in each: choose a larger cluster "
            "(`spray rank --json` lists each cluster's members)"
        )


class CAV:
    """A concept activation vector (or subspace) fitted on pooled activations of artifact vs other samples.

    Args:
        method: ``"signal"`` (difference of means), ``"svm"`` (linear SVM normal) or ``"subspace"``.
        folds: of the out-of-fold AUC (at most the smaller group's size).
        C: the SVM's regularisation (``"svm"`` only).
        max_rank, min_gain: the subspace's largest rank and the AUC gain a further direction must bring.
        random_state: seeds the folds (and the SVM).

    Attributes (after :meth:`fit`): ``direction_`` (C,) float32 unit vector (the basis' first row),
    ``basis_`` (k, C) float32 orthonormal rows (k = 1 unless ``"subspace"``), ``rank_`` k, ``auc_``
    out-of-fold ROC AUC of ``a · direction_``, ``subspace_auc_`` that of the subspace score at rank k (None
    unless ``"subspace"``), ``rank_aucs_`` the subspace score's out-of-fold AUC per rank tried,
    ``train_auc_`` AUC of ``direction_`` on all samples, ``n_artifact_``, ``n_rest_``.
    """

    def __init__(self, method: str = "signal", *, folds: int = FOLDS, C: float = 1.0, max_rank: int = MAX_RANK,
                 min_gain: float = MIN_GAIN, random_state: int | None = 0) -> None:
        self.method = method
        self.folds = folds
        self.C = C
        self.max_rank = max_rank
        self.min_gain = min_gain
        self.random_state = random_state

    def fit(self, A_artifact: np.ndarray, A_rest: np.ndarray) -> CAV:
        """Fit on activations ``A_artifact`` (n_a, C) and ``A_rest`` (n_r, C) of the same layer."""
        check_choice(self.method, "CAV method", _METHODS)
        if isinstance(self.folds, bool) or not isinstance(self.folds, int) or self.folds < 2:
            raise BadInputError(f"CAV folds must be an integer of at least 2, got {self.folds!r}")
        if isinstance(self.max_rank, bool) or not isinstance(self.max_rank, int) or self.max_rank < 1:
            raise BadInputError(f"CAV max_rank must be a positive integer, got {self.max_rank!r}")
        A_artifact = _matrix(A_artifact, "A_artifact")
        A_rest = _matrix(A_rest, "A_rest")
        if A_artifact.shape[1] != A_rest.shape[1]:
            raise BadInputError(
                f"A_artifact and A_rest must have the same number of channels, got {A_artifact.shape[1]} "
                f"and {A_rest.shape[1]}"
            )
        for name, A in (("artifact", A_artifact), ("rest", A_rest)):
            if len(A) < MIN_SAMPLES:
                raise GroupSizeError(
                    f"a CAV needs at least {MIN_SAMPLES} {name} samples (to fit it and score each sample out of "
                    f"fold), got {len(A)}; choose a larger cluster, or a class with more samples"
                )
        X = np.concatenate([A_artifact, A_rest])
        t = np.concatenate([np.ones(len(A_artifact), bool), np.zeros(len(A_rest), bool)])
        splits = StratifiedKFold(min(self.folds, len(A_artifact), len(A_rest)), shuffle=True,
                                 random_state=self.random_state).split(X, t)
        ranks = self.max_rank if self.method == "subspace" else 1
        linear = np.zeros(len(t))
        spread = np.zeros((ranks, len(t)))  # the subspace score at each rank, out of fold
        for train, test in splits:
            basis = self._basis(X[train], t[train], ranks)
            linear[test] = X[test] @ basis[0]
            spread[: len(basis), test] = _spread(X[train][~t[train]], basis, X[test])
            spread[len(basis) :, test] = spread[len(basis) - 1, test]  # a fold with fewer directions keeps its last
        self.auc_ = float(roc_auc_score(t, linear))
        self.basis_ = self._basis(X, t, ranks)
        self.rank_aucs_: list[float] = []
        self.subspace_auc_: float | None = None
        if self.method == "subspace":
            self.rank_aucs_ = [float(roc_auc_score(t, s)) for s in spread[: len(self.basis_)]]
            rank = 1
            while rank < len(self.rank_aucs_) and self.rank_aucs_[rank] >= self.rank_aucs_[rank - 1] + self.min_gain:
                rank += 1
            self.basis_ = self.basis_[:rank]
            self.subspace_auc_ = self.rank_aucs_[rank - 1]
        self.basis_ = self.basis_.astype(np.float32)
        self.rank_ = len(self.basis_)
        self.direction_ = self.basis_[0]
        self.train_auc_ = float(roc_auc_score(t, X @ self.direction_))
        self.n_artifact_, self.n_rest_ = len(A_artifact), len(A_rest)
        return self

    def score(self, A: np.ndarray) -> np.ndarray:
        """Projection ``a · v`` of activations (n, C) on the first direction: larger means more artifact-like."""
        return _matrix(A, "A") @ self.direction_

    def _basis(self, X: np.ndarray, t: np.ndarray, ranks: int) -> np.ndarray:
        """Up to ``ranks`` orthonormal rows (k, C), the first the CAV of :attr:`method`."""
        difference = X[t].mean(0) - X[~t].mean(0)
        if self.method == "svm":
            from sklearn.svm import LinearSVC

            svm = LinearSVC(C=self.C, class_weight="balanced", random_state=self.random_state,
                            dual="auto", max_iter=10_000)
            v = svm.fit(X, t).coef_[0]
        else:
            v = difference
        norm = float(np.linalg.norm(v))
        if not np.isfinite(norm) or norm == 0.0:
            raise BadInputError(
                "the artifact and the other samples have identical mean activations in this layer, so there "
                "is no direction to fit; choose another layer or cluster"
            )
        v = v / norm
        # A separating direction has no inherent sign: orient it towards the artifact samples.
        v = v if float(v @ difference) >= 0 else -v
        if ranks == 1:
            return v[None]
        centre = X[~t].mean(0)
        excess = _second_moment(X[t] - centre) - _second_moment(X[~t] - centre)
        other = np.eye(len(v)) - np.outer(v, v)
        values, vectors = np.linalg.eigh(other @ excess @ other)
        order = np.argsort(values)[::-1][: ranks - 1]
        keep = order[values[order] > 1e-9 * max(float(np.abs(values).max()), 1e-300)]
        return np.vstack([v[None], vectors[:, keep].T])


def _second_moment(D: np.ndarray) -> np.ndarray:
    return D.T @ D / len(D)


def _spread(rest: np.ndarray, basis: np.ndarray, X: np.ndarray) -> np.ndarray:
    """The subspace score of ``X`` at each rank 1..k (k, n): ``Σ_{j ≤ rank} (v_jᵀ(x − μ))² / σ_j²`` with μ,
    σ_j² the mean and variance of ``rest`` along each row of ``basis``."""
    coordinates = (X - rest.mean(0)) @ basis.T
    variance = ((rest - rest.mean(0)) @ basis.T).var(0)
    return np.cumsum(coordinates**2 / np.maximum(variance, 1e-12), axis=1).T


def _matrix(A: np.ndarray, name: str) -> np.ndarray:
    A = np.asarray(A, dtype=np.float64)
    if A.ndim != 2:
        raise BadInputError(f"{name} must be (n_samples, n_channels) pooled activations, got shape {A.shape}")
    if not np.isfinite(A).all():
        raise BadInputError(f"{name} holds non-finite activations")
    return A
