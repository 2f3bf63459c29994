"""Data sources: ``npz:PATH``, ``hdf5:PATH``, ``folder:PATH`` or ``MOD:FACTORY`` -> a torch Dataset.

Every dataset yields ``(x, y)`` with ``x`` a float32 tensor and ``y`` an int; it has a ``label_names``
attribute (a list of class names, or None when the source does not name its classes). Integer images
(uint8) are scaled to [0, 1] by 1/255; other integer inputs are refused, since their scale is unknown.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from spray.data._imports import call_factory
from spray.errors import BadInputError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def _as_input(x: Any, where: str) -> torch.Tensor:
    array = np.asarray(x)
    if array.dtype == np.uint8:
        return torch.from_numpy(array.astype(np.float32) / 255.0)
    if not np.issubdtype(array.dtype, np.floating):
        raise BadInputError(
            f"{where}: inputs have dtype {array.dtype}; spray takes float inputs (or uint8 images, scaled by "
            "1/255). Convert them, e.g. x.astype('float32') / max_value"
        )
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def _check_labels(y: np.ndarray, n: int, where: str) -> np.ndarray:
    if y.ndim != 1 or y.shape[0] != n:
        raise BadInputError(f"{where}: labels have shape {y.shape}, expected ({n},) to match the inputs")
    if not np.issubdtype(y.dtype, np.integer):
        raise BadInputError(f"{where}: labels have dtype {y.dtype}; they must be integer class indices")
    if n and y.min() < 0:
        raise BadInputError(f"{where}: label {int(y.min())} at sample {int(np.argmin(y))} is negative")
    return y.astype(np.int64)


class ArrayDataset(Dataset):
    """Samples held in (or read lazily from) arrays ``x`` (n, ...) and ``y`` (n,)."""

    def __init__(self, x: Any, y: np.ndarray, where: str, label_names: list[str] | None = None) -> None:
        self.x, self.y, self.where, self.label_names = x, y, where, label_names

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return _as_input(self.x[i], f"{self.where}, sample {i}"), int(self.y[i])


def _npz(path: Path) -> Dataset:
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - numpy raises several kinds for foreign files
        raise BadInputError(f"npz file {path} cannot be read: {exc}") from None
    with archive:
        missing = {"x", "y"} - set(archive.files)
        if missing:
            raise BadInputError(f"npz file {path} lacks array(s) {sorted(missing)}; it has {archive.files}")
        x, y = archive["x"], archive["y"]
        names = [str(s) for s in archive["label_names"]] if "label_names" in archive.files else None
    _as_input(x[:1], f"npz file {path}")
    return ArrayDataset(x, _check_labels(y, len(x), f"npz file {path}"), f"npz file {path}", names)


def _hdf5(path: Path) -> Dataset:
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise BadInputError(f"hdf5 file {path} cannot be read: {exc}") from None
    for x_key, y_key in (("x", "y"), ("data", "label")):
        if x_key in f and y_key in f:
            x, y = f[x_key], np.asarray(f[y_key])
            _as_input(x[:1], f"hdf5 file {path}")
            return ArrayDataset(x, _check_labels(y, x.shape[0], f"hdf5 file {path}"), f"hdf5 file {path}")
    keys = sorted(f)
    f.close()
    raise BadInputError(f"hdf5 file {path} needs datasets x and y (or data and label); it has {keys}")


class FolderDataset(Dataset):
    """Images in one sub-folder per class (class names sorted -> label indices), read with Pillow."""

    def __init__(self, root: Path) -> None:
        classes = sorted(p.name for p in root.iterdir() if p.is_dir())
        if not classes:
            raise BadInputError(f"folder {root} has no class sub-folders (one folder of images per class)")
        self.files = [
            (path, label)
            for label, name in enumerate(classes)
            for path in sorted((root / name).iterdir())
            if path.suffix.lower() in IMAGE_SUFFIXES
        ]
        if not self.files:
            raise BadInputError(f"folder {root}: its class folders {classes} hold no images")
        self.label_names = classes
        self.shape = self._load(self.files[0][0]).shape

    @staticmethod
    def _load(path: Path) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as image:
                array = np.asarray(image.convert("RGB") if image.mode not in ("L", "RGB") else image)
        except (OSError, UnidentifiedImageError) as exc:
            raise BadInputError(f"image {path} cannot be read: {exc}") from None
        return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.files[i]
        array = self._load(path)
        if array.shape != self.shape:
            raise BadInputError(
                f"image {path} has shape {array.shape} (C, H, W), but {self.files[0][0]} has {self.shape}: "
                "all images must have the same size and channels"
            )
        return _as_input(array, f"image {path}"), label


def open_source(spec: str) -> Dataset:
    """The dataset a ``SOURCE`` string names (module docstring); errors name the spec and the problem."""
    scheme, sep, rest = spec.partition(":")
    if scheme in ("npz", "hdf5", "folder") and sep:
        path = Path(rest)
        if not path.exists():
            raise BadInputError(f"data source {spec!r}: {path} does not exist")
        return {"npz": _npz, "hdf5": _hdf5, "folder": FolderDataset}[scheme](path)
    if not sep:
        raise BadInputError(
            f"data source {spec!r} is not npz:PATH, hdf5:PATH, folder:PATH or MOD:FACTORY"
        )
    dataset = call_factory(spec, "data source")
    if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
        raise BadInputError(
            f"data source {spec!r}: the factory returned {type(dataset).__name__}, not a Dataset of (x, y)"
        )
    if not hasattr(dataset, "label_names"):
        try:
            dataset.label_names = None
        except AttributeError:
            pass
    return dataset
