"""The artifacts paste what they say where they say, and their masks mark exactly that."""

from __future__ import annotations

import numpy as np
import pytest

from spray.benchmark.artifacts import Blur, Brightness, Cast, Frame, Patch, Tag, checker, glyphs
from spray.errors import BadInputError

RNG = np.random.default_rng(0)


def _images(n: int = 3, value: float = 0.0) -> np.ndarray:
    return np.full((n, 1, 28, 28), value, np.float32)


def test_checker_alternates_cells_of_the_given_size():
    assert checker(4, 2).tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]]


def test_glyphs_set_text_in_a_3x5_font_with_a_blank_column_between_characters():
    tag = glyphs("A7")
    assert tag.shape == (5, 7)
    assert tag[:, 3].tolist() == [0, 0, 0, 0, 0]
    assert tag[0].tolist() == [0, 1, 0, 0, 1, 1, 1]


def test_a_tag_with_a_character_outside_the_font_is_refused():
    with pytest.raises(BadInputError, match=r"a tag's text must use the characters 37ABX, got 'Q'"):
        glyphs("Q")


def test_a_fixed_patch_is_pasted_at_its_position_and_its_mask_is_its_box():
    x = _images(value=0.5)
    out, masks = Patch(6, 2, (1, 1)).apply(x, RNG)
    assert np.array_equal(out[:, 0, 1:7, 1:7], np.broadcast_to(checker(6, 2), (3, 6, 6)))
    assert masks.sum(axis=(1, 2)).tolist() == [36, 36, 36]
    assert np.array_equal(masks[0, 1:7, 1:7], np.ones((6, 6)))
    assert (out[:, 0][masks == 0] == 0.5).all()
    assert (x == 0.5).all()  # the input is left as it was


def test_a_random_patch_lands_inside_the_image_at_different_places():
    out, masks = Patch(5, 1).apply(_images(n=20), np.random.default_rng(1))
    assert masks.sum(axis=(1, 2)).tolist() == [25] * 20
    corners = {tuple(np.argwhere(m)[0]) for m in masks}
    assert len(corners) > 10
    assert all(r + 5 <= 28 and c + 5 <= 28 for r, c in corners)
    assert np.array_equal(out[:, 0][masks > 0].reshape(20, 25), np.tile(checker(5, 1).ravel(), (20, 1)))


def test_a_tag_that_does_not_fit_is_refused():
    with pytest.raises(BadInputError, match=r"an artifact of 5×7 at \(25, 0\) does not fit images of 28×28"):
        Tag("AB", (25, 0)).apply(_images(), RNG)


def test_a_frame_covers_the_border_only():
    out, masks = Frame(2, 0.6).apply(_images(), RNG)
    assert masks[0].sum() == 28 * 28 - 24 * 24
    assert np.allclose(out[:, 0][masks > 0], 0.6)
    assert (out[:, 0, 2:26, 2:26] == 0).all()


def test_global_artifacts_change_every_pixel_they_should_and_mask_the_whole_image():
    x = _images(value=0.0)
    x[:, 0, 14, 14] = 1.0
    bright, bright_masks = Brightness(0.3).apply(x, RNG)
    assert np.allclose(bright[:, 0, 0, 0], 0.3) and np.allclose(bright[:, 0, 14, 14], 1.0)
    blurred, blur_masks = Blur(1.0).apply(x, RNG)
    assert blurred[0, 0, 14, 14] == pytest.approx(1 / (2 * np.pi), rel=0.05)  # a Gaussian's peak, sigma 1
    assert blurred.sum() == pytest.approx(x.sum(), rel=1e-3)
    assert Brightness.is_global and Blur.is_global and not Patch.is_global
    assert (bright_masks == 1).all() and (blur_masks == 1).all()


def test_a_colour_cast_tints_each_channel_and_refuses_grey_images():
    cast = Cast((1.0, 0.5, 0.0), (0.2, 0.1, 0.0))
    out, masks = cast.apply(np.full((2, 3, 28, 28), 0.5, np.float32), RNG)
    assert np.allclose(out[:, :, 3, 3], [0.6, 0.325, 0.0])
    assert masks.shape == (2, 28, 28) and masks.all() and cast.is_global and cast.channels == 3
    with pytest.raises(BadInputError, match=r"^a colour cast needs RGB images \(n, 3, H, W\), got 1 channel\(s\)$"):
        cast.apply(_images(), RNG)
