"""CAV: the signal CAV is the normalised difference of means; both estimators separate separable data."""

from __future__ import annotations

import numpy as np
import pytest

from spray.clarc.cav import CAV, MIN_SAMPLES
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


@pytest.mark.parametrize("method", ["signal", "svm"])
def test_cav_of_separable_groups_has_held_out_auc_one_and_points_to_the_artifact(method):
    artifact, rest, direction = blobs(shift=12.0)
    cav = CAV(method, random_state=0).fit(artifact, rest)
    assert cav.auc_ == pytest.approx(1.0)
    assert cav.direction_ @ direction > 0.5
    assert cav.score(artifact).min() > cav.score(rest).max()


def test_cav_of_identical_distributions_has_chance_auc():
    rng = np.random.default_rng(1)
    aucs = [CAV(random_state=s).fit(rng.normal(size=(40, 8)), rng.normal(size=(40, 8))).auc_ for s in range(5)]
    assert 0.2 < np.mean(aucs) < 0.8


def test_cav_held_out_split_is_seeded():
    artifact, rest, _ = blobs(shift=1.0)
    a, b = CAV(random_state=3).fit(artifact, rest), CAV(random_state=3).fit(artifact, rest)
    assert a.auc_ == b.auc_ and np.array_equal(a.direction_, b.direction_)


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
