"""Image files as samples: the decoding rule, the preprocessing spec applied, and the record of the files.

Decoding rule (every image source: ``folder:`` and ``csv:``), applied to each file as read by Pillow:

- the EXIF orientation is applied (``ImageOps.exif_transpose``), so an image is seen as a viewer shows it;
- 16-bit greyscale (Pillow modes ``I;16*`` and ``I``) is scaled by 1/65535 to floats in [0, 1] at full
  precision; 32-bit float greyscale (``F``, e.g. from TIFF) is taken as it is;
- other greyscale (``1``, ``L``, ``LA``) becomes 8-bit ``L``, alpha dropped;
- everything else (palette ``P``/``PA``, ``RGBA``, ``CMYK``, ``YCbCr``, ...) becomes ``RGB`` with Pillow's
  ``convert("RGB")``, as torchvision's image-folder loader does: the palette expanded, alpha dropped (not
  composited), CMYK by Pillow's conversion;
- the colour mode: the spec's ``mode`` if given (``grayscale``: ITU-R 601-2 luma; ``rgb``: grey repeated on
  three channels), else one channel if every image of the source is greyscale, three if any is in colour;
- images Pillow refuses as decompression bombs (more than twice ``PIL.Image.MAX_IMAGE_PIXELS`` pixels) and
  files it cannot decode, truncated ones included, are a ``BadInputError`` naming the file.

Then the spec's resize and crop, scaling to [0, 1] and normalisation (spray/data/transforms.py).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Dataset

from spray.data.transforms import ImageTransform
from spray.errors import BadInputError, dataset_size_error

if TYPE_CHECKING:
    from PIL.Image import Image

    from spray.data.label_table import RowSelection

__all__ = ["ImageFiles", "check_same_files", "file_sha256", "pixel_bounds", "reading", "source_record"]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
_GREY = {"1", "L", "LA", "I", "F"}
_DEEP = {"I", "I;16", "I;16B", "I;16L", "I;16N"}


@contextmanager
def reading(path: Path) -> Iterator[None]:
    """Pillow's failures to read image ``path`` (its header or its pixels) as bad input naming the file."""
    from PIL import Image

    try:
        yield
    except Image.DecompressionBombError as exc:
        raise BadInputError(
            f"image {path} is refused as a possible decompression bomb: {exc} (Pillow's limit: twice "
            f"PIL.Image.MAX_IMAGE_PIXELS = {Image.MAX_IMAGE_PIXELS} pixels); shrink or remove the file"
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:  # Pillow's kinds; UnidentifiedImageError is an OSError
        raise BadInputError(f"image {path} cannot be read: {exc}; replace or remove the file") from None


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes, as hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _is_grey(mode: str) -> bool:
    return mode in _GREY or mode in _DEEP


def _oriented_size(image: Image) -> tuple[int, int]:
    """(W, H) as shown, after the EXIF orientation (5 to 8 swap the axes), from what Pillow read of the
    header only (``getexif`` would decode a PNG's pixels to look for EXIF after them). Pillow's TIFF
    reader reports the oriented size itself."""
    from PIL import Image as PILImage

    exif = PILImage.Exif()
    exif.load(image.info.get("exif") or b"")
    width, height = image.size
    swapped = image.format != "TIFF" and exif.get(0x0112, 1) in (5, 6, 7, 8)
    return (height, width) if swapped else (width, height)


def decode(path: Path) -> Image:
    """The image file at ``path`` by the decoding rule, before the colour mode: mode ``RGB``, ``L`` or ``F``."""
    from PIL import Image, ImageOps

    with reading(path), Image.open(path) as opened:
        image = ImageOps.exif_transpose(opened)
        image.load()
        if image.mode in _DEEP:
            return Image.fromarray(np.asarray(image, dtype=np.float32) / 65535.0, mode="F")
        if image.mode == "F":
            return image
        return image.convert("L" if _is_grey(image.mode) else "RGB")


def _as_tensor(image: Image, channels: int) -> torch.Tensor:
    """(channels, H, W) float32: 8-bit values scaled by 1/255, floats as they are."""
    if channels == 1 and image.mode == "RGB":
        image = image.convert("L")
    array = np.asarray(image)
    x = torch.from_numpy(array.astype(np.float32) / (255.0 if array.dtype == np.uint8 else 1.0))
    x = x[None] if x.ndim == 2 else x.permute(2, 0, 1)
    return x.expand(channels, -1, -1).contiguous() if x.shape[0] != channels else x


class ImageFiles(Dataset):
    """Image files with labels, read by the decoding rule and preprocessed by ``transform``.

    Every file's header is read when the dataset is made (its size and colour mode, not its pixels), so a
    stray image fails at once, named: images of different sizes are refused unless the spec makes them one
    size. With ``skip_unreadable`` every file is decoded once, and those that cannot be are left out of
    the samples and kept in ``skipped`` (path, message). ``metadata``, one dict per file, becomes
    ``metadata``: column -> the samples' values. ``where`` names the source in messages; ``root`` is the
    folder file names are recorded relative to. ``selection``: how a multi-label table's rows became the
    files (:class:`spray.data.label_table.RowSelection`), recorded with them.
    """

    def __init__(self, files: Sequence[tuple[Path, int]], label_names: list[str] | None, *, root: Path, where: str,
                 transform: ImageTransform | None = None, skip_unreadable: bool = False,
                 metadata: Sequence[dict[str, str]] | None = None, selection: RowSelection | None = None) -> None:
        from PIL import Image

        self.label_names, self.root, self.where, self.selection = label_names, root, where, selection
        self.transform = transform or ImageTransform()
        self.files: list[tuple[Path, int]] = []
        self.skipped: list[tuple[Path, str]] = []
        kept: list[dict[str, str]] = []
        size, first, grey = None, None, True
        for (path, label), extra in zip(files, metadata or [{}] * len(files), strict=True):
            try:
                with reading(path), Image.open(path) as image:
                    image_size, mode = _oriented_size(image), image.mode
                if skip_unreadable:
                    decode(path)  # every pixel, once: a file cut short is found now, not in its batch
            except BadInputError as exc:
                if not skip_unreadable:
                    raise
                self.skipped.append((path, str(exc)))
                continue
            self.files.append((path, label))
            kept.append(extra)
            grey = grey and _is_grey(mode)
            if self.transform.fixes_size:
                continue
            if size is None:
                size, first = image_size, path
            elif image_size != size:
                raise BadInputError(
                    f"image {path} is {image_size[0]}×{image_size[1]} (W×H), but {first} is "
                    f"{size[0]}×{size[1]}: all images must have the same size, or a preprocessing spec "
                    "must make them one size: --resize H,W, or --resize N --crop N (docs/data.md)"
                )
        if not self.files:
            raise BadInputError(f"{where}: none of its {len(self.skipped)} images can be read")
        self.metadata = {column: [row[column] for row in kept] for column in kept[0]}
        mode = self.transform.mode or ("grayscale" if grey else "rgb")
        self.channels = 1 if mode == "grayscale" else 3
        self.transform.normalise(torch.zeros(self.channels, 1, 1))  # a mean per channel must fit the images

    def __len__(self) -> int:
        return len(self.files)

    def pixels(self, i: int) -> torch.Tensor:
        """Sample ``i`` resized and cropped, in [0, 1], before normalisation: (C, H, W) float32."""
        path = self.files[i][0]
        image = self.transform.geometry(decode(path))
        return _as_tensor(image, self.channels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform.normalise(self.pixels(i)), self.files[i][1]

    def _name(self, path: Path) -> str:
        return (path.relative_to(self.root) if path.is_relative_to(self.root) else path).as_posix()

    def record(self) -> dict[str, Any]:
        """What the store's dataset record keeps of this source: its root folder, the spec, every file's
        path (relative to ``root``) and sha256, in sample order, the files skipped as unreadable, with
        why (``[path, message]``), the metadata columns (column -> values in sample order) and, for a
        multi-label table, its row ``selection``."""
        return {
            "root": str(self.root),
            "transform": self.transform.to_dict(),
            "files": [self._name(path) for path, _ in self.files],
            "sha256": [file_sha256(path) for path, _ in self.files],
            "skipped": [[self._name(path), message] for path, message in self.skipped],
            "metadata": self.metadata,
            **({"selection": self.selection.to_dict()} if self.selection is not None else {}),
        }


def source_record(dataset: Dataset) -> dict[str, Any]:
    """The fields an image source adds to the store's dataset record (:meth:`ImageFiles.record`); none for
    other datasets."""
    return dataset.record() if isinstance(dataset, ImageFiles) else {}


def pixel_bounds(dataset: Dataset) -> tuple[list[float], list[float]] | None:
    """Per channel, the model inputs of pixel values 0 and 1 of an image source (``[0]``/``[1]`` without
    normalisation); None for other datasets, whose pixel range spray does not know."""
    if not isinstance(dataset, ImageFiles):
        return None
    return dataset.transform.bounds(dataset.channels) or ([0.0] * dataset.channels, [1.0] * dataset.channels)


def check_same_files(
    recorded: dict[str, Any], current: dict[str, Any], store: Path, written: np.ndarray | None = None
) -> dict[str, Any]:
    """Refuse to resume an audit whose image files or preprocessing changed since the store recorded them
    (``recorded``: the store's dataset record; ``current``: this run's, both with :func:`source_record`'s
    fields) and return the record to keep. The store's samples were explained from the recorded files:
    mixing in others would make an audit of no data set in particular. A file whose sample no attribution
    has written yet (``written``: (n,) bool, the store's sample rows written; None: all of them) may have
    changed, as an unreadable file replaced after its refusal has: it is explained as it is now, and the
    record returned holds its new sha256."""
    if "sha256" not in recorded or "sha256" not in current or len(recorded["files"]) != len(current["files"]):
        return recorded  # not image files, or another number of samples, which the store itself refuses
    if recorded["transform"] != current["transform"]:
        have, given = (json.dumps(record["transform"], sort_keys=True) for record in (recorded, current))
        raise BadInputError(
            f"audit store {store} was made with preprocessing {have}, this run asks for {given}: give the "
            "same spec to resume, or audit into another store"
        )
    root = current["root"]
    written = np.ones(len(current["files"]), bool) if written is None else written
    for old_path, new_path, old, new, done in zip(recorded["files"], current["files"], recorded["sha256"],
                                                  current["sha256"], written, strict=True):
        if old_path != new_path:
            raise BadInputError(
                f"audit store {store} recorded image {old_path} where the data source now has {new_path}: "
                "the files changed since the audit began; restore them, or audit into another store"
            )
        if old != new and done:
            raise BadInputError(
                f"image {Path(root) / new_path} changed since audit store {store} recorded it (sha256 "
                f"{old[:12]}…, now {new[:12]}…): restore the file, or audit into another store"
            )
    return {**recorded, "sha256": current["sha256"]}


def check_audited(recorded: dict[str, Any] | None, dataset: Sequence[Any], store: Path | str) -> None:
    """Refuse ``dataset`` as the data audit store ``store`` was attributed from unless it has the number of
    samples its dataset record ``recorded`` holds and, for image files, the recorded files (paths and sha256;
    :func:`check_same_files`); None: a store without a record. What re-creates the explained inputs (ClArC,
    its evaluation, the report's conditional heatmaps, the ViRelAy export) needs the audited data itself."""
    if recorded is None:
        return
    if recorded.get("size") not in (None, len(dataset)):
        raise dataset_size_error(len(dataset), recorded["size"], store)
    check_same_files(recorded, source_record(dataset), Path(store))
