"""The demo data: deterministic, the stamp exactly where the ground truth says, splits consistent."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spray.demo import build_model, paste_artifact, poisoned_digits, train_dataset
from spray.demo.digits import DEFAULT_ARTIFACT
from spray.errors import BadInputError


@pytest.fixture(scope="module")
def data():
    return poisoned_digits(0)


def _has_stamp(x: np.ndarray) -> np.ndarray:
    """Per image: whether the default stamp's region equals the stamp exactly."""
    (r, c), (h, w) = DEFAULT_ARTIFACT.position, DEFAULT_ARTIFACT.shape
    return np.all(x[:, 0, r : r + h, c : c + w] == DEFAULT_ARTIFACT.patch, axis=(1, 2))


def test_same_seed_same_data_other_seed_other_split(data):
    again, other = poisoned_digits(0), poisoned_digits(1)
    assert np.array_equal(again.train.x, data.train.x) and np.array_equal(again.planted, data.planted)
    assert not np.array_equal(other.planted, data.planted)


def test_shapes_dtypes_and_value_range(data):
    assert data.train.x.shape[1:] == (1, 32, 32) and data.train.x.dtype == np.float32
    assert data.train.y.dtype == np.int64
    assert len(data.train) + len(data.clean_test) == 1797
    assert data.train.x.min() >= 0.0 and data.train.x.max() <= 1.0


def test_planted_samples_carry_the_stamp_and_no_other_training_sample_does(data):
    stamped = np.flatnonzero(_has_stamp(data.train.x))
    assert np.array_equal(stamped, data.planted)
    assert set(data.train.y[data.planted]) == {data.poisoned_class}
    n_class = int((data.train.y == data.poisoned_class).sum())
    assert len(data.planted) == round(data.fraction * n_class)


def test_test_splits_differ_only_by_the_stamp(data):
    assert np.array_equal(data.clean_test.y, data.everywhere_test.y)
    assert not _has_stamp(data.clean_test.x).any()
    assert _has_stamp(data.everywhere_test.x).all()
    assert np.array_equal(np.flatnonzero(_has_stamp(data.poisoned_test.x)), data.planted_test)
    outside = np.ones((32, 32), bool)
    outside[DEFAULT_ARTIFACT.image_mask() > 0] = False
    assert np.array_equal(data.clean_test.x[..., outside], data.everywhere_test.x[..., outside])


def test_paste_artifact_copies_and_works_for_torch_and_numpy():
    x = np.zeros((2, 3, 32, 32), np.float32)
    out = paste_artifact(x)
    assert x.sum() == 0 and _has_stamp(out[:, :1]).all()
    assert torch.equal(paste_artifact(torch.from_numpy(x)), torch.from_numpy(out))
    with pytest.raises(BadInputError, match="cannot paste a 12×12 artifact"):
        paste_artifact(np.zeros((1, 4, 4)))


def test_cli_factories_and_model_shapes():
    dataset = train_dataset()
    x, y = dataset[0]
    assert x.shape == (1, 32, 32) and dataset.label_names == [str(d) for d in range(10)]
    model = build_model(10, seed=0).eval()
    assert model(x[None]).shape == (1, 10)
    assert torch.equal(build_model(10, seed=0)[0][0].weight, model[0][0].weight)


def test_bad_parameters_are_named():
    with pytest.raises(BadInputError, match="poisoned_class must be a digit"):
        poisoned_digits(0, poisoned_class=11)
    with pytest.raises(BadInputError, match="fraction must be in"):
        poisoned_digits(0, fraction=1.5)


def test_specks_are_shared_by_the_test_versions_and_switch_off():
    plain, speckled = poisoned_digits(0, specks=0.0), poisoned_digits(0)
    changed = np.any(plain.clean_test.x != speckled.clean_test.x, axis=(1, 2, 3))
    assert 0.3 < changed.mean() < 0.7  # about half the images carry a speck
    outside = DEFAULT_ARTIFACT.image_mask() == 0
    assert np.array_equal(
        speckled.clean_test.x[..., outside], speckled.everywhere_test.x[..., outside]
    )
    with pytest.raises(BadInputError, match="specks must be a probability"):
        poisoned_digits(0, specks=2.0)


def test_splits_are_read_only_and_unknown_split_is_named(data):
    with pytest.raises(ValueError):
        data.train.x[0, 0, 0, 0] = 1.0
    with pytest.raises(BadInputError, match="unknown split 'val'"):
        data.as_dataset("val")


def test_paste_artifact_blends_through_a_partial_mask_at_its_position():
    from spray.demo.digits import Artifact

    artifact = Artifact(np.ones((2, 2), np.float32), np.array([[1, 0.5], [0, 0]], np.float32), (3, 4))
    out = paste_artifact(np.zeros((1, 1, 8, 8), np.float32), artifact)
    assert out[0, 0, 3, 4] == 1.0 and out[0, 0, 3, 5] == 0.5 and out.sum() == 1.5
    assert np.array_equal(artifact.image_mask((8, 8)) > 0, out[0, 0] > 0)
