"""A Waterbirds-like two-class set: digits on scikit-image's bundled textures, the background tied to the class.

Waterbirds (Sagawa et al. 2020, "Distributionally robust neural networks for group shifts") pastes birds on land
or water backgrounds so that the background agrees with the bird's class in 95 % of the training images and in
50 % of the test images: a model that learns the background fails on the *minority groups* (a class on the other
class's background), which average accuracy hides and worst-group accuracy shows. Here the foreground is two
digit classes and the backgrounds are textures that ship inside scikit-image's wheel (``skimage.data``: grass,
gravel, brick), so nothing is downloaded. Every image has a group label, ``2·class + background`` (background 0
is class 0's texture), the ground truth of the group metrics.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import ClassVar

import numpy as np

from spray.errors import BadInputError

TEXTURES = ("grass", "gravel", "brick")


@lru_cache(maxsize=None)
def texture(name: str) -> np.ndarray:
    """scikit-image's bundled grey texture ``name`` (512 × 512) as read-only float32 in [0, 1]."""
    if name not in TEXTURES:
        raise BadInputError(f"unknown background texture {name!r}; choose one of {', '.join(TEXTURES)}")
    try:
        import skimage.data
    except ImportError:
        raise BadInputError(
            "the benchmark's background textures need scikit-image, which is not installed: "
            "pip install 'spray[benchmark]'"
        ) from None
    pixels = (getattr(skimage.data, name)() / 255.0).astype(np.float32)
    pixels.flags.writeable = False
    return pixels


@dataclass(frozen=True)
class Background:
    """``texture`` behind the digit: ``x' = x + (1 − x)·alpha·t``, ``t`` a square crop of ``zoom``·W pixels at a
    random place in the texture, averaged down by ``zoom`` (a new crop per image), so ink stays white and the
    texture shows where there is none."""

    texture: str
    alpha: float = 0.6
    zoom: int = 2

    def apply(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``x`` (n, C, H, W) in [0, 1] on the texture; ``x`` is not modified."""
        source = texture(self.texture)
        height, width = x.shape[-2:]
        h, w = height * self.zoom, width * self.zoom
        out = np.empty_like(x)
        for i in range(len(x)):
            r, c = int(rng.integers(0, source.shape[0] - h + 1)), int(rng.integers(0, source.shape[1] - w + 1))
            crop = source[r : r + h, c : c + w].reshape(height, self.zoom, width, self.zoom).mean((1, 3))
            out[i] = x[i] + (1 - x[i]) * self.alpha * crop
        return out


@dataclass(frozen=True)
class Waterbirds:
    """The two-class set: digit ``digits[k]`` is class ``k`` and its majority background is ``backgrounds[k]``.

    A case's prevalence is the share of each class's training images on the *other* class's background (the
    minority groups; the background agrees with the class in the rest); half of each class's test images are
    on each background. The ground truth a case scores detection against is the minority group of class
    ``poisoned``: the images a model that learnt the background explains differently."""

    digits: tuple[int, int]
    backgrounds: tuple[Background, Background]
    poisoned: int
    is_global: ClassVar[bool] = True
    channels: ClassVar[int] = 1

    @property
    def group_names(self) -> tuple[str, ...]:
        """Group ``2·class + background``'s name, ``<digit>/<texture>``."""
        return tuple(f"{d}/{b.texture}" for d in self.digits for b in self.backgrounds)

    def compose(self, x: np.ndarray, y: np.ndarray, other: np.ndarray,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Images ``x`` (n, C, H, W) of classes ``y`` (n,) in {0, 1}, each on its class's background, or on the
        other class's where ``other`` (n,) bool: the composed images and their groups (n,) int64."""
        background = np.where(other, 1 - y, y)
        out = x.copy()
        for b in (0, 1):
            chosen = np.flatnonzero(background == b)
            out[chosen] = self.backgrounds[b].apply(x[chosen], rng)
        return out, (2 * y + background).astype(np.int64)
