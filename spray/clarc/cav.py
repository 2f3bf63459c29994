"""Concept activation vectors: the direction in a layer's (pooled) activations that marks the artifact.

Two estimators, both returning a unit vector ``v`` (C,) that points from the rest of the class towards the
artifact samples:

- ``"signal"`` (default; the pattern CAV of Pahde et al. 2024): ``v ∝ μ_artifact − μ_rest``, the difference
  of the two groups' mean activations. It is the covariance of the activations with the artifact label up
  to a positive factor, so it follows the artifact's *signal* rather than whatever direction best cancels
  noise, and aligns better with the true artifact than a classifier's normal.
- ``"svm"``: the normal of a linear SVM (scikit-learn ``LinearSVC``, balanced class weights) separating
  artifact from rest samples.

Separation quality: ``auc_`` is the ROC AUC of the projection ``a · v`` on held-out samples, for a direction
fitted on the other samples of a seeded stratified split (``test_size`` of each group held out). The final
``direction_`` is then refitted on all samples.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split

from spray._checks import check_choice
from spray.errors import BadInputError

#: Fewest samples per group (artifact, rest) to fit a CAV and hold one out for its AUC.
MIN_SAMPLES = 4
_METHODS = ("signal", "svm")


class CAV:
    """A concept activation vector fitted on pooled activations of artifact vs other samples.

    Args:
        method: ``"signal"`` (difference of means) or ``"svm"`` (linear SVM normal).
        test_size: fraction of each group held out to measure ``auc_``.
        C: the SVM's regularisation (``"svm"`` only).
        random_state: seeds the held-out split (and the SVM).

    Attributes (after :meth:`fit`): ``direction_`` (C,) float32 unit vector, ``auc_`` held-out ROC AUC,
    ``train_auc_`` AUC of ``direction_`` on all samples, ``n_artifact_``, ``n_rest_``.
    """

    def __init__(self, method: str = "signal", *, test_size: float = 0.25, C: float = 1.0,
                 random_state: int | None = 0) -> None:
        self.method = method
        self.test_size = test_size
        self.C = C
        self.random_state = random_state

    def fit(self, A_artifact: np.ndarray, A_rest: np.ndarray) -> CAV:
        """Fit on activations ``A_artifact`` (n_a, C) and ``A_rest`` (n_r, C) of the same layer."""
        check_choice(self.method, "CAV method", _METHODS)
        if not 0.0 < self.test_size < 1.0:
            raise BadInputError(f"CAV test_size must be in (0, 1), got {self.test_size!r}")
        A_artifact = _matrix(A_artifact, "A_artifact")
        A_rest = _matrix(A_rest, "A_rest")
        if A_artifact.shape[1] != A_rest.shape[1]:
            raise BadInputError(
                f"A_artifact and A_rest must have the same number of channels, got {A_artifact.shape[1]} "
                f"and {A_rest.shape[1]}"
            )
        for name, A in (("artifact", A_artifact), ("rest", A_rest)):
            if len(A) < MIN_SAMPLES:
                raise BadInputError(
                    f"a CAV needs at least {MIN_SAMPLES} {name} samples (to fit it and hold some out for its "
                    f"AUC), got {len(A)}; choose a larger cluster, or a class with more samples"
                )
        X = np.concatenate([A_artifact, A_rest])
        t = np.concatenate([np.ones(len(A_artifact), bool), np.zeros(len(A_rest), bool)])
        train, test = train_test_split(
            np.arange(len(t)), test_size=self.test_size, stratify=t, random_state=self.random_state
        )
        if t[train].all() or not t[train].any() or t[test].all() or not t[test].any():
            raise BadInputError(
                f"the held-out split left a group empty ({len(A_artifact)} artifact, {len(A_rest)} rest "
                "samples); increase test_size or the number of samples"
            )
        held_out = self._direction(X[train], t[train])
        self.auc_ = float(roc_auc_score(t[test], X[test] @ held_out))
        self.direction_ = self._direction(X, t).astype(np.float32)
        self.train_auc_ = float(roc_auc_score(t, X @ self.direction_))
        self.n_artifact_, self.n_rest_ = len(A_artifact), len(A_rest)
        return self

    def score(self, A: np.ndarray) -> np.ndarray:
        """Projection ``a · v`` of activations (n, C): larger means more artifact-like."""
        return _matrix(A, "A") @ self.direction_

    def _direction(self, X: np.ndarray, t: np.ndarray) -> np.ndarray:
        difference = X[t].mean(0) - X[~t].mean(0)
        if self.method == "signal":
            v = difference
        else:
            from sklearn.svm import LinearSVC

            svm = LinearSVC(C=self.C, class_weight="balanced", random_state=self.random_state,
                            dual="auto", max_iter=10_000)
            v = svm.fit(X, t).coef_[0]
        norm = float(np.linalg.norm(v))
        if not np.isfinite(norm) or norm == 0.0:
            raise BadInputError(
                "the artifact and the other samples have identical mean activations in this layer, so there "
                "is no direction to fit; choose another layer or cluster"
            )
        v = v / norm
        # A separating direction has no inherent sign: orient it towards the artifact samples.
        return v if float(v @ difference) >= 0 else -v


def _matrix(A: np.ndarray, name: str) -> np.ndarray:
    A = np.asarray(A, dtype=np.float64)
    if A.ndim != 2:
        raise BadInputError(f"{name} must be (n_samples, n_channels) pooled activations, got shape {A.shape}")
    if not np.isfinite(A).all():
        raise BadInputError(f"{name} holds non-finite activations")
    return A
