"""ImageTransform: torchvision's classification-preset steps, checked against values computed by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from spray.data import ImageTransform
from spray.data.transforms import IMAGENET
from spray.errors import BadInputError


def _ramp() -> Image.Image:
    """4×4 greyscale, every row 0, 70, 140, 210."""
    return Image.fromarray(np.tile(np.array([0, 70, 140, 210], np.uint8), (4, 1)))


def test_resize_is_antialiased_bilinear_as_computed_by_hand():
    # Halving: each output pixel's triangle filter, widened by the factor 2, covers three input pixels at
    # distances 0.5, 0.5, 1.5 from its centre -> weights 3/7, 3/7, 1/7: (0*3 + 70*3 + 140) / 7 = 50 and
    # (70 + 140*3 + 210*3) / 7 = 160. (Plain bilinear without antialiasing would give 35 and 175.)
    out = ImageTransform(resize=(2, 2)).geometry(_ramp())
    assert np.asarray(out).tolist() == [[50, 160], [50, 160]]


def test_resize_int_sets_the_shorter_side_and_truncates_the_longer():
    # 6×4 (W×H) -> shorter side 2, longer int(2 * 6 / 4) = 3; a portrait image keeps its orientation.
    transform = ImageTransform(resize=2)
    assert transform.geometry(Image.new("L", (6, 4))).size == (3, 2)
    assert transform.geometry(Image.new("L", (4, 7))).size == (2, 3)
    assert transform.output_size(6, 4) == (3, 2)


def test_centre_crop_rounds_offsets_half_to_even_as_torchvision():
    image = Image.fromarray(np.arange(20, dtype=np.uint8).reshape(4, 5))  # W 5, H 4
    # (4 - 3) / 2 = 0.5 rounds to 0 (top); (5 - 2) / 2 = 1.5 rounds to 2 (left).
    out = ImageTransform(crop=(3, 2)).geometry(image)
    assert np.asarray(out).tolist() == [[2, 3], [7, 8], [12, 13]]


def test_crop_larger_than_the_image_pads_with_zeros_on_both_sides():
    image = Image.fromarray(np.full((2, 2), 9, np.uint8))
    out = np.asarray(ImageTransform(crop=4).geometry(image))
    expected = np.zeros((4, 4), np.uint8)
    expected[1:3, 1:3] = 9
    assert out.tolist() == expected.tolist()


def test_resize_then_crop_is_the_preset_order():
    image = Image.fromarray(np.tile(np.arange(8, dtype=np.uint8) * 30, (4, 1)))  # 8×4
    out = ImageTransform(resize=2, crop=2).geometry(image)
    resized = image.resize((4, 2), Image.Resampling.BILINEAR)
    assert out.size == (2, 2) and np.asarray(out).tolist() == np.asarray(resized)[:, 1:3].tolist()


def test_normalise_per_channel_and_bounds_are_the_inputs_of_pixels_zero_and_one():
    transform = ImageTransform(mean=[0.5, 0.25], std=[0.25, 0.5])
    x = torch.tensor([[[0.2]], [[1.0]]])
    assert torch.allclose(transform.normalise(x), torch.tensor([[[-1.2]], [[1.5]]]))
    assert transform.bounds(2) == ([-2.0, -0.5], [2.0, 1.5])
    assert ImageTransform(mean=0.5, std=0.5).bounds(3) == ([-1.0] * 3, [1.0] * 3)
    assert ImageTransform().bounds(3) is None


def test_normalise_equals_torch_arithmetic_bit_for_bit_on_a_channels_last_image_and_is_contiguous():
    x = torch.rand(5, 6, 3, generator=torch.Generator().manual_seed(0)).permute(2, 0, 1)  # as decoded: H, W, C
    out = ImageTransform(mean=IMAGENET[0], std=IMAGENET[1]).normalise(x)
    mean, std = (torch.tensor(v).reshape(-1, 1, 1) for v in IMAGENET)
    assert out.shape == (3, 5, 6) and out.dtype == torch.float32 and out.is_contiguous()
    assert torch.equal(out, (x - mean) / std)


@pytest.mark.parametrize(("text", "expected"), [
    ({"resize": "256", "crop": "224", "normalize": "imagenet"},
     ImageTransform(resize=256, crop=224, mean=IMAGENET[0], std=IMAGENET[1])),
    ({"resize": "20,30", "normalize": "0.5,0.25", "mode": "grayscale"},
     ImageTransform(resize=(20, 30), mean=[0.5], std=[0.25], mode="grayscale")),
    ({"normalize": "0.1,0.2,0.3,1,2,3"}, ImageTransform(mean=[0.1, 0.2, 0.3], std=[1, 2, 3])),
])
def test_command_line_text_parses_to_the_spec(text, expected):
    assert ImageTransform.from_text(**text) == expected


def test_spec_round_trips_through_its_json_form():
    spec = ImageTransform(resize=(3, 4), crop=2, mode="rgb", mean=IMAGENET[0], std=IMAGENET[1])
    assert ImageTransform.from_dict(spec.to_dict()) == spec
    assert spec.to_dict() == {"resize": [3, 4], "crop": 2, "mode": "rgb", "mean": [0.485, 0.456, 0.406],
                              "std": [0.229, 0.224, 0.225]}


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"resize": 0}, "resize must be a positive integer or a pair (H, W) of them, got 0"),
    ({"crop": [1, 2, 3]}, "crop must be a positive integer or a pair (H, W) of them, got [1, 2, 3]"),
    ({"mode": "cmyk"}, "mode must be one of rgb, grayscale, got 'cmyk'"),
    ({"mean": [0.5]}, "normalisation needs both mean and std (one value, or one per channel)"),
    ({"mean": [0.5, 0.5], "std": [1.0]}, "mean has 2 values but std has 1: give one of each per channel"),
    ({"mean": 0.5, "std": 0}, "std must be positive, got [0.0]"),
    ({"mean": [0, 0], "std": [1, 1], "mode": "rgb"},
     "mean and std have 2 values, but mode 'rgb' gives 3 channel(s): give one value, or one per channel"),
])
def test_bad_specs_name_the_parameter(kwargs, message):
    with pytest.raises(BadInputError) as info:
        ImageTransform(**kwargs)
    assert str(info.value) == message


@pytest.mark.parametrize(("text", "message"), [
    ({"resize": "big"}, "--resize must be N or H,W (positive integers), got 'big'"),
    ({"normalize": "0.5"}, "--normalize must be imagenet, MEAN,STD or one mean per channel then one std per "
                           "channel (e.g. 0.485,0.456,0.406,0.229,0.224,0.225), got '0.5'"),
])
def test_bad_command_line_text_names_the_option(text, message):
    with pytest.raises(BadInputError) as info:
        ImageTransform.from_text(**text)
    assert str(info.value) == message
