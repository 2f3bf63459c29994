"""The scorecard's numbers: detection against ground truth, localisation, and intervals over seeds.

Each function is a definition of docs/benchmark.md, "Metrics"; they take plain arrays and know nothing of
stores or models.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold

from spray.clarc.cav import CAV, MIN_SAMPLES


def detection(flagged: Sequence[int], truth: Sequence[int]) -> tuple[float, float, float]:
    """Precision, recall and F1 of the ``flagged`` sample indices against the ``truth`` ones (0 where
    undefined: nothing flagged, nothing true, no hit)."""
    flagged_set, truth_set = set(flagged), set(truth)
    hit = len(flagged_set & truth_set)
    precision = hit / len(flagged_set) if flagged_set else 0.0
    recall = hit / len(truth_set) if truth_set else 0.0
    f1 = 2 * precision * recall / (precision + recall) if hit else 0.0
    return precision, recall, f1


FOLDS = 5
"""Out-of-fold CAV scores: 5 folds leave at least 4 samples (the CAV's minimum) of a group of 5 to fit on."""


def out_of_fold_cav_auroc(activations: np.ndarray, flagged: np.ndarray, truth: np.ndarray, *,
                          seed: int = 0) -> float | None:
    """AUROC of the true artifact samples (``truth`` (n,) bool) among a class's samples, ranked by
    out-of-fold scores of a signal CAV (spray.clarc.cav) fitted to separate spray's flagged cluster
    (``flagged`` (n,) bool) from the rest of the class in pooled ``activations`` (n, F): F = C channels, or
    C × cells (spray.clarc.activations.pool).

    Each sample's score comes from a CAV fitted without it (stratified :data:`FOLDS`-fold split of the flagged
    labels), so a sample is never scored by a direction it helped fit. None where it cannot be computed:
    fewer than :data:`FOLDS` samples in either flagged group, or no true artifact sample, or all are.
    """
    flagged, truth = np.asarray(flagged, bool), np.asarray(truth, bool)
    if min(flagged.sum(), (~flagged).sum()) < max(FOLDS, MIN_SAMPLES + 1) or truth.all() or not truth.any():
        return None
    scores = np.empty(len(flagged))
    for fit, held in StratifiedKFold(FOLDS, shuffle=True, random_state=seed).split(activations, flagged):
        cav = CAV("signal", random_state=seed).fit(activations[fit][flagged[fit]], activations[fit][~flagged[fit]])
        scores[held] = cav.score(activations[held])
    return float(roc_auc_score(truth, scores))


def best_separated(feature_sets: Sequence[np.ndarray], flagged: np.ndarray, *, seed: int = 0) -> int:
    """The index of the feature set (each (n, F_i), the same n samples) in which spray's flagged cluster is
    best separated from the rest of its class: the largest :func:`out_of_fold_cav_auroc` of the flagged
    labels themselves (ties and sets where it cannot be computed: the earliest). No ground truth chooses, so
    the benchmark may score the CAV in the set chosen (docs/benchmark.md, "CAV retrieval")."""
    flagged = np.asarray(flagged, bool)
    separation = [out_of_fold_cav_auroc(features, flagged, flagged, seed=seed) for features in feature_sets]
    return int(np.argmax([-1.0 if auc is None else auc for auc in separation]))


EVERYWHERE_WITHIN = 0.05
"""Issue 18's target for a correction: accuracy with the artifact in every test image at most this far under
the corrected model's clean accuracy."""
MAX_CLEAN_LOSS = 0.02
"""... and clean accuracy lost to the correction at most this."""
MIN_BALANCED = 0.85
"""... and where the groups are known (the two-class set), balanced accuracy after at least this, in place of the
artifact-everywhere bound (issue 18: where the artifact is the whole image, only group accuracy means anything)."""
TARGET_TOLERANCE = 1e-6
"""Every target's bound holds to this: the accuracies are float32 fractions (an exact 5-point gap of 0.95 and 0.90
is 0.050000012 as stored)."""


MIN_F1 = 0.9
"""Issue 17's detection target: a local artifact's flagged group, at a prevalence of at least
:data:`MIN_F1_FROM`, reaches at least this F1 against the planted images ..."""
MIN_F1_FROM = 0.1
"""... (the prevalence from which :data:`MIN_F1` applies) ..."""
MIN_F1_SMALL = 0.75
"""... and at least this F1 at a smaller prevalence (3 %) ..."""
MIN_CAV_AUROC = 0.95
"""... and the named cluster's out-of-fold CAV retrieves the planted images with an ROC AUC of at least this for a
local artifact ..."""
MIN_CAV_AUROC_GLOBAL = 0.85
"""... and of at least this for a global one."""


def meets_f1_target(f1: float | None, flagged: bool, prevalence: float) -> bool:
    """Whether a local artifact's group is flagged and named with the F1 of issue 17's target for its
    ``prevalence`` (:data:`MIN_F1`, :data:`MIN_F1_SMALL`): an unflagged class meets no target."""
    least = MIN_F1 if prevalence >= MIN_F1_FROM - TARGET_TOLERANCE else MIN_F1_SMALL
    return bool(flagged) and f1 is not None and bool(f1 >= least - TARGET_TOLERANCE)


def meets_cav_target(cav_auroc: float | None, is_global: bool) -> bool:
    """Whether the named cluster's CAV retrieves the planted images to issue 17's target (:data:`MIN_CAV_AUROC`,
    :data:`MIN_CAV_AUROC_GLOBAL`); a CAV that could not be fitted (None) does not."""
    least = MIN_CAV_AUROC_GLOBAL if is_global else MIN_CAV_AUROC
    return cav_auroc is not None and bool(cav_auroc >= least - TARGET_TOLERANCE)


def shortcut_target_met(clean: float, everywhere: float | None, balanced: float | None = None) -> bool:
    """Whether one model's accuracies meet the shortcut half of the correction targets: ``everywhere`` within
    :data:`EVERYWHERE_WITHIN` of ``clean`` — or, given ``balanced``, the balanced accuracy at least
    :data:`MIN_BALANCED` — to :data:`TARGET_TOLERANCE`; a model with no everywhere accuracy meets nothing."""
    if balanced is not None:
        return bool(balanced >= MIN_BALANCED - TARGET_TOLERANCE)
    return everywhere is not None and bool(clean - everywhere <= EVERYWHERE_WITHIN + TARGET_TOLERANCE)


def meets_targets(clean: Sequence[float], everywhere: Sequence[float],
                  balanced: Sequence[float] | None = None) -> bool:
    """Whether a correction meets the accuracy targets (docs/benchmark.md, "Metrics"): the corrected model meets
    :func:`shortcut_target_met` and ``clean`` before − after is at most :data:`MAX_CLEAN_LOSS`; each ``(before,
    after)``, to :data:`TARGET_TOLERANCE`."""
    return (shortcut_target_met(clean[1], everywhere[1], None if balanced is None else balanced[1])
            and clean[0] - clean[1] <= MAX_CLEAN_LOSS + TARGET_TOLERANCE)


def relevance_density(relevance: np.ndarray, masks: np.ndarray) -> float:
    """Mean over samples of (share of |relevance| inside the mask) / (the mask's share of the image area).

    ``relevance`` (k, C, H, W), ``masks`` (k, H, W) in {0, 1}. 1 is what relevance spread evenly gives;
    above 1, the explanation concentrates on the artifact. Samples without relevance count as 0.
    """
    magnitude = np.abs(relevance).sum(1)
    total = magnitude.reshape(len(magnitude), -1).sum(1)
    inside = (magnitude * masks).reshape(len(magnitude), -1).sum(1)
    share = np.divide(inside, total, out=np.zeros_like(total), where=total > 0)
    area = masks.reshape(len(masks), -1).mean(1)
    return float(np.mean(share / area))


def mask_iou(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Mean over samples of the intersection over union of two binary masks (k, H, W): |P ∩ T| / |P ∪ T|.

    1 where the masks agree; a sample where both are empty counts as 1. Non-zero entries are inside a mask.
    """
    predicted, truth = np.asarray(predicted, bool), np.asarray(truth, bool)
    flat = (len(truth), -1)
    inter = (predicted & truth).reshape(flat).sum(1)
    union = (predicted | truth).reshape(flat).sum(1)
    return float(np.mean(np.divide(inter, union, out=np.ones(len(union)), where=union > 0)))


def wilson(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval (95 % for ``z = 1.96``) of a rate ``successes / trials``; (0, 1) for none."""
    if trials == 0:
        return 0.0, 1.0
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return max(0.0, centre - half), min(1.0, centre + half)


def mean_interval(values: Sequence[float | None], confidence: float = 0.95) -> tuple[float, float, float, int] | None:
    """Mean of the values that are not None or NaN, with its Student-t interval: (mean, low, high, n);
    the interval is the mean itself for one value, and None for no value."""
    kept = np.array([v for v in values if v is not None and not math.isnan(v)], float)
    if not kept.size:
        return None
    mean = float(kept.mean())
    if kept.size == 1:
        return mean, mean, mean, 1
    half = float(stats.t.ppf(0.5 + confidence / 2, kept.size - 1) * kept.std(ddof=1) / math.sqrt(kept.size))
    return mean, mean - half, mean + half, int(kept.size)
