"""Arrays to inline images: heatmaps (diverging, symmetric around 0), input thumbnails, overlays, PNG data URIs.

Everything here is pure array work plus Pillow encoding: no matplotlib, no global state.
"""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

_MIN_SIDE = 112  # small images are enlarged (nearest neighbour) to at least this many pixels


def data_uri(rgb: np.ndarray) -> str:
    """An (h, w, 3|4) uint8 image as a ``data:image/png;base64,...`` URI; small images enlarged first."""
    image = Image.fromarray(np.ascontiguousarray(rgb))
    side = max(image.size)
    if side < _MIN_SIDE:
        factor = -(-_MIN_SIDE // side)
        image = image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def reduce_heatmap(relevance: np.ndarray) -> np.ndarray:
    """(C, H, W) or (H, W) relevance -> (H, W) float64, channels summed (relevance is additive)."""
    relevance = np.asarray(relevance, dtype=np.float64)
    return relevance.sum(axis=0) if relevance.ndim == 3 else relevance


def heatmap_rgb(heatmap: np.ndarray) -> np.ndarray:
    """(H, W) relevance -> (H, W, 3) uint8, scaled by its own largest magnitude so that 0 is white: the diverging
    blue-white-red map, red = evidence for the explained class, blue = against, white = none. Computed exactly
    (matplotlib's 256-entry "bwr" table puts 0 at 0.4980, slightly off white and off symmetric)."""
    scale = float(np.abs(heatmap).max()) if heatmap.size else 0.0
    unit = heatmap / scale if scale > 0 else np.zeros_like(heatmap)
    unit = np.clip(unit, -1.0, 1.0)
    pos, neg = np.clip(unit, 0.0, None), np.clip(-unit, 0.0, None)
    rgb = np.stack([1.0 - neg, 1.0 - pos - neg, 1.0 - pos], axis=-1)  # bwr: blue -> white -> red
    return (rgb * 255).round().astype(np.uint8)


def image_rgb(image: np.ndarray) -> np.ndarray:
    """(C, h, w) image (uint8, or float scaled by its own min and max) -> (h, w, 3) uint8.

    One channel is shown as grey, three as colour; other channel counts are averaged to grey.
    """
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[None]
    if image.dtype != np.uint8:
        x = image.astype(np.float64)
        low, high = x.min(), x.max()
        image = np.round(255 * ((x - low) / (high - low) if high > low else np.zeros_like(x))).astype(np.uint8)
    if image.shape[0] != 3:
        image = np.repeat(image.mean(axis=0, keepdims=True).round().astype(np.uint8), 3, axis=0)
    return np.ascontiguousarray(image.transpose(1, 2, 0))


def _resized(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    if rgb.shape[:2] == (height, width):
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((width, height), Image.Resampling.BILINEAR))


def overlay_rgb(image: np.ndarray, heatmap: np.ndarray) -> np.ndarray:
    """The heatmap's colours over a grey copy of the image (resized to the heatmap), opaque where relevance
    is strong and transparent where it is near zero, so the image stays visible around the evidence."""
    h, w = heatmap.shape
    grey = _resized(image, h, w).astype(np.float64).mean(axis=2, keepdims=True)
    scale = float(np.abs(heatmap).max())
    alpha = np.sqrt(np.abs(heatmap) / scale)[..., None] if scale > 0 else np.zeros((h, w, 1))
    colour = heatmap_rgb(heatmap).astype(np.float64)
    return (grey * (1 - 0.85 * alpha) + colour * 0.85 * alpha).round().clip(0, 255).astype(np.uint8)


def mask_overlay_rgb(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """An image with a mask in [0, 1] outlined in yellow tint: the region ClArC treats as the artifact."""
    h, w = mask.shape
    rgb = _resized(image, h, w).astype(np.float64)
    m = np.clip(mask, 0.0, 1.0)[..., None]
    tint = np.array([255.0, 215.0, 0.0])
    return (rgb * (1 - 0.6 * m) + tint * 0.6 * m).round().clip(0, 255).astype(np.uint8)


def mask_rgb(mask: np.ndarray) -> np.ndarray:
    """A mask in [0, 1] as grey levels: white = inside the artifact region."""
    grey = (np.clip(mask, 0.0, 1.0) * 255).round().astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)
