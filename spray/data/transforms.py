"""``ImageTransform``: the preprocessing spec of image sources (resize, centre crop, colour mode, normalise).

The steps, their order, defaults and interpolation are those of torchvision's classification presets
(``torchvision.transforms._presets.ImageClassification``) on PIL images, written with Pillow and torch:

1. colour mode: ``"rgb"`` (``Image.convert("RGB")``) or ``"grayscale"`` (``Image.convert("L")``, ITU-R 601-2
   luma, as torchvision's ``Grayscale``); None keeps the source's rule (docs/data.md);
2. resize: an int resizes the shorter side to it, the longer side to ``int(size * long / short)``; a pair
   ``(H, W)`` resizes to exactly that; bilinear, antialiased (Pillow's ``resize`` filters with a support
   widened by the downscaling factor, which is torchvision's ``antialias=True`` on PIL images);
3. centre crop to ``crop`` (an int: a square), offsets ``int(round((H - h) / 2))`` and
   ``int(round((W - w) / 2))``; an image smaller than the crop is first padded with zeros on both sides
   (left/top ``(w - W) // 2``), as torchvision pads;
4. to float: 8-bit values scaled by 1/255 into [0, 1];
5. normalise: ``(x - mean[c]) / std[c]`` per channel, when ``mean`` and ``std`` are given.

Every parameter is checked where the spec is made, and a bad one is a ``BadInputError`` naming it. The spec
is JSON-serialisable (:meth:`ImageTransform.to_dict`) and is recorded in the audit store's dataset record,
so that ClArC re-creates exactly the inputs that were explained.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from spray.errors import BadInputError

if TYPE_CHECKING:
    from PIL.Image import Image

__all__ = ["IMAGENET", "ImageTransform"]

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
"""torchvision's ImageNet mean and standard deviation per RGB channel (the presets' defaults)."""

MODES = ("rgb", "grayscale")


def _size(value: Any, name: str) -> int | tuple[int, int] | None:
    """None, a positive int, or a pair (H, W) of positive ints."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)) and len(value) == 2:
        pair = tuple(value)
    else:
        pair = (value,)
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in pair):
        raise BadInputError(f"{name} must be a positive integer or a pair (H, W) of them, got {value!r}")
    return pair[0] if len(pair) == 1 else pair


def _channels(value: Any, name: str) -> tuple[float, ...] | None:
    if value is None:
        return None
    values = tuple(value) if isinstance(value, (list, tuple)) else (value,)
    if not values or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                             for v in values):
        raise BadInputError(f"{name} must be a finite number or a list of them, one per channel, got {value!r}")
    return tuple(float(v) for v in values)


@dataclass(frozen=True)
class ImageTransform:
    """How image files become model inputs (module docstring). All fields optional; the identity spec
    (all None) reads images at their own size, as 8-bit values scaled to [0, 1]."""

    resize: int | tuple[int, int] | None = None
    crop: int | tuple[int, int] | None = None
    mode: str | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: the checked, canonical values replace the given ones
        set_(self, "resize", _size(self.resize, "resize"))
        set_(self, "crop", _size(self.crop, "crop"))
        if self.mode is not None and self.mode not in MODES:
            raise BadInputError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        set_(self, "mean", _channels(self.mean, "mean"))
        set_(self, "std", _channels(self.std, "std"))
        if (self.mean is None) != (self.std is None):
            raise BadInputError("normalisation needs both mean and std (one value, or one per channel)")
        if self.std is not None:
            if len(self.mean) != len(self.std):
                raise BadInputError(
                    f"mean has {len(self.mean)} values but std has {len(self.std)}: give one of each per channel"
                )
            if min(self.std) <= 0:
                raise BadInputError(f"std must be positive, got {list(self.std)}")
            wanted = {"rgb": 3, "grayscale": 1}.get(self.mode or "")
            if wanted and len(self.mean) not in (1, wanted):
                raise BadInputError(
                    f"mean and std have {len(self.mean)} values, but mode {self.mode!r} gives {wanted} "
                    "channel(s): give one value, or one per channel"
                )

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ImageTransform:
        """The spec from its :meth:`to_dict` form (also a run file's ``[data.transform]`` table)."""
        unknown = sorted(set(values) - {"resize", "crop", "mode", "mean", "std"})
        if unknown:
            raise BadInputError(f"unknown transform parameter {unknown[0]!r}; valid: crop, mean, mode, resize, std")
        return cls(**values)

    @classmethod
    def from_text(cls, resize: str | None = None, crop: str | None = None, normalize: str | None = None,
                  mode: str | None = None) -> ImageTransform:
        """The spec from command-line text: ``resize``/``crop`` ``N`` or ``H,W``; ``normalize``
        ``imagenet``, ``MEAN,STD`` (all channels) or ``M1,...,Mc,S1,...,Sc`` (per channel)."""

        def size(text: str | None, name: str) -> Any:
            if text is None:
                return None
            try:
                parts = [int(p) for p in text.split(",")]
            except ValueError:
                raise BadInputError(f"--{name} must be N or H,W (positive integers), got {text!r}") from None
            return parts[0] if len(parts) == 1 else parts

        mean = std = None
        if normalize is not None:
            if normalize == "imagenet":
                mean, std = IMAGENET
            else:
                try:
                    numbers = [float(p) for p in normalize.split(",")]
                except ValueError:
                    numbers = []
                if not numbers or len(numbers) % 2:
                    raise BadInputError(
                        f"--normalize must be imagenet, MEAN,STD or one mean per channel then one std per "
                        f"channel (e.g. 0.485,0.456,0.406,0.229,0.224,0.225), got {normalize!r}"
                    )
                half = len(numbers) // 2
                mean, std = numbers[:half], numbers[half:]
        return cls(resize=size(resize, "resize"), crop=size(crop, "crop"), mode=mode, mean=mean, std=std)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable; :meth:`from_dict` reads it back to an equal spec."""
        return {
            "resize": list(self.resize) if isinstance(self.resize, tuple) else self.resize,
            "crop": list(self.crop) if isinstance(self.crop, tuple) else self.crop,
            "mode": self.mode,
            "mean": list(self.mean) if self.mean else None,
            "std": list(self.std) if self.std else None,
        }

    @property
    def fixes_size(self) -> bool:
        """Whether every image comes out at one size, whatever its own (an exact resize, or a crop)."""
        return isinstance(self.resize, tuple) or self.crop is not None

    # ------------------------------------------------------------------ the steps

    def _resized(self, width: int, height: int) -> tuple[int, int]:
        """(W, H) after step 2."""
        if isinstance(self.resize, int):
            short, long = sorted((width, height))
            new_short, new_long = self.resize, int(self.resize * long / short)
            return (new_short, new_long) if width <= height else (new_long, new_short)
        if self.resize is not None:
            return self.resize[1], self.resize[0]
        return width, height

    def output_size(self, width: int, height: int) -> tuple[int, int]:
        """(W, H) of an image of ``width`` × ``height`` after resize and crop."""
        if self.crop is not None:
            height, width = self.crop if isinstance(self.crop, tuple) else (self.crop, self.crop)
            return width, height
        return self._resized(width, height)

    def geometry(self, image: Image) -> Image:
        """Steps 2 and 3 (resize, centre crop) on a Pillow image of any mode."""
        from PIL import Image as PILImage

        if self.resize is not None:
            size = self._resized(*image.size)
            if size != image.size:
                image = image.resize(size, PILImage.Resampling.BILINEAR)
        if self.crop is not None:
            crop_h, crop_w = self.crop if isinstance(self.crop, tuple) else (self.crop, self.crop)
            width, height = image.size
            if crop_w > width or crop_h > height:
                padded = PILImage.new(image.mode, (max(width, crop_w), max(height, crop_h)))
                padded.paste(image, ((crop_w - width) // 2 if crop_w > width else 0,
                                     (crop_h - height) // 2 if crop_h > height else 0))
                image, (width, height) = padded, padded.size
            top, left = int(round((height - crop_h) / 2.0)), int(round((width - crop_w) / 2.0))
            image = image.crop((left, top, left + crop_w, top + crop_h))
        return image

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """Step 5 on a (C, H, W) float CPU tensor in [0, 1]; the result is contiguous.

        Computed with numpy, in one thread: torch would split one image over its intra-op threads, and
        with ``--workers 0`` the explaining process decodes with its own thread count, where that hand-off
        cost 17 times the arithmetic on a loaded 2-core machine (docs/benchmarks.md, "Image files")."""
        if self.mean is None:
            return x
        if len(self.mean) not in (1, x.shape[0]):
            raise BadInputError(
                f"mean and std have {len(self.mean)} values, but the images have {x.shape[0]} channel(s): "
                "give one value, or one per channel (or set the mode: --rgb/--grayscale)"
            )
        array = x.numpy()
        mean = np.asarray(self.mean, dtype=array.dtype).reshape(-1, 1, 1)
        std = np.asarray(self.std, dtype=array.dtype).reshape(-1, 1, 1)
        return torch.from_numpy(np.ascontiguousarray((array - mean) / std))

    def bounds(self, channels: int) -> tuple[list[float], list[float]] | None:
        """Per channel, the model inputs of pixel values 0 and 1 (``(0 - mean) / std``, ``(1 - mean) / std``):
        the box of EpsilonGammaBox's first layer and the range that maps thumbnails back to pixels.
        None without normalisation (the inputs are the pixels, in [0, 1])."""
        if self.mean is None:
            return None
        mean = np.broadcast_to(np.asarray(self.mean), (channels,))
        std = np.broadcast_to(np.asarray(self.std), (channels,))
        return [float(v) for v in -mean / std], [float(v) for v in (1 - mean) / std]

