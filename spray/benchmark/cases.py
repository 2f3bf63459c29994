"""The benchmark's grid: typed cases and the poisoned data, with ground truth, that each case makes.

A :class:`Case` is one cell of artifact × prevalence × architecture × seed, on the development or the
held-out split of the grid. The two splits differ in their seeds, in the poisoned class and in every
artifact's parameters (:data:`ARTIFACTS`), so a default chosen on the development split is tested on
artifacts it was not tuned to. :func:`make_case` builds a case's data deterministically from the case and
the :class:`Size`; the ground truth (which training images carry the artifact, and where) comes with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch.utils.data import TensorDataset

from spray.benchmark.artifacts import Artifact, Blur, Brightness, Frame, Patch, Tag
from spray.benchmark.data import Images
from spray.benchmark.models import ARCHITECTURES
from spray.errors import BadInputError

Split = Literal["dev", "heldout"]
SPLITS: tuple[Split, ...] = ("dev", "heldout")
CONTROL = "control"
ARTIFACTS: dict[str, dict[Split, Artifact | None]] = {
    "patch_fixed": {"dev": Patch(6, 2, (1, 1)), "heldout": Patch(5, 1, (22, 22))},
    "patch_random": {"dev": Patch(6, 2), "heldout": Patch(5, 1)},
    "tag": {"dev": Tag("AB", (22, 20)), "heldout": Tag("X37", (1, 16))},
    "frame": {"dev": Frame(1, 1.0), "heldout": Frame(2, 0.6)},
    "brightness": {"dev": Brightness(0.3), "heldout": Brightness(0.2)},
    "blur": {"dev": Blur(1.0), "heldout": Blur(1.5)},
    CONTROL: {"dev": None, "heldout": None},
}
"""Artifact kind -> its parameters on each split; the control plants nothing."""
PREVALENCES = (0.03, 0.10, 0.30)
POISONED_CLASS: dict[Split, int] = {"dev": 8, "heldout": 3}
SEED_OFFSET: dict[Split, int] = {"dev": 0, "heldout": 100}
"""Seed ``s`` of a benchmark run is seed ``s + offset`` of the split: the held-out seeds are never dev seeds."""
MIN_PLANTED = 10


@dataclass(frozen=True)
class Size:
    """How big a case is: images per class in the training and the test split, and the training recipe."""

    train_per_class: int
    test_per_class: int
    epochs: int
    batch_size: int = 32
    lr: float = 2e-3


FULL = Size(train_per_class=350, test_per_class=150, epochs=8)
QUICK = Size(train_per_class=100, test_per_class=50, epochs=5)
DIGITS = Size(train_per_class=120, test_per_class=50, epochs=8)
"""scikit-learn's digits have 174 to 183 images per class: one size serves both the full and the quick grid."""


def size_for(source: str, quick: bool) -> Size:
    """The case size for the data ``source`` (spray.benchmark.data) and the grid (quick or full)."""
    return DIGITS if source == "digits" else QUICK if quick else FULL


def planted_count(prevalence: float, size: Size) -> int:
    """How many of the poisoned class's training images carry the artifact at ``prevalence``."""
    return round(prevalence * size.train_per_class)


@dataclass(frozen=True)
class Case:
    """One benchmark case. ``prevalence``: the share of the poisoned class's training images that carry the
    artifact (0 for the control); ``seed``: the split's own seed (data, artifact draws, training)."""

    artifact: str
    prevalence: float
    architecture: str
    seed: int
    split: Split

    @property
    def name(self) -> str:
        return f"{self.artifact}-p{round(100 * self.prevalence):02d}-{self.architecture}-s{self.seed}-{self.split}"

    @property
    def is_control(self) -> bool:
        return self.artifact == CONTROL

    @property
    def poisoned_class(self) -> int:
        """The class the artifact is planted in (the control's nominal class: nothing is planted)."""
        return POISONED_CLASS[self.split]


def check_artifacts(names: list[str]) -> list[str]:
    """``names`` if each is an artifact kind; a BadInputError naming the unknown ones otherwise."""
    unknown = [n for n in names if n not in ARTIFACTS]
    if unknown or not names:
        raise BadInputError(
            f"unknown benchmark case {', '.join(map(repr, unknown)) or '(none given)'}; "
            f"choose from {', '.join(ARTIFACTS)}"
        )
    return names


def grid(artifacts: list[str], prevalences: tuple[float, ...], seeds: int,
         architectures: tuple[str, ...] = tuple(ARCHITECTURES)) -> list[Case]:
    """Every case of ``artifacts`` × ``prevalences`` × ``architectures`` × ``seeds`` seeds, on both splits
    (development first); the control once per seed and architecture, whatever the prevalences."""
    cases = []
    for split in SPLITS:
        for artifact in check_artifacts(artifacts):
            for prevalence in (0.0,) if artifact == CONTROL else prevalences:
                for architecture in architectures:
                    cases += [Case(artifact, prevalence, architecture, SEED_OFFSET[split] + s, split)
                              for s in range(seeds)]
    return cases


@dataclass(frozen=True, eq=False)
class CaseData:
    """A case's data and ground truth.

    ``train``, ``clean_test``: (x (n, 1, H, W) float32, y (n,) int64) arrays; ``everywhere_test``: the clean
    test images with the artifact in every one (None for the control). ``planted`` (k,) indexes ``train``:
    the training images that carry the artifact, all of ``poisoned_class``; ``masks`` (k, H, W) says where
    in each. ``is_global``: the artifact covers the whole image (no localisation to score).
    """

    case: Case
    train: tuple[np.ndarray, np.ndarray]
    clean_test: tuple[np.ndarray, np.ndarray]
    everywhere_test: tuple[np.ndarray, np.ndarray] | None
    planted: np.ndarray
    masks: np.ndarray
    poisoned_class: int
    is_global: bool

    @staticmethod
    def dataset(arrays: tuple[np.ndarray, np.ndarray]) -> TensorDataset:
        """A TensorDataset of (x, y) with the digits as ``label_names``."""
        dataset = TensorDataset(torch.from_numpy(arrays[0]), torch.from_numpy(arrays[1]))
        dataset.label_names = [str(d) for d in range(10)]  # type: ignore[attr-defined]
        return dataset


def make_case(case: Case, images: Images, size: Size) -> CaseData:
    """The case's data: a seeded, class-balanced draw of ``size.train_per_class`` training and
    ``size.test_per_class`` test images per class (sorted, disjoint); ``round(prevalence · n)`` of the
    poisoned class's ``n`` training images get the artifact, and every test image in ``everywhere_test``.
    Depends only on its arguments."""
    artifact = ARTIFACTS[check_artifacts([case.artifact])[0]][case.split]
    rng = np.random.default_rng([case.seed, SPLITS.index(case.split)])
    train_idx, test_idx = [], []
    for label in range(10):
        members = np.flatnonzero(images.y == label)
        if len(members) < size.train_per_class + size.test_per_class:
            raise BadInputError(
                f"{images.source} has {len(members)} images of class {label}, fewer than the "
                f"{size.train_per_class} + {size.test_per_class} a case draws; use a smaller size or --data mnist"
            )
        chosen = rng.choice(members, size.train_per_class + size.test_per_class, replace=False)
        train_idx.append(chosen[: size.train_per_class])
        test_idx.append(chosen[size.train_per_class :])
    train_idx, test_idx = np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(test_idx))
    x_train, y_train = images.x[train_idx].copy(), images.y[train_idx].copy()
    x_test, y_test = images.x[test_idx].copy(), images.y[test_idx].copy()

    candidates = np.flatnonzero(y_train == case.poisoned_class)
    count = planted_count(case.prevalence, size)
    if artifact is not None and count < MIN_PLANTED:
        raise BadInputError(
            f"case {case.name}: {case.prevalence:.0%} of {len(candidates)} images of class "
            f"{case.poisoned_class} is {count}, fewer than the {MIN_PLANTED} planted images a case needs; "
            "use a larger prevalence or --data mnist"
        )
    planted = np.sort(rng.choice(candidates, count, replace=False)) if artifact is not None else \
        np.empty(0, np.int64)
    height, width = x_train.shape[-2:]
    masks = np.zeros((len(planted), height, width), np.float32)
    everywhere = None
    if artifact is not None:
        x_train[planted], masks = artifact.apply(x_train[planted], rng)
        everywhere = (artifact.apply(x_test, rng)[0], y_test)
    return CaseData(case, (x_train, y_train), (x_test, y_test), everywhere, planted.astype(np.int64), masks,
                    case.poisoned_class, artifact is not None and artifact.is_global)
