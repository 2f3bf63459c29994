"""Shortcut artifacts with per-pixel ground truth: each pastes itself into images and says where it is.

Every artifact is a frozen record with :meth:`apply(x, rng) -> (x', masks)`: ``x`` (n, C, H, W) float32 in
[0, 1] is never modified; ``x'`` is the artifact's version of it, ``masks`` (n, H, W) float32 in {0, 1}
marks the pixels the artifact covers in each image (the ground truth of localisation). ``rng`` draws
whatever is random per image (the random patch's position); the others ignore it. ``is_global`` artifacts
(brightness, blur, the colour cast) cover the whole image: their mask is all ones and localisation is not defined
for them. ``channels``: the channels the artifact needs: 3 for the colour cast, whose cases render the grey digits
as RGB (R = G = B), 1 for the others.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from scipy.ndimage import gaussian_filter

from spray.errors import BadInputError

# A 3×5 pixel font, enough for a tag of capitals and digits ("#" = ink).
_GLYPHS = {
    "A": (".#.", "#.#", "###", "#.#", "#.#"),
    "B": ("##.", "#.#", "##.", "#.#", "##."),
    "X": ("#.#", "#.#", ".#.", "#.#", "#.#"),
    "3": ("##.", "..#", ".#.", "..#", "##."),
    "7": ("###", "..#", ".#.", ".#.", ".#."),
}


def checker(size: int, cell: int) -> np.ndarray:
    """A ``size``×``size`` black/white checkerboard of ``cell``-pixel squares, (size, size) float32."""
    rows, cols = np.indices((size, size)) // cell
    return ((rows + cols) % 2 == 0).astype(np.float32)


def glyphs(text: str) -> np.ndarray:
    """``text`` in the 3×5 font, one blank column between characters: (5, 4·len − 1) float32 in {0, 1}."""
    unknown = sorted(set(text) - set(_GLYPHS))
    if not text or unknown:
        raise BadInputError(f"a tag's text must use the characters {''.join(sorted(_GLYPHS))}, got {text!r}")
    columns = []
    for i, char in enumerate(text):
        if i:
            columns.append(np.zeros((5, 1), np.float32))
        columns.append(np.array([[c == "#" for c in row] for row in _GLYPHS[char]], np.float32))
    return np.concatenate(columns, axis=1)


def _paste_tiles(x: np.ndarray, tile: np.ndarray,
                 position: Callable[[], tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Paste ``tile`` (h, w) opaquely into every image of ``x`` (n, C, H, W), each at ``position()``
    (top-left row, column); returns the pasted copy and the masks (n, H, W) of the boxes."""
    out = x.copy()
    (height, width), (h, w) = x.shape[-2:], tile.shape
    masks = np.zeros((len(x), height, width), np.float32)
    for i in range(len(x)):
        r, c = position()
        if r < 0 or c < 0 or r + h > height or c + w > width:
            raise BadInputError(f"an artifact of {h}×{w} at {(r, c)} does not fit images of {height}×{width}")
        out[i, :, r : r + h, c : c + w] = tile
        masks[i, r : r + h, c : c + w] = 1.0
    return out, masks


@dataclass(frozen=True)
class Patch:
    """A checkerboard patch (``size`` pixels, ``cell``-pixel squares) at ``position`` (top-left row,
    column), or, with ``position=None``, at a uniformly random position in each image."""

    size: int
    cell: int
    position: tuple[int, int] | None = None
    is_global: ClassVar[bool] = False
    channels: ClassVar[int] = 1

    def apply(self, x: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        height, width = x.shape[-2:]
        return _paste_tiles(x, checker(self.size, self.cell), lambda: self.position or (
            int(rng.integers(0, height - self.size + 1)), int(rng.integers(0, width - self.size + 1))))


@dataclass(frozen=True)
class Tag:
    """A text-like tag: ``text`` in a 3×5 pixel font, white ink on its box, at ``position``, like a
    watermark or a scanner's label. Its mask is the whole box."""

    text: str
    position: tuple[int, int]
    is_global: ClassVar[bool] = False
    channels: ClassVar[int] = 1

    def apply(self, x: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        return _paste_tiles(x, glyphs(self.text), lambda: self.position)


@dataclass(frozen=True)
class Frame:
    """A border ``width`` pixels wide at intensity ``value`` around the whole image."""

    width: int
    value: float
    is_global: ClassVar[bool] = False
    channels: ClassVar[int] = 1

    def apply(self, x: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        mask = np.zeros(x.shape[-2:], np.float32)
        mask[: self.width], mask[-self.width :], mask[:, : self.width], mask[:, -self.width :] = 1, 1, 1, 1
        out = np.where(mask > 0, np.float32(self.value), x).astype(np.float32)
        return out, np.broadcast_to(mask, (len(x), *mask.shape)).copy()


@dataclass(frozen=True)
class Brightness:
    """A global confounder: the background lifted to ``offset``, ``x' = offset + (1 − offset)·x``."""

    offset: float
    is_global: ClassVar[bool] = True
    channels: ClassVar[int] = 1

    def apply(self, x: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        out = (self.offset + (1 - self.offset) * x).astype(np.float32)
        return out, np.ones((len(x), *x.shape[-2:]), np.float32)


@dataclass(frozen=True)
class Blur:
    """A global low-pass artifact: every image blurred with a Gaussian of ``sigma`` pixels (the opposite
    of a high-frequency mark: what a different scanner or camera leaves on a whole subgroup)."""

    sigma: float
    is_global: ClassVar[bool] = True
    channels: ClassVar[int] = 1

    def apply(self, x: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        sigma = (0,) * (x.ndim - 2) + (self.sigma, self.sigma)
        out = gaussian_filter(x, sigma=sigma, mode="constant").astype(np.float32)
        return out, np.ones((len(x), *x.shape[-2:]), np.float32)


@dataclass(frozen=True)
class Cast:
    """A global colour cast, as a camera's white balance or a stain leaves it: channel ``c`` of an RGB image
    becomes ``lift[c] + (1 − lift[c])·gain[c]·x_c``. Grey digits rendered as RGB have R = G = B, so whatever
    tells the channels apart is the cast; a tint of a single intensity channel would be the brightness
    artifact again, which is why cast cases are rendered in colour (``channels = 3``)."""

    gain: tuple[float, float, float]
    lift: tuple[float, float, float]
    is_global: ClassVar[bool] = True
    channels: ClassVar[int] = 3

    def apply(self, x: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        if x.shape[1] != 3:
            raise BadInputError(f"a colour cast needs RGB images (n, 3, H, W), got {x.shape[1]} channel(s)")
        gain, lift = (np.asarray(v, np.float32)[None, :, None, None] for v in (self.gain, self.lift))
        out = (lift + (1 - lift) * gain * x).astype(np.float32)
        return out, np.ones((len(x), *x.shape[-2:]), np.float32)


Artifact = Patch | Tag | Frame | Brightness | Blur | Cast
