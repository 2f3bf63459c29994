"""The grid names its cases, and each case's data carries its ground truth exactly where it says."""

from __future__ import annotations

import numpy as np
import pytest

from spray.benchmark.cases import ARTIFACTS, Case, Size, grid, make_case
from spray.benchmark.data import load_images
from spray.errors import BadInputError

TINY = Size(train_per_class=40, test_per_class=10, epochs=1)


@pytest.fixture(scope="module")
def digits():
    return load_images("digits")


def test_the_grid_has_every_cell_on_both_splits_and_the_control_once_per_seed():
    cases = grid(["patch_fixed", "control"], (0.1, 0.3), seeds=2)
    assert [c.name for c in cases] == [
        "patch_fixed-p10-cnn-s0-dev", "patch_fixed-p10-cnn-s1-dev", "patch_fixed-p30-cnn-s0-dev",
        "patch_fixed-p30-cnn-s1-dev", "control-p00-cnn-s0-dev", "control-p00-cnn-s1-dev",
        "patch_fixed-p10-cnn-s100-heldout", "patch_fixed-p10-cnn-s101-heldout", "patch_fixed-p30-cnn-s100-heldout",
        "patch_fixed-p30-cnn-s101-heldout", "control-p00-cnn-s100-heldout", "control-p00-cnn-s101-heldout",
    ]
    assert [c.poisoned_class for c in cases[::6]] == [8, 3]


def test_the_architectures_are_an_axis_of_the_grid_and_the_cnn_its_default():
    cases = grid(["patch_fixed", "control"], (0.3,), seeds=1, architectures=("cnn", "resnet"))
    assert [c.name for c in cases] == [
        "patch_fixed-p30-cnn-s0-dev", "patch_fixed-p30-resnet-s0-dev", "control-p00-cnn-s0-dev",
        "control-p00-resnet-s0-dev", "patch_fixed-p30-cnn-s100-heldout", "patch_fixed-p30-resnet-s100-heldout",
        "control-p00-cnn-s100-heldout", "control-p00-resnet-s100-heldout",
    ]
    assert {c.architecture for c in grid(["tag"], (0.1,), seeds=2)} == {"cnn"}


def test_the_grid_runs_the_splits_asked_for_in_their_order():
    held_out = grid(["tag"], (0.1,), seeds=2, splits=("heldout",))
    assert [c.name for c in held_out] == ["tag-p10-cnn-s100-heldout", "tag-p10-cnn-s101-heldout"]
    assert grid(["tag"], (0.1,), seeds=1, splits=("heldout", "dev")) == grid(["tag"], (0.1,), seeds=1)
    with pytest.raises(BadInputError, match=r"^unknown split 'test' \(--splits\); choose from dev, heldout$"):
        grid(["tag"], (0.1,), seeds=1, splits=("dev", "test"))


def test_an_unknown_case_is_refused_with_the_known_ones():
    with pytest.raises(BadInputError, match="^unknown benchmark case 'patch'; choose from patch_fixed, "
                                            "patch_random, patch_large, tag, frame, brightness, blur, cast, "
                                            "waterbirds, control$"):
        grid(["patch", "frame"], (0.1,), seeds=1)


def test_every_artifact_differs_between_the_splits():
    assert all(kinds["dev"] != kinds["heldout"] for name, kinds in ARTIFACTS.items() if name != "control")


def test_a_case_plants_its_artifact_in_the_poisoned_class_and_records_where(digits):
    data = make_case(Case("patch_fixed", 0.3, "cnn", 0, "dev"), digits, TINY)
    x, y = data.train
    assert x.shape == (400, 1, 28, 28) and np.bincount(y).tolist() == [40] * 10
    assert len(data.planted) == 12 and (y[data.planted] == 8).all()
    assert data.masks.shape == (12, 28, 28) and data.masks.sum() == 12 * 36
    assert np.array_equal(x[data.planted][:, 0, 1:7, 1:7], np.broadcast_to(
        ARTIFACTS["patch_fixed"]["dev"].apply(x[:1], np.random.default_rng(0))[0][0, 0, 1:7, 1:7], (12, 6, 6)))
    clean, everywhere = data.clean_test[0], data.everywhere_test[0]
    assert clean.shape == (100, 1, 28, 28) and not np.array_equal(clean, everywhere)
    assert np.array_equal(clean[:, :, 10:, 10:], everywhere[:, :, 10:, 10:])  # only the corner changed
    assert not data.is_global


def test_a_case_is_the_same_every_time_and_another_seed_draws_other_images(digits):
    case = Case("tag", 0.3, "cnn", 1, "heldout")
    first, again = make_case(case, digits, TINY), make_case(case, digits, TINY)
    assert np.array_equal(first.train[0], again.train[0]) and np.array_equal(first.planted, again.planted)
    other = make_case(Case("tag", 0.3, "cnn", 2, "heldout"), digits, TINY)
    assert not np.array_equal(first.train[0], other.train[0])
    assert (first.train[1][first.planted] == 3).all()


def test_a_colour_cast_case_renders_the_digits_as_rgb_and_casts_only_the_planted_images(digits):
    data = make_case(Case("cast", 0.3, "cnn", 0, "dev"), digits, TINY)
    x, planted = data.train[0], data.planted
    clean = np.setdiff1d(np.arange(len(x)), planted)
    assert x.shape == (400, 3, 28, 28) and data.clean_test[0].shape == (100, 3, 28, 28)
    assert (x[clean, 0] == x[clean, 1]).all() and (x[clean, 1] == x[clean, 2]).all()  # grey: R = G = B
    grey = make_case(Case("control", 0.0, "cnn", 0, "dev"), digits, TINY).train[0][planted]  # the same draw
    gain, lift = np.array([1.0, 0.8, 0.55])[:, None, None], np.array([0.15, 0.08, 0.0])[:, None, None]
    assert np.allclose(x[planted], lift + (1 - lift) * gain * grey) and data.is_global
    assert data.everywhere_test[0].shape == (100, 3, 28, 28) and np.allclose(data.everywhere_test[0][:, :, 0, 0],
                                                                             [0.15, 0.08, 0.0])


def test_the_two_class_set_ties_the_background_to_the_class_and_records_the_groups(digits):
    data = make_case(Case("waterbirds", 0.3, "cnn", 0, "dev"), digits, TINY)
    (x, y), (x_test, y_test) = data.train, data.clean_test
    groups_train, groups_test = data.groups
    assert x.shape == (80, 1, 28, 28) and np.bincount(y).tolist() == [40, 40] and data.label_names == ("3", "8")
    assert data.group_names == ("3/grass", "3/brick", "8/grass", "8/brick")
    assert np.bincount(groups_train).tolist() == [28, 12, 12, 28] and np.bincount(groups_test).tolist() == [5] * 4
    assert (groups_train // 2 == y).all() and (groups_test // 2 == y_test).all()
    assert data.poisoned_class == 1 and np.array_equal(data.planted, np.flatnonzero(groups_train == 2))
    assert data.is_global and data.masks.shape == (12, 28, 28)
    assert (x > 0).mean() > 0.95  # the texture shows behind the digit
    assert not np.array_equal(data.everywhere_test[0], x_test) and np.array_equal(data.everywhere_test[1], y_test)
    heldout = make_case(Case("waterbirds", 0.3, "cnn", 100, "heldout"), digits, TINY)
    assert heldout.label_names == ("4", "9") and heldout.poisoned_class == 0
    assert (heldout.groups[0][heldout.planted] == 1).all()


def test_the_control_plants_nothing(digits):
    data = make_case(Case("control", 0.0, "cnn", 0, "dev"), digits, TINY)
    assert data.planted.size == 0 and data.everywhere_test is None


def test_a_prevalence_below_ten_planted_images_is_refused(digits):
    with pytest.raises(BadInputError, match=r"^case blur-p10-cnn-s0-dev: 10% of 40 images of class 8 is 4, "
                                            r"fewer than the 10 planted images a case needs"):
        make_case(Case("blur", 0.1, "cnn", 0, "dev"), digits, TINY)


def test_a_size_larger_than_the_data_is_refused(digits):
    with pytest.raises(BadInputError, match=r"^digits has 178 images of class 0, fewer than the 350 \+ 150"):
        make_case(Case("blur", 0.1, "cnn", 0, "dev"), digits, Size(350, 150, 1))
