"""Data sources: each scheme round-trips, and every bad source is a BadInputError naming it."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from spray.data import open_source
from spray.errors import BadInputError


def _arrays(n: int = 6) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.random((n, 1, 4, 4), dtype=np.float32), np.arange(n) % 3


def test_npz_round_trips_inputs_labels_and_label_names(tmp_path):
    x, y = _arrays()
    np.savez(tmp_path / "d.npz", x=x, y=y, label_names=np.array(["a", "b", "c"]))
    dataset = open_source(f"npz:{tmp_path / 'd.npz'}")
    assert len(dataset) == 6 and dataset.label_names == ["a", "b", "c"]
    sample, label = dataset[4]
    assert sample.dtype == torch.float32 and torch.equal(sample, torch.from_numpy(x[4])) and label == 1


def test_uint8_images_are_scaled_to_unit_range(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.full((2, 1, 2, 2), 255, np.uint8), y=np.array([0, 1]))
    sample, _ = open_source(f"npz:{tmp_path / 'd.npz'}")[0]
    assert torch.equal(sample, torch.ones(1, 2, 2))


@pytest.mark.parametrize("keys", [("x", "y"), ("data", "label")])
def test_hdf5_reads_x_y_or_virelay_style_data_label(tmp_path, keys):
    x, y = _arrays()
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f[keys[0]], f[keys[1]] = x, y
    dataset = open_source(f"hdf5:{tmp_path / 'd.h5'}")
    assert len(dataset) == 6 and torch.equal(dataset[2][0], torch.from_numpy(x[2])) and dataset[2][1] == 2


def test_folder_maps_sorted_class_folders_to_labels(tmp_path):
    for name, value in (("cat", 0), ("dog", 255)):
        (tmp_path / name).mkdir()
        for i in range(2):
            Image.fromarray(np.full((5, 7, 3), value, np.uint8)).save(tmp_path / name / f"{i}.png")
    dataset = open_source(f"folder:{tmp_path}")
    assert dataset.label_names == ["cat", "dog"] and len(dataset) == 4
    x, y = dataset[3]
    assert x.shape == (3, 5, 7) and y == 1 and float(x.max()) == 1.0


def test_folder_image_of_another_size_is_named(tmp_path):
    (tmp_path / "a").mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "a" / "0.png")
    Image.fromarray(np.zeros((5, 4), np.uint8)).save(tmp_path / "a" / "1.png")
    with pytest.raises(BadInputError, match=r"1\.png is 4×5 \(W×H\), but .*0\.png is 4×4.*same size"):
        open_source(f"folder:{tmp_path}")


def test_factory_source_returns_the_dataset_with_label_names_attribute():
    dataset = open_source("tests.data.factories:tiny_dataset")
    assert len(dataset) == 4 and dataset.label_names is None


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("npz:/nonexistent/d.npz", "does not exist"),
        ("zip:/tmp/x", "unknown scheme 'zip'"),
        ("tsv:data.tsv/", "unknown scheme 'tsv'"),
        ("npz:", "names no path"),
        ("tests.data.factories:single_tensors", "sample 0 is Tensor; samples must be"),
        ("tests.data.factories:float_labels", "sample 0's label is 0.5"),
        ("tests.data.factories:empty", "empty dataset"),
        ("no_such_module_xyz:build", "module 'no_such_module_xyz' cannot be imported"),
        ("tests.data.factories:missing", "has no attribute 'missing'"),
        ("tests.data.factories:raises", "the factory raised RuntimeError"),
        ("tests.data.factories:not_a_dataset", "returned int, not a Dataset"),
        ("nocolon", "not npz:PATH"),
    ],
)
def test_bad_sources_name_the_problem(spec, message):
    with pytest.raises(BadInputError, match=message):
        open_source(spec)


def test_an_existing_file_behind_an_unknown_scheme_is_not_taken_for_a_module(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.tsv").write_text("1\t2\n")
    with pytest.raises(BadInputError, match="unknown scheme 'tsv'"):
        open_source("tsv:x.tsv")


def test_npz_without_y_lists_what_it_has(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((2, 3), np.float32))
    with pytest.raises(BadInputError, match=r"lacks array\(s\) \['y'\]; it has \['x'\]"):
        open_source(f"npz:{tmp_path / 'd.npz'}")


def test_float_labels_and_integer_inputs_are_refused(tmp_path):
    np.savez(tmp_path / "a.npz", x=np.zeros((2, 3), np.float32), y=np.array([0.0, 1.0]))
    with pytest.raises(BadInputError, match="labels have dtype float64"):
        open_source(f"npz:{tmp_path / 'a.npz'}")
    np.savez(tmp_path / "b.npz", x=np.zeros((2, 3), np.int32), y=np.array([0, 1]))
    with pytest.raises(BadInputError, match="inputs have dtype int32"):
        open_source(f"npz:{tmp_path / 'b.npz'}")


def test_hdf5_reads_lazily_pickles_and_finds_label_names(tmp_path):
    import pickle

    x = np.random.default_rng(0).random((5, 6, 7), dtype=np.float32)  # (n, H, W): one channel
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f["x"], f["y"] = x, np.array([0, 1, 1, 0, 1])
        f.attrs["label_names"] = '["no", "yes"]'
    dataset = open_source(f"hdf5:{tmp_path / 'd.h5'}")
    assert dataset.label_names == ["no", "yes"]
    assert not any(isinstance(v, np.ndarray) and v.size == x.size for v in vars(dataset).values())
    clone = pickle.loads(pickle.dumps(dataset))  # as DataLoader workers receive it
    assert torch.equal(clone[3][0], torch.from_numpy(x[3])[None]) and clone[3][1] == 0
    dataset.close()


def test_hdf5_without_known_keys_lists_its_datasets(tmp_path):
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f["images"] = np.zeros((2, 3), np.float32)
    with pytest.raises(BadInputError, match=r"needs datasets x and y \(or data and label\); it has \['images'\]"):
        open_source(f"hdf5:{tmp_path / 'd.h5'}")


def test_npz_problems_are_named(tmp_path):
    np.savez(tmp_path / "last.npz", x=np.zeros((2, 8, 8, 3), np.float32), y=np.array([0, 1]))
    with pytest.raises(BadInputError, match="looks channels-last"):
        open_source(f"npz:{tmp_path / 'last.npz'}")
    np.savez(tmp_path / "short.npz", x=np.zeros((3, 4), np.float32), y=np.array([0, 1]))
    with pytest.raises(BadInputError, match=r"labels have shape \(2,\), expected \(3,\)"):
        open_source(f"npz:{tmp_path / 'short.npz'}")
    np.save(tmp_path / "one.npy", np.zeros(3))
    with pytest.raises(BadInputError, match="holds a single array"):
        open_source(f"npz:{tmp_path / 'one.npy'}")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(BadInputError, match="junk.npz is not an npz archive"):
        open_source(f"npz:{tmp_path / 'junk.npz'}")


def test_folder_greyscale_one_channel_colour_makes_all_rgb_and_skips_other_files(tmp_path):
    for name in ("b", "a"):
        (tmp_path / name / "sub").mkdir(parents=True)
        Image.fromarray(np.full((3, 4), 128, np.uint8)).save(tmp_path / name / "sub" / "g.png")
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    (tmp_path / "a" / ".hidden.png").write_bytes(b"")
    grey = open_source(f"folder:{tmp_path}")
    assert grey.label_names == ["a", "b"] and len(grey) == 2
    assert grey[0][0].shape == (1, 3, 4) and grey[1][1] == 1
    Image.fromarray(np.zeros((3, 4, 4), np.uint8), "RGBA").save(tmp_path / "b" / "c.png")
    colour = open_source(f"folder:{tmp_path}")
    assert [x.shape for x, _ in (colour[i] for i in range(3))] == [(3, 3, 4)] * 3


def test_folder_problems_are_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInputError, match="class folder 'empty' holds no images"):
        open_source(f"folder:{tmp_path}")
    (tmp_path / "empty" / "bad.png").write_bytes(b"garbage")
    with pytest.raises(BadInputError, match="bad.png cannot be read"):
        open_source(f"folder:{tmp_path}")
    with pytest.raises(BadInputError, match="has no class sub-folders"):
        open_source(f"folder:{tmp_path / 'empty'}")


def test_factory_label_names_from_torchvision_classes_or_a_wrapper_for_slotted_datasets():
    assert open_source("tests.data.factories:with_classes").label_names == ["cat", "dog"]
    slotted = open_source("tests.data.factories:slotted")
    assert slotted.label_names is None and len(slotted) == 2 and slotted[1][1] == 1


def test_a_names_file_lets_a_folder_hold_a_subset_of_the_classes(tmp_path):
    for name in ("dog", "bird"):
        (tmp_path / name).mkdir()
        Image.new("L", (2, 2)).save(tmp_path / name / "0.png")
    (tmp_path / "classes.txt").write_text("cat\ndog\nfish\nbird\n")
    dataset = open_source(f"folder:{tmp_path}?names=classes.txt")
    assert dataset.label_names == ["cat", "dog", "fish", "bird"]
    assert [(path.parent.name, label) for path, label in dataset.files] == [("bird", 3), ("dog", 1)]
