"""The scorecard's definitions (docs/benchmark.md, "Metrics") on inputs whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest

from spray.benchmark.metrics import (best_separated, detection, mask_iou, mean_interval, meets_cav_target,
                                     meets_f1_target, meets_targets, out_of_fold_cav_auroc, relevance_density,
                                     shortcut_target_met, wilson)


def test_detection_counts_hits_against_the_flagged_and_the_true_samples():
    assert detection([1, 2, 3, 4], [3, 4, 5]) == (0.5, pytest.approx(2 / 3), pytest.approx(4 / 7))
    assert detection([], [1]) == (0.0, 0.0, 0.0)
    assert detection([1], [2]) == (0.0, 0.0, 0.0)


def test_wilson_intervals_match_their_closed_form():
    assert wilson(0, 10) == (0.0, pytest.approx(0.27754, abs=1e-5))
    assert wilson(5, 10) == (pytest.approx(0.23659, abs=1e-5), pytest.approx(0.76341, abs=1e-5))
    assert wilson(0, 0) == (0.0, 1.0)


def test_mean_interval_is_a_student_t_interval_over_the_values_given():
    mean, low, high, n = mean_interval([1.0, 2.0, 3.0, None, float("nan")])
    assert (mean, n) == (2.0, 3)
    assert high - mean == pytest.approx(4.302653 / np.sqrt(3), rel=1e-6)  # t(0.975, 2) * s / sqrt(n), s = 1
    assert low == pytest.approx(2 * mean - high)
    assert mean_interval([0.5]) == (0.5, 0.5, 0.5, 1)
    assert mean_interval([None]) is None


def test_relevance_density_is_the_share_inside_the_mask_over_its_area_share():
    relevance = np.zeros((2, 1, 2, 2), np.float32)
    relevance[0, 0] = [[3, 1], [0, 0]]          # 3/4 of |R| in a mask of 1/4 of the image: 3
    relevance[1, 0] = [[-1, 1], [1, 1]]         # evenly spread, by magnitude: 1
    masks = np.zeros((2, 2, 2), np.float32)
    masks[:, 0, 0] = 1
    assert relevance_density(relevance, masks) == pytest.approx(2.0)


def test_the_out_of_fold_cav_ranks_the_true_samples_first_where_the_flagged_group_holds_them():
    rng = np.random.default_rng(0)
    activations = rng.normal(size=(60, 8))
    truth = np.arange(60) < 15
    activations[truth, 0] += 4.0
    assert out_of_fold_cav_auroc(activations, truth, truth) == 1.0
    wrong = np.arange(60) >= 45  # a flagged group of other samples: the CAV points elsewhere
    assert out_of_fold_cav_auroc(activations, wrong, truth) < 0.6
    assert out_of_fold_cav_auroc(activations, np.arange(60) < 4, truth) is None  # too few flagged to fold


def test_the_cav_features_are_those_that_separate_the_flagged_cluster_best_without_the_truth():
    rng = np.random.default_rng(0)
    flagged = np.arange(60) < 15
    blurred, sharp = rng.normal(size=(60, 8)), rng.normal(size=(60, 5))
    blurred[flagged, 0] += 0.5  # the cluster half a standard deviation off: its own out-of-fold AUC ~0.6
    sharp[flagged, 2] += 6.0    # far off: 1.0
    assert best_separated([blurred, sharp], flagged) == 1 and best_separated([sharp, blurred], flagged) == 0
    assert best_separated([blurred, blurred.copy()], flagged) == 0  # a tie: the earliest
    # Where no set can be scored (too few flagged to fold), the first.
    assert best_separated([blurred, sharp], np.arange(60) < 4) == 0


@pytest.mark.parametrize(("clean", "everywhere", "met"), [
    ((0.95, 0.94), (0.60, 0.90), True),    # 4 points under clean, 1 point of clean lost
    ((0.95, 0.94), (0.60, 0.88), False),   # 6 points under clean
    ((0.95, 0.92), (0.60, 0.92), False),   # 3 points of clean lost
    ((0.90, 0.95), (0.60, 0.91), True),    # clean rose: within 5 points of the corrected model's clean accuracy
    ((0.96, 0.95), (0.60, float(np.float32(0.90))), True),  # exactly 5 points, as float32 accuracies store it
    ((0.95, 0.95), (0.60, 0.8999), False),
])
def test_a_correction_meets_the_targets_within_5_points_of_clean_losing_at_most_2(clean, everywhere, met):
    assert meets_targets(clean, everywhere) is met


def test_with_known_groups_the_balanced_accuracy_stands_for_the_everywhere_bound():
    assert meets_targets((0.95, 0.94), (0.5, 0.5), balanced=(0.6, 0.85)) is True
    assert meets_targets((0.95, 0.94), (0.5, 0.94), balanced=(0.6, 0.84)) is False
    assert meets_targets((0.95, 0.92), (0.5, 0.5), balanced=(0.6, 0.90)) is False  # 3 points of clean lost


def test_one_models_shortcut_target_is_its_everywhere_gap_or_its_balanced_accuracy():
    assert shortcut_target_met(np.float32(0.95), np.float32(0.90)) is True  # the exact 5-point gap, as stored
    assert shortcut_target_met(0.95, 0.899) is False
    assert shortcut_target_met(0.95, 0.5, balanced=0.85) is True and shortcut_target_met(0.95, 0.95, 0.84) is False
    assert shortcut_target_met(0.95, None) is False  # no everywhere accuracy (the control): nothing is met


@pytest.mark.parametrize("f1, flagged, prevalence, met", [
    (0.9, True, 0.1, True), (np.float32(0.9), True, 0.1, True), (0.89, True, 0.3, False),
    (1.0, False, 0.3, False),  # named but not flagged: no target met
    (0.75, True, 0.03, True), (0.74, True, 0.03, False), (None, True, 0.03, False)])
def test_the_f1_target_asks_more_of_a_group_of_ten_percent_than_of_three(f1, flagged, prevalence, met):
    assert meets_f1_target(f1, flagged, prevalence) is met


def test_the_cav_target_of_a_global_artifact_is_lower_than_a_local_ones():
    assert (meets_cav_target(0.95, False), meets_cav_target(0.949, False), meets_cav_target(0.86, True),
            meets_cav_target(0.849, True), meets_cav_target(None, True)) == (True, False, True, False, False)


def test_mask_iou_is_the_mean_over_samples_of_intersection_over_union():
    predicted = np.zeros((3, 3, 3), bool)
    truth = np.zeros((3, 3, 3), bool)
    predicted[0, :2, :2], truth[0, 1:, 1:] = True, True      # 1 shared pixel of 4 + 4 - 1 = 7
    predicted[1, 0], truth[1, 0] = True, True                 # the same row: 1
    predicted[2, 0, 0], truth[2, 2, 2] = True, True           # disjoint: 0
    assert mask_iou(predicted, truth) == pytest.approx((1 / 7 + 1 + 0) / 3)
    assert mask_iou(np.zeros((1, 2, 2)), np.zeros((1, 2, 2))) == 1.0
    assert mask_iou(np.ones((1, 2, 2), np.float32), np.eye(2)[None]) == 0.5  # non-zero counts as inside
