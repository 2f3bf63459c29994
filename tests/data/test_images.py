"""Image files as samples: the decoding rule (orientation, palette, CMYK, 16-bit, alpha, TIFF, bombs), the
preprocessing spec on a folder of mixed sizes, and the record of the files in the store."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from spray.attribution import AttributionRun, attribute_dataset
from spray.attribution.methods import get_method, method_params
from spray.data import ImageTransform, load_model, model_hash, open_source
from spray.data.images import decode, pixel_bounds
from spray.data.transforms import IMAGENET
from spray.errors import BadInputError
from spray.store import AuditStore

ORIENTATION = 0x0112


def _save(image: Image.Image, path: Path, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)
    return path


def _pixels(image: Image.Image) -> list:
    return np.asarray(image).tolist()


def test_exif_orientation_is_applied(tmp_path):
    # Orientation 6: the camera was turned; viewers rotate the stored image 90° clockwise.
    stored = np.array([[1, 2, 3], [4, 5, 6]], np.uint8)
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    path = _save(Image.fromarray(stored), tmp_path / "r.png", exif=exif.tobytes())
    assert _pixels(decode(path)) == np.rot90(stored, k=-1).tolist() == [[4, 1], [5, 2], [6, 3]]


def test_exif_rotated_jpegs_take_their_shown_size_when_the_folder_is_opened(tmp_path):
    exif = Image.Exif()
    exif[ORIENTATION] = 8
    _save(Image.new("RGB", (6, 4), (200, 10, 10)), tmp_path / "a" / "0.jpg", exif=exif.tobytes())
    _save(Image.new("RGB", (4, 6), (200, 10, 10)), tmp_path / "a" / "1.jpg")
    dataset = open_source(f"folder:{tmp_path}")
    assert [tuple(dataset[i][0].shape) for i in range(2)] == [(3, 6, 4), (3, 6, 4)]


def test_palette_images_are_expanded_to_rgb(tmp_path):
    image = Image.fromarray(np.array([[0, 1]], np.uint8), mode="P")
    image.putpalette([10, 20, 30, 200, 100, 50])
    path = _save(image, tmp_path / "p.png")
    assert decode(path).mode == "RGB" and _pixels(decode(path)) == [[[10, 20, 30], [200, 100, 50]]]


def test_alpha_is_dropped_not_composited(tmp_path):
    path = _save(Image.new("RGBA", (1, 1), (10, 20, 30, 0)), tmp_path / "a.png")
    grey = _save(Image.new("LA", (1, 1), (77, 0)), tmp_path / "la.png")
    assert _pixels(decode(path)) == [[[10, 20, 30]]] and decode(grey).mode == "L" and _pixels(decode(grey)) == [[77]]


def test_cmyk_is_converted_by_pillows_rule(tmp_path):
    cmyk = Image.new("CMYK", (3, 1))
    cmyk.putpixel((0, 0), (0, 0, 0, 0))
    cmyk.putpixel((1, 0), (255, 0, 0, 0))
    cmyk.putpixel((2, 0), (0, 0, 0, 255))
    path = _save(cmyk, tmp_path / "c.tif")
    assert _pixels(decode(path)) == [[[255, 255, 255], [0, 255, 255], [0, 0, 0]]]
    jpeg = _save(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), tmp_path / "c.jpg", quality=100)
    assert np.abs(np.asarray(decode(jpeg), dtype=int) - [255, 0, 0]).max() <= 2  # red, lossily


def test_sixteen_bit_greyscale_keeps_its_precision(tmp_path):
    path = _save(Image.fromarray(np.array([[0, 1, 32768, 65535]], np.uint16)), tmp_path / "d.png")
    decoded = decode(path)
    assert decoded.mode == "F"
    np.testing.assert_array_equal(np.asarray(decoded), np.array([[0, 1, 32768, 65535]], np.float32) / 65535)
    (tmp_path / "a").mkdir()
    path.rename(tmp_path / "a" / "d.png")
    x, _ = open_source(f"folder:{tmp_path}")[0]
    assert x.shape == (1, 1, 4) and x[0, 0, 1].item() == pytest.approx(1 / 65535, rel=1e-6)


def test_a_decompression_bomb_is_refused_naming_pillows_limit(tmp_path, monkeypatch):
    path = _save(Image.new("L", (8, 8)), tmp_path / "a" / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)
    with pytest.raises(BadInputError) as info:
        open_source(f"folder:{tmp_path}")
    assert str(info.value) == (
        f"image {path} is refused as a possible decompression bomb: Image size (64 pixels) exceeds limit of 20 "
        "pixels, could be decompression bomb DOS attack. (Pillow's limit: twice PIL.Image.MAX_IMAGE_PIXELS = "
        "10 pixels); shrink or remove the file"
    )


def _mixed(root: Path) -> None:
    """Two classes of RGB images of three sizes, one greyscale."""
    _save(Image.new("RGB", (8, 6), (255, 0, 51)), root / "cat" / "0.png")
    _save(Image.new("RGB", (5, 9), (0, 102, 255)), root / "cat" / "1.jpg", quality=100)
    _save(Image.new("L", (12, 12), 51), root / "dog" / "0.png")


def test_a_spec_makes_a_folder_of_mixed_sizes_one_size(tmp_path):
    _mixed(tmp_path)
    with pytest.raises(BadInputError, match=r"1\.jpg is 5×9 \(W×H\), but .*0\.png is 8×6: .*--resize H,W, or "
                                            r"--resize N --crop N"):
        open_source(f"folder:{tmp_path}")
    dataset = open_source(f"folder:{tmp_path}", ImageTransform(resize=4, crop=4, mean=0.2, std=0.5))
    assert dataset.channels == 3 and [tuple(dataset[i][0].shape) for i in range(3)] == [(3, 4, 4)] * 3
    x, y = dataset[2]  # grey 51 = 0.2 on every channel, normalised to 0
    assert y == 1 and torch.allclose(x, torch.zeros(3, 4, 4), atol=1e-6)
    x, _ = dataset[0]  # (255, 0, 51) -> (1.6, -0.4, 0)
    assert torch.allclose(x[:, 0, 0], torch.tensor([1.6, -0.4, 0.0]), atol=1e-6)


def test_grayscale_mode_is_luma(tmp_path):
    _save(Image.new("RGB", (2, 2), (255, 0, 0)), tmp_path / "a" / "0.png")
    x, _ = open_source(f"folder:{tmp_path}", ImageTransform(mode="grayscale"))[0]
    assert x.shape == (1, 2, 2) and x[0, 0, 0].item() == pytest.approx(76 / 255)  # 255 * 299 / 1000


def test_a_preprocessing_spec_for_a_non_image_source_is_refused(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((2, 1, 2, 2), np.float32), y=np.array([0, 1]))
    with pytest.raises(BadInputError, match=r"applies to image sources \(folder:PATH"):
        open_source(f"npz:{tmp_path / 'd.npz'}", ImageTransform(resize=2))


def test_box_bounds_and_thumbnails_come_from_the_normalisation(tmp_path):
    _mixed(tmp_path)
    mean, std = IMAGENET
    dataset = open_source(f"folder:{tmp_path}", ImageTransform(resize=(4, 4), mean=mean, std=std))
    low, high = pixel_bounds(dataset)
    assert low == pytest.approx([-m / s for m, s in zip(mean, std)])
    assert high == pytest.approx([(1 - m) / s for m, s in zip(mean, std)])
    params = method_params("epsilon_gamma_box", {}, dataset)
    assert np.asarray(params["low"]).shape == (3, 1, 1) and params["high"][2] == [[pytest.approx(high[2])]]
    assert method_params("epsilon_gamma_box", {"low": 0, "high": 1}, dataset) == {"low": 0, "high": 1}

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 2))
    store = tmp_path / "audit.h5"
    attribute_dataset(store, model, dataset, AttributionRun(
        get_method("epsilon_gamma_box", **params), model_hash=model_hash(model), model_name="m",
        dataset_name=f"folder:{tmp_path}", progress=False, thumbnail_size=4, allow_nonconservative=True))
    with AuditStore(store) as audit:
        thumbs = audit.read("samples/thumbnail")
        record = audit.attrs()["dataset"]
        assert audit.attribution_info("epsilon_gamma_box")["params"]["low"][0] == [[pytest.approx(low[0])]]
    assert thumbs[0, :, 0, 0].tolist() == [255, 0, 51]  # the pixels, not the normalised inputs
    assert thumbs[2].ravel().tolist() == [51] * 48
    files = ["cat/0.png", "cat/1.jpg", "dog/0.png"]
    assert record["files"] == files and record["root"] == str(tmp_path)
    assert record["sha256"] == [hashlib.sha256((tmp_path / f).read_bytes()).hexdigest() for f in files]
    assert record["transform"] == {"resize": [4, 4], "crop": None, "mode": None, "mean": list(mean),
                                   "std": list(std)}


def test_a_changed_image_or_spec_is_refused_on_resume(tmp_path):
    root = tmp_path / "images"
    for i in range(4):
        _save(Image.new("L", (2, 2), 10 * i), root / "ab"[i % 2] / f"{i}.png")
    model = load_model("tests.data.factories:tiny_model")
    store = tmp_path / "audit.h5"

    def attribute(transform: ImageTransform | None = None) -> None:
        attribute_dataset(store, model, open_source(f"folder:{root}", transform), AttributionRun(
            get_method("epsilon"), model_hash="h", model_name="m", dataset_name="d", progress=False, batch_size=2))

    attribute()
    _save(Image.new("L", (2, 2), 99), root / "b" / "3.png")
    with pytest.raises(BadInputError, match=rf"^image {root / 'b' / '3.png'} changed since audit store .* "
                                            r"recorded it \(sha256 [0-9a-f]{12}…, now [0-9a-f]{12}…\): restore"):
        attribute()
    with pytest.raises(BadInputError, match=r'was made with preprocessing \{"crop": null, .*"resize": null, '
                                            r'"std": null\}, this run asks for \{.*"resize": 2, '):
        attribute(ImageTransform(resize=2))


def test_an_unreadable_image_replaced_after_its_refusal_is_explained_on_resume(tmp_path):
    """A truncated file is found when its batch is read, after other batches were written: replaced, the audit
    resumes (its sample was never written) and the record takes the new file's sha256."""
    root = tmp_path / "images"
    for i in range(4):
        _save(Image.new("L", (2, 2), 10 * i), root / "ab"[i % 2] / f"{i}.png")
    cut = root / "b" / "3.png"  # the last sample: folder a's two, then b's
    whole = cut.read_bytes()
    cut.write_bytes(whole[: whole.index(b"IDAT") + 6])
    model = load_model("tests.data.factories:tiny_model")
    store = tmp_path / "audit.h5"

    def attribute() -> dict:
        return attribute_dataset(store, model, open_source(f"folder:{root}"), AttributionRun(
            get_method("epsilon"), model_hash="h", model_name="m", dataset_name="d", progress=False, batch_size=2))

    with pytest.raises(BadInputError, match=rf"^image {cut} cannot be read: image file is truncated"):
        attribute()
    with AuditStore(store) as audit:
        assert audit.attribution_info("epsilon")["done"] == 2
    cut.write_bytes(whole)
    assert attribute()["computed"] == 2
    with AuditStore(store) as audit:
        assert audit.attrs()["dataset"]["sha256"][3] == hashlib.sha256(whole).hexdigest()
        assert audit.read("samples/label").tolist() == [0, 0, 1, 1]


def test_skip_unreadable_leaves_out_and_records_files_that_cannot_be_decoded(tmp_path):
    for i in range(4):
        _save(Image.new("L", (2, 2), 10 * i), tmp_path / "ab"[i % 2] / f"{i}.png")
    truncated = tmp_path / "b" / "3.png"
    data = truncated.read_bytes()
    truncated.write_bytes(data[: data.index(b"IDAT") + 6])  # a valid header, the pixel data cut short
    (tmp_path / "a" / "junk.png").write_bytes(b"not a png")
    with pytest.raises(BadInputError, match=r"^image .*/a/junk\.png cannot be read: cannot identify image file"):
        open_source(f"folder:{tmp_path}")
    dataset = open_source(f"folder:{tmp_path}", skip_unreadable=True)
    assert [path.name for path, _ in dataset.files] == ["0.png", "2.png", "1.png"]
    junk, cut = (tmp_path / "a" / "junk.png", truncated)
    assert dataset.skipped == [
        (junk, f"image {junk} cannot be read: cannot identify image file '{junk}'; replace or remove the file"),
        (cut, f"image {cut} cannot be read: image file is truncated; replace or remove the file"),
    ]
    assert dataset.record()["skipped"][0] == ["a/junk.png", dataset.skipped[0][1]]
    with pytest.raises(BadInputError, match=r"--skip-unreadable applies to image sources"):
        open_source("tests.data.factories:tiny_dataset", skip_unreadable=True)


def test_metadata_of_skipped_files_is_left_out_with_them(tmp_path):
    for name in ("a.png", "b.png", "c.png"):
        _save(Image.new("L", (1, 1)), tmp_path / name)
    (tmp_path / "b.png").write_bytes(b"junk")
    (tmp_path / "t.csv").write_text("path,label,site\na.png,x,A\nb.png,y,B\nc.png,y,C\n")
    dataset = open_source(f"csv:{tmp_path / 't.csv'}", skip_unreadable=True)
    assert dataset.metadata == {"site": ["A", "C"]} and [label for _, label in dataset.files] == [0, 1]
