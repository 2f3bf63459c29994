"""The two-class set's backgrounds come from scikit-image's bundled textures and sit behind the digit."""

from __future__ import annotations

import builtins

import numpy as np
import pytest

from spray.benchmark.backgrounds import Background, Waterbirds, texture
from spray.errors import BadInputError


def test_a_texture_is_read_only_grey_in_the_unit_range():
    grass = texture("grass")
    assert grass.shape == (512, 512) and grass.dtype == np.float32 and not grass.flags.writeable
    assert 0 <= grass.min() < grass.max() <= 1


def test_an_unknown_texture_is_refused():
    with pytest.raises(BadInputError, match=r"^unknown background texture 'sand'; choose one of grass, gravel, brick$"):
        texture("sand")


def test_a_missing_scikit_image_is_refused_with_the_extra_to_install(monkeypatch):
    texture.cache_clear()
    real = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", lambda name, *a, **k: (_ for _ in ()).throw(ImportError(name))
                        if name.startswith("skimage") else real(name, *a, **k))
    with pytest.raises(BadInputError, match=r"^the benchmark's background textures need scikit-image, which is not "
                                            r"installed: pip install 'spray\[benchmark\]'$"):
        texture("brick")
    monkeypatch.undo()
    texture.cache_clear()


def test_the_background_shows_where_there_is_no_ink_and_ink_stays_white():
    x = np.zeros((2, 1, 28, 28), np.float32)
    x[:, :, 10:18, 10:18] = 1.0
    out = Background("gravel", alpha=0.5, zoom=2).apply(x, np.random.default_rng(0))
    assert (out[:, :, 10:18, 10:18] == 1.0).all() and (x[:, :, :10] == 0).all()  # x untouched
    assert 0 < out[:, :, :10].max() <= 0.5 and not np.array_equal(out[0], out[1])  # a crop per image


def test_the_groups_are_class_and_background():
    spec = Waterbirds((3, 8), (Background("grass"), Background("brick")), poisoned=1)
    x, y = np.zeros((4, 1, 28, 28), np.float32), np.array([0, 0, 1, 1])
    _, groups = spec.compose(x, y, np.array([False, True, False, True]), np.random.default_rng(0))
    assert groups.tolist() == [0, 1, 3, 2]
    assert spec.group_names[2] == "8/grass"
