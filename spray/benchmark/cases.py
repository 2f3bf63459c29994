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

from spray._checks import check_names
from spray.benchmark.artifacts import Artifact, Blur, Brightness, Cast, Frame, Patch, Tag
from spray.benchmark.backgrounds import Background, Waterbirds, texture
from spray.benchmark.data import Images
from spray.benchmark.models import DEFAULT_ARCHITECTURES, check_architectures
from spray.errors import BadInputError

Split = Literal["dev", "heldout"]
SPLITS: tuple[Split, ...] = ("dev", "heldout")
CONTROL = "control"
ARTIFACTS: dict[str, dict[Split, Artifact | Waterbirds | None]] = {
    "patch_fixed": {"dev": Patch(6, 2, (1, 1)), "heldout": Patch(5, 1, (22, 22))},
    "patch_random": {"dev": Patch(6, 2), "heldout": Patch(5, 1)},
    "patch_large": {"dev": Patch(10, 2, (1, 1)), "heldout": Patch(10, 2, (17, 17))},
    "tag": {"dev": Tag("AB", (22, 20)), "heldout": Tag("X37", (1, 16))},
    "frame": {"dev": Frame(1, 1.0), "heldout": Frame(2, 0.6)},
    "brightness": {"dev": Brightness(0.3), "heldout": Brightness(0.2)},
    "blur": {"dev": Blur(1.0), "heldout": Blur(1.5)},
    "cast": {"dev": Cast((1.0, 0.8, 0.55), (0.15, 0.08, 0.0)), "heldout": Cast((0.65, 0.9, 1.0), (0.0, 0.06, 0.12))},
    "waterbirds": {"dev": Waterbirds((3, 8), (Background("grass"), Background("brick")), poisoned=1),
                   "heldout": Waterbirds((4, 9), (Background("gravel"), Background("grass")), poisoned=0)},
    CONTROL: {"dev": None, "heldout": None},
}
"""Artifact kind -> its parameters on each split; the control plants nothing. ``waterbirds`` is the two-class set
of spray.benchmark.backgrounds (its cases have two classes, group labels and their own poisoned class).
``patch_large``: the fixed patch large enough that the model learns it from 3 % of a class (10 images of 350),
which the 6×6 patch is not (docs/benchmark.md, "3 % prevalence")."""
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
        """The class the artifact is planted in (the control's nominal class: nothing is planted); the
        two-class set's class whose minority group is the ground truth."""
        spec = self._spec
        return spec.poisoned if isinstance(spec, Waterbirds) else POISONED_CLASS[self.split]

    @property
    def is_global(self) -> bool:
        """Whether the artifact covers the whole image (brightness, blur, cast, the two-class set's background):
        no mask localises it, and the detection targets hold it to its CAV retrieval alone."""
        return self._spec is not None and self._spec.is_global

    @property
    def _spec(self) -> Artifact | Waterbirds | None:
        """The artifact's parameters on this case's split (None: the control or an unknown kind)."""
        return ARTIFACTS.get(self.artifact, {}).get(self.split)


def check_artifacts(names: list[str]) -> tuple[str, ...]:
    """``names`` (each once) if each is an artifact kind; a BadInputError naming the unknown ones otherwise."""
    return check_names(names, tuple(ARTIFACTS), "benchmark case")


def check_splits(splits: list[str]) -> tuple[Split, ...]:
    """``splits`` if each is one of :data:`SPLITS` (in :data:`SPLITS`' order, once each), else a BadInputError."""
    chosen = check_names(splits, SPLITS, "split", "--splits")
    return tuple(s for s in SPLITS if s in chosen)


def grid(artifacts: list[str], prevalences: tuple[float, ...], seeds: int,
         architectures: tuple[str, ...] = DEFAULT_ARCHITECTURES, splits: tuple[str, ...] = SPLITS) -> list[Case]:
    """Every case of ``artifacts`` × ``prevalences`` × ``architectures`` (spray.benchmark.models) × ``seeds``
    seeds, on each of ``splits`` (:func:`check_splits`; development first); the control once per seed and
    architecture, whatever the prevalences."""
    cases = []
    for split in check_splits(list(splits)):
        for artifact in check_artifacts(artifacts):
            for prevalence in (0.0,) if artifact == CONTROL else prevalences:
                for architecture in check_architectures(list(architectures)):
                    cases += [Case(artifact, prevalence, architecture, SEED_OFFSET[split] + s, split)
                              for s in range(seeds)]
    return cases


def check_extras(cases: list[Case]) -> None:
    """Load what ``cases`` need beyond the digits (the two-class set's textures: scikit-image) once, so that a
    missing extra is refused before the first case runs, not after hours of others."""
    for case in cases:
        spec = ARTIFACTS[check_artifacts([case.artifact])[0]][case.split]
        for background in spec.backgrounds if isinstance(spec, Waterbirds) else ():
            texture(background.texture)


@dataclass(frozen=True, eq=False)
class CaseData:
    """A case's data and ground truth.

    ``train``, ``clean_test``: (x (n, C, H, W) float32, y (n,) int64) arrays, C = 3 for the colour cast and 1
    otherwise; ``everywhere_test``: the clean test images with the artifact in every one (the two-class set: every
    test image on the other class's background; None for the control). ``planted`` (k,) indexes ``train``: the
    training images that carry the artifact, all of ``poisoned_class``; ``masks`` (k, H, W) says where in each.
    ``is_global``: the case's (:attr:`Case.is_global`: no localisation to score). ``label_names``: the classes'
    names (the digits). ``groups``: the two-class set's group labels (spray.benchmark.backgrounds) of the
    training and the clean test images, named by ``group_names``; None for the other cases.
    """

    case: Case
    train: tuple[np.ndarray, np.ndarray]
    clean_test: tuple[np.ndarray, np.ndarray]
    everywhere_test: tuple[np.ndarray, np.ndarray] | None
    planted: np.ndarray
    masks: np.ndarray
    poisoned_class: int
    label_names: tuple[str, ...] = tuple(str(d) for d in range(10))
    groups: tuple[np.ndarray, np.ndarray] | None = None
    group_names: tuple[str, ...] = ()

    @property
    def is_global(self) -> bool:
        return self.case.is_global

    def dataset(self, arrays: tuple[np.ndarray, np.ndarray]) -> TensorDataset:
        """A TensorDataset of (x, y) with the case's ``label_names``."""
        dataset = TensorDataset(torch.from_numpy(arrays[0]), torch.from_numpy(arrays[1]))
        dataset.label_names = list(self.label_names)  # type: ignore[attr-defined]
        return dataset


def _draw(images: Images, labels: tuple[int, ...], size: Size,
          rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Sorted, disjoint training and test indices into ``images``: ``size.train_per_class`` and
    ``size.test_per_class`` of each of ``labels``, drawn in that order."""
    train_idx, test_idx = [], []
    for label in labels:
        members = np.flatnonzero(images.y == label)
        if len(members) < size.train_per_class + size.test_per_class:
            raise BadInputError(
                f"{images.source} has {len(members)} images of class {label}, fewer than the "
                f"{size.train_per_class} + {size.test_per_class} a case draws; use a smaller size or --data mnist"
            )
        chosen = rng.choice(members, size.train_per_class + size.test_per_class, replace=False)
        train_idx.append(chosen[: size.train_per_class])
        test_idx.append(chosen[size.train_per_class :])
    return np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(test_idx))


def _check_planted(case: Case, count: int, candidates: int) -> None:
    if count < MIN_PLANTED:
        raise BadInputError(
            f"case {case.name}: {case.prevalence:.0%} of {candidates} images of class "
            f"{case.poisoned_class} is {count}, fewer than the {MIN_PLANTED} planted images a case needs; "
            "use a larger prevalence or --data mnist"
        )


def make_case(case: Case, images: Images, size: Size) -> CaseData:
    """The case's data: a seeded, class-balanced draw of ``size.train_per_class`` training and
    ``size.test_per_class`` test images per class (sorted, disjoint); ``round(prevalence · n)`` of the
    poisoned class's ``n`` training images get the artifact, and every test image in ``everywhere_test``
    (the two-class set: :func:`_two_class_case`). Depends only on its arguments."""
    artifact = ARTIFACTS[check_artifacts([case.artifact])[0]][case.split]
    rng = np.random.default_rng([case.seed, SPLITS.index(case.split)])
    if isinstance(artifact, Waterbirds):
        return _two_class_case(case, artifact, images, size, rng)
    train_idx, test_idx = _draw(images, tuple(range(10)), size, rng)
    channels = 1 if artifact is None else artifact.channels
    x_train, y_train = np.repeat(images.x[train_idx], channels, axis=1), images.y[train_idx].copy()
    x_test, y_test = np.repeat(images.x[test_idx], channels, axis=1), images.y[test_idx].copy()

    candidates = np.flatnonzero(y_train == case.poisoned_class)
    count = planted_count(case.prevalence, size)
    if artifact is not None:
        _check_planted(case, count, len(candidates))
    planted = np.sort(rng.choice(candidates, count, replace=False)) if artifact is not None else \
        np.empty(0, np.int64)
    height, width = x_train.shape[-2:]
    masks = np.zeros((len(planted), height, width), np.float32)
    everywhere = None
    if artifact is not None:
        x_train[planted], masks = artifact.apply(x_train[planted], rng)
        everywhere = (artifact.apply(x_test, rng)[0], y_test)
    return CaseData(case, (x_train, y_train), (x_test, y_test), everywhere, planted.astype(np.int64), masks,
                    case.poisoned_class)


def _two_class_case(case: Case, spec: Waterbirds, images: Images, size: Size,
                    rng: np.random.Generator) -> CaseData:
    """The Waterbirds-like case: ``spec.digits`` drawn as :func:`make_case` draws, relabelled 0 and 1;
    ``round(prevalence · n)`` of each class's ``n`` training images on the other class's background (the
    minority groups), half of each class's test images; the poisoned class's minority group is ``planted``,
    and ``everywhere_test`` puts every test image on the other class's background."""
    train_idx, test_idx = _draw(images, spec.digits, size, rng)
    x_train, x_test = images.x[train_idx], images.x[test_idx]
    y_train, y_test = (np.searchsorted(spec.digits, images.y[i]).astype(np.int64) for i in (train_idx, test_idx))
    count = planted_count(case.prevalence, size)
    _check_planted(case, count, size.train_per_class)
    other_train, other_test = np.zeros(len(y_train), bool), np.zeros(len(y_test), bool)
    for label in (0, 1):
        other_train[rng.choice(np.flatnonzero(y_train == label), count, replace=False)] = True
        other_test[rng.choice(np.flatnonzero(y_test == label), size.test_per_class // 2, replace=False)] = True
    (x_train, groups_train), (x_clean, groups_test) = (spec.compose(x, y, other, rng) for x, y, other in (
        (x_train, y_train, other_train), (x_test, y_test, other_test)))
    everywhere = spec.compose(x_test, y_test, np.ones(len(y_test), bool), rng)[0]
    planted = np.flatnonzero(other_train & (y_train == spec.poisoned)).astype(np.int64)
    masks = np.ones((len(planted), *x_train.shape[-2:]), np.float32)
    return CaseData(case, (x_train, y_train), (x_clean, y_test), (everywhere, y_test), planted, masks,
                    spec.poisoned, tuple(str(d) for d in spec.digits), (groups_train, groups_test),
                    spec.group_names)
