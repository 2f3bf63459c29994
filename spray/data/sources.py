"""Data sources: ``npz:PATH``, ``hdf5:PATH``, ``folder:PATH``, ``csv:PATH`` or ``MOD:FACTORY`` -> a torch Dataset.

Every dataset yields ``(x, y)``: ``x`` a float32 tensor, (C, H, W) for images or (F,) for feature vectors,
and ``y`` an int class index. Every dataset has a ``label_names`` attribute, a list of class names or None
when the source does not name its classes:

- ``npz:PATH``: arrays ``x`` (n, ...) and ``y`` (n,); an optional array ``label_names`` of strings.
- ``hdf5:PATH``: datasets ``x`` and ``y``, or ViRelAy's ``data`` and ``label``; optional class names in a
  root attribute or dataset ``label_names``. Samples are read one at a time, never the whole file.
- ``folder:PATH[?names=FILE]``: one sub-folder per class, sorted by name -> label 0, 1, ...; ``label_names``
  are the folder names; or, with a names file, every output's name and each folder's label its line.
  Image files are decoded and preprocessed as spray/data/images.py says.
- ``csv:PATH?path=COLUMN&label=COLUMN&names=FILE``: image files listed in a label table
  (spray/data/label_table.py), decoded and preprocessed as ``folder:``'s; ``target=COLUMN`` instead of
  ``label`` for a multi-label table (one 0/1 column per finding).
- ``MOD:FACTORY``: whatever the zero-argument callable returns, if its items are ``(x, y)`` pairs; its own
  ``label_names`` are kept, else a torchvision-style ``classes`` list is used, else None.

Inputs: floating arrays are taken as they are; uint8 images are scaled to [0, 1] by 1/255; other integer
inputs are refused, since their scale is unknown. Arrays are channels first: (n, C, H, W); (n, H, W) is
read as single-channel images. Labels must be non-negative integers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from spray._checks import check_regular_file
from spray.data._imports import call_factory
from spray.data.images import IMAGE_SUFFIXES, ImageFiles
from spray.data._options import read_names, split_options
from spray.data.label_table import OPTIONS as CSV_OPTIONS
from spray.data.label_table import open_label_table
from spray.data.transforms import ImageTransform
from spray.errors import BadInputError

SCHEMES = ("npz", "hdf5", "folder", "csv")
IMAGE_SCHEMES = ("folder", "csv")


def _as_input(x: Any, where: str) -> torch.Tensor:
    """One sample (or a stack of them) as float32; uint8 scaled to [0, 1]."""
    array = np.asarray(x)
    if array.dtype == np.uint8:
        return torch.from_numpy(array.astype(np.float32) / 255.0)
    if not np.issubdtype(array.dtype, np.floating):
        raise BadInputError(
            f"{where}: inputs have dtype {array.dtype}; spray takes float inputs (or uint8 images, scaled by "
            "1/255). Convert them, e.g. x.astype('float32') / max_value"
        )
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def _check_inputs(shape: tuple[int, ...], dtype: np.dtype, where: str) -> None:
    """Refuse input arrays whose layout or dtype would be silently misread."""
    _as_input(np.zeros((0,), dtype), where)
    if len(shape) < 2:
        raise BadInputError(f"{where}: inputs have shape {shape}; expected (n, features) or (n, C, H, W)")
    if shape[0] == 0:
        raise BadInputError(f"{where}: the data set is empty")
    if len(shape) == 4 and shape[-1] in (1, 3, 4) and shape[1] not in (1, 3, 4):
        raise BadInputError(
            f"{where}: inputs have shape {shape}, which looks channels-last (n, H, W, C); spray reads "
            "(n, C, H, W). Transpose them, e.g. x.transpose(0, 3, 1, 2)"
        )


def _check_labels(y: np.ndarray, n: int, where: str) -> np.ndarray:
    if y.ndim != 1 or y.shape[0] != n:
        raise BadInputError(f"{where}: labels have shape {y.shape}, expected ({n},) to match the inputs")
    if not np.issubdtype(y.dtype, np.integer):
        raise BadInputError(f"{where}: labels have dtype {y.dtype}; they must be integer class indices")
    if n and y.min() < 0:
        raise BadInputError(f"{where}: label {int(y.min())} at sample {int(np.argmin(y))} is negative")
    return y.astype(np.int64)


def _label_names(value: Any, where: str) -> list[str] | None:
    """Class names stored as an array of strings/bytes or a JSON list; None when absent."""
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise BadInputError(f"{where}: label_names {value[:60]!r} is not a JSON list of names") from None
    return [v.decode() if isinstance(v, bytes) else str(v) for v in np.asarray(value).ravel().tolist()]


class ArrayDataset(Dataset):
    """Samples held in arrays ``x`` (n, ...) and ``y`` (n,)."""

    def __init__(self, x: np.ndarray, y: np.ndarray, where: str, label_names: list[str] | None = None) -> None:
        _check_inputs(x.shape, x.dtype, where)
        self.x = x[:, None] if x.ndim == 3 else x
        self.y = _check_labels(y, x.shape[0], where)
        self.where, self.label_names = where, label_names

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return _as_input(self.x[i], f"{self.where}, sample {i}"), int(self.y[i])


def _npz(path: Path) -> ArrayDataset:
    where = f"npz file {path}"
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
    except OSError as exc:
        raise BadInputError(f"{where} cannot be read: {exc.strerror}") from None
    if not (magic.startswith(b"PK\x03\x04") or magic == b"\x93NUMPY"):
        # np.load would take anything else for a pickle (and refuse it): say what the file is not instead.
        raise BadInputError(f"{where} is not an npz archive; save x and y with np.savez(path, x=x, y=y)")
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - numpy raises several kinds for foreign files
        raise BadInputError(f"{where} cannot be read: {exc}") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise BadInputError(f"{where} holds a single array; save x and y with np.savez(path, x=x, y=y)")
    with archive:
        missing = {"x", "y"} - set(archive.files)
        if missing:
            raise BadInputError(f"{where} lacks array(s) {sorted(missing)}; it has {archive.files}")
        arrays = {}
        for key in ("x", "y", "label_names"):
            if key not in archive.files:
                continue
            try:
                arrays[key] = archive[key]
            except ValueError:  # object arrays need pickle, which is never allowed
                raise BadInputError(
                    f"{where}: array {key!r} is an object array, which only pickle could read and spray "
                    "never unpickles; save numbers (x, y) and strings (label_names)"
                ) from None
        x, y = arrays["x"], arrays["y"]
        names = _label_names(arrays["label_names"], where) if "label_names" in arrays else None
    return ArrayDataset(x, y, where, names)


class HDF5Dataset(Dataset):
    """Samples read one at a time from an HDF5 file (``x``/``y`` or ViRelAy's ``data``/``label``).

    The file is opened lazily in each process that reads it, so the dataset can go to DataLoader workers.
    Labels (n integers) are read once; inputs never in full.
    """

    KEYS = (("x", "y"), ("data", "label"))

    def __init__(self, path: Path) -> None:
        import h5py

        self.path, self.where = path, f"hdf5 file {path}"
        try:
            f = h5py.File(path, "r")
        except OSError as exc:
            raise BadInputError(f"{self.where} cannot be read: {exc}") from None
        with f:
            keys = next(((xk, yk) for xk, yk in self.KEYS if xk in f and yk in f), None)
            if keys is None:
                raise BadInputError(
                    f"{self.where} needs datasets x and y (or data and label); it has {sorted(f)}"
                )
            self.x_key, y_key = keys
            x = f[self.x_key]
            _check_inputs(x.shape, x.dtype, self.where)
            labels = f[y_key]
            if not np.issubdtype(labels.dtype, np.integer):  # checked before reading: h5py may crash on odd types
                raise BadInputError(
                    f"{self.where}: labels have dtype {labels.dtype}; they must be integer class indices"
                )
            self.y = _check_labels(np.asarray(labels), x.shape[0], self.where)
            self._expand = x.ndim == 3
            stored = f["label_names"][()] if "label_names" in f else f.attrs.get("label_names")
            self.label_names = _label_names(stored, self.where)
        self._file: Any = None
        self._pid: int | None = None

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if self._file is None or self._pid != os.getpid():
            import h5py

            self._file, self._pid = h5py.File(self.path, "r"), os.getpid()
        x = self._file[self.x_key][i]
        x = _as_input(x[None] if self._expand else x, f"{self.where}, sample {i}")
        return x, int(self.y[i])

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_file": None, "_pid": None}

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _folder(root: Path, transform: ImageTransform | None, skip_unreadable: bool,
            names: str | None) -> ImageFiles:
    """Images in one sub-folder per class (class names sorted -> label indices), read with Pillow.

    Class folders are searched recursively for files with an image suffix; hidden files and folders are
    skipped. With a names file (``names``, relative to ``root``: every model output's name, in output
    order), each class folder must be one of its names, whose line is the folder's label: a folder may hold
    a subset of the classes. Decoding and preprocessing: spray/data/images.py and transforms.py.
    """
    if not root.is_dir():
        raise BadInputError(f"folder {root} is not a directory (expected one sub-folder per class)")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise BadInputError(f"folder {root} has no class sub-folders (one folder of images per class)")
    label_names = classes
    if names is not None:
        label_names = read_names(root / names)
        unnamed = [name for name in classes if name not in label_names]
        if unnamed:
            raise BadInputError(
                f"folder {root}: class folder {unnamed[0]!r} is not a name of {root / names} (which names the "
                "model's outputs, one per line, in output order)"
            )
    files: list[tuple[Path, int]] = []
    for name in classes:
        label = label_names.index(name)
        found = sorted(
            p for p in (root / name).rglob("*")
            if p.suffix.lower() in IMAGE_SUFFIXES and not p.is_dir()
            and not any(part.startswith(".") for part in p.relative_to(root).parts)
        )
        for path in found:
            check_regular_file(path, "an image")
        if not found:
            suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
            raise BadInputError(f"folder {root}: class folder {name!r} holds no images ({suffixes})")
        files += [(p, label) for p in found]
    return ImageFiles(files, label_names, root=root, where=f"folder {root}", transform=transform,
                      skip_unreadable=skip_unreadable)


def _factory(spec: str) -> Dataset:
    dataset = call_factory(spec, "data source")
    if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
        raise BadInputError(
            f"data source {spec!r}: the factory returned {type(dataset).__name__}, not a Dataset of (x, y)"
        )
    if len(dataset) == 0:
        raise BadInputError(f"data source {spec!r}: the factory returned an empty dataset")
    try:
        item = dataset[0]
    except Exception as exc:  # noqa: BLE001 - the user's dataset failed
        raise BadInputError(f"data source {spec!r}: reading sample 0 raised {exc!r}") from None
    if not (isinstance(item, (tuple, list)) and len(item) == 2):
        raise BadInputError(
            f"data source {spec!r}: sample 0 is {type(item).__name__}"
            f"{f' of length {len(item)}' if isinstance(item, (tuple, list)) else ''}; samples must be "
            "(x, y) pairs"
        )
    x, y = item
    if not isinstance(x, (torch.Tensor, np.ndarray)):
        raise BadInputError(f"data source {spec!r}: sample 0's x is {type(x).__name__}, not a tensor or array")
    if not (isinstance(y, (int, np.integer)) or (isinstance(y, (torch.Tensor, np.ndarray)) and y.ndim == 0)):
        raise BadInputError(f"data source {spec!r}: sample 0's label is {y!r}, not an integer class index")
    if getattr(dataset, "label_names", None) is None:
        classes = getattr(dataset, "classes", None)  # torchvision's convention
        names = [str(c) for c in classes] if isinstance(classes, (list, tuple)) else None
        try:
            dataset.label_names = names
        except AttributeError:
            dataset = _Named(dataset, names)
    return dataset


class _Named(Dataset):
    """A dataset that refuses new attributes, with ``label_names`` added."""

    def __init__(self, dataset: Any, label_names: list[str] | None) -> None:
        self.dataset, self.label_names = dataset, label_names

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> Any:
        return self.dataset[i]


def open_source(spec: str, transform: ImageTransform | None = None, *, skip_unreadable: bool = False) -> Dataset:
    """The dataset a ``SOURCE`` string names (module docstring); errors name the spec and the problem.

    ``transform``, the preprocessing spec (spray/data/transforms.py), and ``skip_unreadable`` (leave out,
    and record, the image files that cannot be decoded) apply to the image sources (``folder:``, ``csv:``);
    giving them for another source is refused rather than ignored.
    """
    scheme, sep, rest = spec.partition(":")
    images = ", ".join(f"{s}:PATH" for s in IMAGE_SCHEMES)
    if transform is not None and transform != ImageTransform() and scheme not in IMAGE_SCHEMES:
        raise BadInputError(
            f"data source {spec!r}: a preprocessing spec (--resize, --crop, --normalize, --grayscale/--rgb) "
            f"applies to image sources ({images}); transform the samples in the data source itself"
        )
    if skip_unreadable and scheme not in IMAGE_SCHEMES:
        raise BadInputError(f"data source {spec!r}: --skip-unreadable applies to image sources ({images})")
    if scheme in SCHEMES:
        if scheme in IMAGE_SCHEMES:
            allowed, example = (CSV_OPTIONS, "csv:labels.csv?path=file&label=diagnosis") if scheme == "csv" \
                else (("names",), "folder:images?names=classes.txt")
            rest, options = split_options(spec, rest, allowed, example)
        else:
            options = {}
        if not rest:
            raise BadInputError(f"data source {spec!r} names no path; write {scheme}:PATH")
        path = Path(rest).expanduser()
        if not path.exists():
            raise BadInputError(f"data source {spec!r}: {path} does not exist")
        if scheme == "folder":
            return _folder(path, transform, skip_unreadable, options.get("names"))
        check_regular_file(path, {"npz": "an npz file", "hdf5": "an hdf5 file", "csv": "a csv file"}[scheme])
        if scheme == "csv":
            return open_label_table(path, options, transform, skip_unreadable)
        return {"npz": _npz, "hdf5": HDF5Dataset}[scheme](path)
    known = "npz:PATH, hdf5:PATH, folder:PATH, csv:PATH or MOD:FACTORY"
    if not sep:
        raise BadInputError(f"data source {spec!r} is not {known}")
    # "tsv:data/x.tsv" is a scheme we do not know, not a module "tsv" lacking an attribute "data/x.tsv";
    # so is "tsv:x.tsv" when x.tsv is a file.
    if not all(part.isidentifier() for part in rest.split(".")) or Path(rest).expanduser().exists():
        raise BadInputError(f"data source {spec!r}: unknown scheme {scheme!r}; expected {known}")
    return _factory(spec)


def source_file(spec: str) -> Path | None:
    """The file or folder a file source (``npz:``, ``hdf5:``, ``folder:``, ``csv:``) reads, its options
    dropped; None for a factory."""
    scheme, sep, rest = spec.partition(":")
    if not (sep and scheme in SCHEMES):
        return None
    rest = rest.partition("?")[0] if scheme in IMAGE_SCHEMES else rest
    return Path(rest) if rest else None


def open_source_like(spec: str, transform: ImageTransform | None, skip_unreadable: bool = False) -> Dataset:
    """:func:`open_source` with ``transform`` and ``skip_unreadable`` if ``spec`` is an image source, without
    for any other: the spec of a run file, or the one an audit store records, serves all its image sources."""
    image = spec.partition(":")[0] in IMAGE_SCHEMES
    return open_source(spec, transform if image else None, skip_unreadable=skip_unreadable and image)
