"""CAV: the signal CAV is the normalised difference of means; every estimator separates separable data; the
subspace CAV's rank follows the data."""

from __future__ import annotations

import numpy as np
import pytest

from spray.clarc.cav import CAV, MIN_SAMPLES, check_cav_sizes
from spray.errors import BadInputError


def blobs(n_artifact=30, n_rest=60, channels=16, shift=3.0, seed=0):
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=channels)
    direction /= np.linalg.norm(direction)
    rest = rng.normal(size=(n_rest, channels))
    artifact = rng.normal(size=(n_artifact, channels)) + shift * direction
    return artifact, rest, direction


def test_signal_cav_is_the_normalised_difference_of_means():
    artifact, rest, _ = blobs()
    cav = CAV("signal").fit(artifact, rest)
    expected = artifact.mean(0) - rest.mean(0)
    np.testing.assert_allclose(cav.direction_, expected / np.linalg.norm(expected), rtol=1e-5, atol=1e-6)
    assert cav.direction_.dtype == np.float32
    assert abs(np.linalg.norm(cav.direction_) - 1) < 1e-6


@pytest.mark.parametrize("method", ["signal", "svm", "subspace"])
def test_cav_of_separable_groups_has_out_of_fold_auc_one_and_points_to_the_artifact(method):
    artifact, rest, direction = blobs(shift=12.0)
    cav = CAV(method, random_state=0).fit(artifact, rest)
    assert cav.auc_ == pytest.approx(1.0)
    assert cav.direction_ @ direction > 0.5
    assert cav.score(artifact).min() > cav.score(rest).max()


def test_cav_of_identical_distributions_has_chance_auc():
    rng = np.random.default_rng(1)
    aucs = [CAV(random_state=s).fit(rng.normal(size=(40, 8)), rng.normal(size=(40, 8))).auc_ for s in range(5)]
    assert 0.2 < np.mean(aucs) < 0.8


def test_cav_folds_are_seeded():
    artifact, rest, _ = blobs(shift=1.0)
    a, b = CAV(random_state=3).fit(artifact, rest), CAV(random_state=3).fit(artifact, rest)
    assert a.auc_ == b.auc_ and np.array_equal(a.direction_, b.direction_)
    assert CAV(random_state=4).fit(artifact, rest).auc_ != a.auc_


def test_out_of_fold_auc_scores_each_sample_with_a_direction_fitted_without_it():
    # One artifact sample far on the wrong side: fitted with it the direction still separates the rest, but
    # out of fold it is scored by the others' direction and ranks last.
    artifact, rest, direction = blobs(n_artifact=8, n_rest=8, shift=6.0)
    artifact[0] = rest.mean(0) - 20 * direction
    cav = CAV(folds=8).fit(artifact, rest)
    assert cav.auc_ == pytest.approx(7 / 8)
    assert cav.rank_ == 1 and cav.subspace_auc_ is None and cav.rank_aucs_ == []


def two_directions(seed=0, n=40):
    """Artifact samples shifted along one of two orthogonal directions each (a confounder that varies)."""
    rng = np.random.default_rng(seed)
    rest = rng.normal(size=(2 * n, 12))
    artifact = rng.normal(size=(n, 12))
    artifact[: n // 2, 0] += 3.0
    artifact[n // 2 :, 1] += 3.0
    return artifact, rest


def test_subspace_cav_adds_the_directions_the_artifact_spreads_along():
    artifact, rest = two_directions()
    cav = CAV("subspace").fit(artifact, rest)
    assert cav.rank_ == 2 and cav.basis_.shape == (2, 12) and cav.basis_.dtype == np.float32
    np.testing.assert_allclose(cav.basis_ @ cav.basis_.T, np.eye(2), atol=1e-5)
    np.testing.assert_allclose(cav.direction_, CAV("signal").fit(artifact, rest).direction_, atol=1e-6)
    # the plane of the two shifts: both lie (almost) inside the subspace
    inside = np.linalg.norm(cav.basis_[:, :2], axis=0)
    assert inside.min() > 0.9
    assert cav.rank_aucs_[1] >= cav.rank_aucs_[0] + 0.01 and cav.subspace_auc_ == cav.rank_aucs_[1]


def test_subspace_cav_of_a_single_shift_keeps_rank_one():
    artifact, rest, _ = blobs(shift=4.0)
    cav = CAV("subspace").fit(artifact, rest)
    assert cav.rank_ == 1
    assert cav.subspace_auc_ == cav.rank_aucs_[0]
    assert all(later < cav.rank_aucs_[0] + 0.01 for later in cav.rank_aucs_[1:2])


def test_subspace_rank_is_capped_by_max_rank():
    artifact, rest = two_directions()
    assert CAV("subspace", max_rank=1).fit(artifact, rest).rank_ == 1


def test_group_sizes_below_the_minimum_are_refused_with_both_sizes():
    with pytest.raises(BadInputError) as raised:
        check_cav_sizes(MIN_SAMPLES - 1, 30, label=8, cluster="8:kmeans_3:2")
    assert str(raised.value) == (
        f"cluster 8:kmeans_3:2 has {MIN_SAMPLES - 1} samples and the rest of class 8 30; fitting a CAV needs at "
        f"least {MIN_SAMPLES} in each: choose a larger cluster (`spray rank --json` lists each cluster's members)")
    check_cav_sizes(MIN_SAMPLES, MIN_SAMPLES, label=8)


def test_cav_with_too_few_samples_says_the_minimum():
    artifact, rest, _ = blobs(n_artifact=MIN_SAMPLES - 1)
    with pytest.raises(BadInputError, match=f"at least {MIN_SAMPLES} artifact samples"):
        CAV().fit(artifact, rest)


def test_cav_rejects_unknown_method_and_unpooled_activations():
    artifact, rest, _ = blobs()
    with pytest.raises(BadInputError, match="signal"):
        CAV("pca").fit(artifact, rest)
    with pytest.raises(BadInputError, match="pooled activations"):
        CAV().fit(artifact[:, :, None], rest[:, :, None])
    with pytest.raises(BadInputError, match="CAV folds must be an integer of at least 2, got 1"):
        CAV(folds=1).fit(artifact, rest)
    with pytest.raises(BadInputError, match="CAV max_rank must be a positive integer, got 0"):
        CAV("subspace", max_rank=0).fit(artifact, rest)
