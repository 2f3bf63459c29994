"""Poisoned digits: scikit-learn's 8×8 digits, upsampled to 32×32, with a Clever Hans stamp planted.

The data ships inside scikit-learn, so the demo never downloads anything. A high-contrast checker stamp
is pasted into a known fraction of ONE class's training images; a model trained on them learns
"stamp ⇒ that class" next to the digit shapes. Random specks in about half of all images teach any model
that marks outside the strokes mean nothing, so a model trained without the stamp is not thrown off by
it: what the stamp does to the poisoned model is what the poisoning taught it. The planted training indices are the ground truth a SpRAy
audit should rediscover, and three test versions measure how much the model relies on the stamp
(clean, poisoned as at training time, stamp in every image). See docs/demo.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from spray.errors import BadInputError

SIZE = 32
SPLITS = ("train", "clean_test", "poisoned_test", "everywhere_test")
Split = Literal["train", "clean_test", "poisoned_test", "everywhere_test"]
LABEL_NAMES = tuple(str(d) for d in range(10))

# 8 is the default because it is the digit most often confused with others (3, 1, 9, 5) by small models on
# this data set: a class that is trivially separable would make the stamp a shortcut nobody needs, and a
# real audit's Clever Hans classes are rarely the easy ones.
DEFAULT_CLASS = 8
DEFAULT_FRACTION = 0.3
DEFAULT_SPECKS = 0.5
DEFAULT_SEED = 0
TEST_SIZE = 0.3

ArrayOrTensor = TypeVar("ArrayOrTensor", np.ndarray, torch.Tensor)


def _readonly(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


@dataclass(frozen=True, eq=False)
class Artifact:
    """An image patch pasted through a mask at a fixed position: ``x ← mask·patch + (1 − mask)·x``.

    ``patch`` and ``mask`` are (h, w) float32 in [0, 1]; ``position`` is the (row, column) of the patch's
    top-left pixel in the 32×32 image. The same patch goes into every channel.
    """

    patch: np.ndarray
    mask: np.ndarray
    position: tuple[int, int]

    @property
    def shape(self) -> tuple[int, int]:
        return self.patch.shape  # type: ignore[return-value]

    def image_mask(self, size: tuple[int, int] = (SIZE, SIZE)) -> np.ndarray:
        """The mask in image coordinates, (H, W) float32: where the artifact is (for relevance-in-mask)."""
        full = np.zeros(size, dtype=np.float32)
        (r, c), (h, w) = self.position, self.shape
        if r < 0 or c < 0 or r + h > size[0] or c + w > size[1]:
            raise BadInputError(f"artifact of size {h}×{w} at {self.position} does not fit an image of {size}")
        full[r : r + h, c : c + w] = self.mask
        return full


def checker_stamp(size: int = 12, cell: int = 2, position: tuple[int, int] = (1, 1)) -> Artifact:
    """A ``size``×``size`` black/white checkerboard of ``cell``-pixel squares, fully opaque.

    The default (12×12 of 2-pixel squares at rows and columns 1–12) sits in the top-left corner, over the
    upper-left end of some digits' strokes, like a logo stamped onto a scan. A 2-pixel checker is a
    regular texture that neither digit strokes nor the random specks have. Smaller stamps are learned too,
    but then the digit shapes win more often and the stamp flips fewer predictions (docs/demo.md).
    """
    if size < 2 or cell < 1:
        raise BadInputError(f"checker_stamp needs size >= 2 and cell >= 1, got size={size}, cell={cell}")
    rows, cols = np.indices((size, size)) // cell
    patch = ((rows + cols) % 2 == 0).astype(np.float32)
    return Artifact(_readonly(patch), _readonly(np.ones((size, size), np.float32)), position)


DEFAULT_ARTIFACT = checker_stamp()


def paste_artifact(x: ArrayOrTensor, artifact: Artifact = DEFAULT_ARTIFACT) -> ArrayOrTensor:
    """Return a copy of ``x`` (numpy or torch, shape (..., H, W)) with ``artifact`` pasted into every image.

    Leading dimensions (samples, channels) broadcast, so one call stamps a whole batch of any channel count;
    ``x`` itself is never modified. ClArC's evaluation uses this to put the stamp where it never was.
    """
    h, w = artifact.shape
    r, c = artifact.position
    if x.ndim < 2 or r < 0 or c < 0 or r + h > x.shape[-2] or c + w > x.shape[-1]:
        raise BadInputError(
            f"cannot paste a {h}×{w} artifact at {artifact.position} into images of shape {tuple(x.shape)}"
        )
    patch, mask = artifact.patch, artifact.mask
    if isinstance(x, torch.Tensor):
        out = x.clone()
        patch = torch.tensor(patch, dtype=x.dtype, device=x.device)
        mask = torch.tensor(mask, dtype=x.dtype, device=x.device)
    else:
        out = np.array(x, copy=True)
        patch, mask = patch.astype(out.dtype), mask.astype(out.dtype)
    region = out[..., r : r + h, c : c + w]
    out[..., r : r + h, c : c + w] = mask * patch + (1 - mask) * region
    return out


@dataclass(frozen=True, eq=False)
class SplitArrays:
    """One split: ``x`` (n, 1, 32, 32) float32 in [0, 1], ``y`` (n,) int64. Both read-only."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True, eq=False)
class PoisonedDigits:
    """The demo data and its ground truth.

    ``planted`` indexes ``train`` (the stamped training images, all of class ``poisoned_class``);
    ``planted_test`` indexes ``poisoned_test`` likewise. ``clean_test``, ``poisoned_test`` and
    ``everywhere_test`` hold the same images in the same order with the same labels; only the stamp differs.
    """

    train: SplitArrays
    clean_test: SplitArrays
    poisoned_test: SplitArrays
    everywhere_test: SplitArrays
    planted: np.ndarray
    planted_test: np.ndarray
    artifact: Artifact
    poisoned_class: int
    fraction: float
    specks: float
    seed: int
    label_names: tuple[str, ...] = field(default=LABEL_NAMES)

    def split(self, name: Split) -> SplitArrays:
        if name not in SPLITS:
            raise BadInputError(f"unknown split {name!r}; choose one of {', '.join(SPLITS)}")
        return getattr(self, name)

    def as_dataset(self, split: Split) -> TensorDataset:
        """A torch ``TensorDataset`` of (x (1, 32, 32) float32, y int64) with a ``label_names`` attribute."""
        arrays = self.split(split)
        dataset = TensorDataset(torch.tensor(arrays.x), torch.tensor(arrays.y))
        dataset.label_names = list(self.label_names)  # type: ignore[attr-defined]
        return dataset


def _upsample(images: np.ndarray) -> np.ndarray:
    """(n, 8, 8) in [0, 16] -> (n, 1, 32, 32) float32 in [0, 1].

    Bilinear upsampling of an 8×8 image is already smooth; nearest-neighbour plus blur would only add a
    parameter. Values stay in [0, 1] because bilinear weights are a convex combination.
    """
    x = torch.from_numpy(images.astype(np.float32) / 16.0)[:, None]
    return F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False).numpy()


def add_specks(x: np.ndarray, probability: float, rng: np.random.Generator) -> np.ndarray:
    """Give each image of ``x`` (n, C, H, W) with ``probability`` one random black/white speck, in place.

    A speck is a 3–6 × 3–6 patch of random 0/1 pixels at a random position. Without specks the CNN has
    never seen a sharp mark outside a digit stroke, and any such mark, the stamp included, throws a model
    trained on clean digits off (seed 0, measured: a model trained without the planted stamp drops from
    0.970 to 0.174 accuracy with the stamp in every test image): the "stamp everywhere" test would then
    measure that fragility, not a learned shortcut. With specks the same control model keeps 0.859 of its
    0.956 (docs/demo.md), so what the stamp does to the poisoned model is what the poisoning taught it.
    """
    n, _, height, width = x.shape
    for i in np.flatnonzero(rng.random(n) < probability):
        h, w = rng.integers(3, 7, size=2)
        r, c = rng.integers(0, height - h + 1), rng.integers(0, width - w + 1)
        x[i, :, r : r + h, c : c + w] = rng.random((h, w)) < 0.5
    return x


def _choose(rng: np.random.Generator, candidates: np.ndarray, fraction: float) -> np.ndarray:
    count = int(round(fraction * len(candidates)))
    return np.sort(rng.choice(candidates, size=count, replace=False)).astype(np.int64)


def poisoned_digits(
    seed: int = DEFAULT_SEED,
    *,
    poisoned_class: int = DEFAULT_CLASS,
    fraction: float = DEFAULT_FRACTION,
    artifact: Artifact = DEFAULT_ARTIFACT,
    specks: float = DEFAULT_SPECKS,
    test_size: float = TEST_SIZE,
) -> PoisonedDigits:
    """Build the demo data: a seeded stratified train/test split with ``artifact`` planted.

    First each image, of every class and split, gets with probability ``specks`` one speck: a random
    black/white pattern of 3–6 × 3–6 pixels at a random place (see :func:`add_specks` for why). Then
    ``round(fraction · n)`` of the ``n`` training images of ``poisoned_class`` get the stamp, and the same
    fraction of that class's test images in ``poisoned_test``; ``everywhere_test`` stamps every test image.
    The result depends only on the arguments (and scikit-learn's bundled data).
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if poisoned_class not in range(10):
        raise BadInputError(f"poisoned_class must be a digit 0..9, got {poisoned_class!r}")
    if not 0.0 <= fraction <= 1.0:
        raise BadInputError(f"fraction must be in [0, 1], got {fraction!r}")
    if not 0.0 < test_size < 1.0:
        raise BadInputError(f"test_size must be in (0, 1), got {test_size!r}")
    if not 0.0 <= specks <= 1.0:
        raise BadInputError(f"specks must be a probability in [0, 1], got {specks!r}")

    digits = load_digits()
    x = add_specks(_upsample(digits.images), specks, np.random.default_rng([seed, 1]))
    y = digits.target.astype(np.int64)
    train_idx, test_idx = train_test_split(
        np.arange(len(y)), test_size=test_size, stratify=y, random_state=seed
    )
    # The split is sorted so sample order (and the dataset indices an audit reports) follows the source.
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    rng = np.random.default_rng(seed)
    x_train, y_train = x[train_idx], y[train_idx]
    x_test, y_test = x[test_idx], y[test_idx]
    planted = _choose(rng, np.flatnonzero(y_train == poisoned_class), fraction)
    planted_test = _choose(rng, np.flatnonzero(y_test == poisoned_class), fraction)
    x_train[planted] = paste_artifact(x_train[planted], artifact)
    x_poisoned = x_test.copy()
    x_poisoned[planted_test] = paste_artifact(x_poisoned[planted_test], artifact)
    x_everywhere = paste_artifact(x_test, artifact)

    y_test = _readonly(y_test)

    def split(xs: np.ndarray, ys: np.ndarray) -> SplitArrays:
        return SplitArrays(_readonly(np.ascontiguousarray(xs, dtype=np.float32)), ys)

    return PoisonedDigits(
        train=split(x_train, _readonly(y_train)),
        clean_test=split(x_test, y_test),
        poisoned_test=split(x_poisoned, y_test),
        everywhere_test=split(x_everywhere, y_test),
        planted=_readonly(planted),
        planted_test=_readonly(planted_test),
        artifact=artifact,
        poisoned_class=poisoned_class,
        fraction=fraction,
        specks=specks,
        seed=seed,
    )


@lru_cache(maxsize=4)
def default_poisoned_digits(seed: int = DEFAULT_SEED) -> PoisonedDigits:
    """``poisoned_digits(seed)`` with all defaults, built once per process (the object is immutable)."""
    return poisoned_digits(seed)
