"""Groups inferred from the audit, for the group-robust corrections (DFR, GroupDRO, the auto choice).

No group labels are given: spray's own clustering stands in for them, as in the protocols published for
inferred groups (GEORGE, Sohoni et al. 2020: cluster each class, then train for the worst cluster; JTT,
Liu et al. 2021: the samples an ERM model gets "for the wrong reason" form a group). The flagged cluster
is one group, the rest of its class another, and every other class one group of its own:

    group 0: the flagged cluster (class ``label``)      group 1: the rest of class ``label``
    group 2, 3, ...: the other classes, in label order

A seeded split stratified by group holds out a validation part (``validation`` of every group) on which
the corrections choose their regularisation and stopping point by worst-group accuracy.

**Counterfactual groups.** The audited model saw every training sample and classifies nearly all of them
right, the shortcut's group included, so worst-group accuracy over these groups hardly tells a model that
uses the artifact from one that does not. What the training data lacks is the group the shortcut fails on:
other classes *with* the artifact. The artifact model supplies it (spray.clarc.transform: the patch pasted,
the intensity map applied, or a group sample transplanted), one counterfactual group per other class, ids
``G .. 2G − 3`` after the ``G`` inferred groups (other class ``g`` ↦ ``g + G − 2``). This goes beyond GEORGE
and JTT, which only reweight the groups they find; it is how A-ClArC's augmentation enters the group-robust
methods.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import Tensor, nn
from torch.utils.data import Dataset

from spray.errors import GroupSizeError
from spray.training import predict_samples

VALIDATION = 0.3
"""The share of every group held out for validation."""


@dataclass(frozen=True)
class InferredGroups:
    """Per dataset sample: ``labels`` (n,) its class, ``groups`` (n,) its group id; ``names`` the groups'
    names (``"8:cluster"``, ``"8:rest"``, ``"0"``, ...), indexed by group id; ``label`` the flagged class."""

    label: int
    labels: np.ndarray
    groups: np.ndarray
    names: tuple[str, ...]

    @property
    def classes(self) -> np.ndarray:
        """The dataset's classes, sorted."""
        return np.unique(self.labels)

    @property
    def n_counterfactual(self) -> int:
        """The number of groups with the counterfactual ones: ``2G − 2``."""
        return 2 * len(self.names) - 2

    @property
    def sizes(self) -> np.ndarray:
        return np.bincount(self.groups, minlength=len(self.names))

    def describe(self) -> str:
        """``8:cluster 30, 8:rest 70, 0 100, ...``: the groups and their sizes."""
        return ", ".join(f"{name} {size}" for name, size in zip(self.names, self.sizes))

    def split(self, validation: float = VALIDATION, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(fit, validation) dataset indices: ``round(validation × size)`` of every group, at least one, held
        out at random (seeded); both sorted."""
        rng = np.random.default_rng(seed)
        held: list[np.ndarray] = []
        for g in range(len(self.names)):
            members = np.flatnonzero(self.groups == g)
            k = min(len(members) - 1, max(1, round(validation * len(members))))
            held.append(rng.choice(members, size=k, replace=False))
        val = np.sort(np.concatenate(held))
        return np.setdiff1d(np.arange(len(self.groups)), val), val


def labels_of(dataset: Dataset) -> np.ndarray:
    """Every sample's label (n,) int64, in dataset order."""
    n = len(dataset)  # type: ignore[arg-type]
    return np.fromiter((int(dataset[i][1]) for i in range(n)), dtype=np.int64, count=n)


def infer_groups(labels: np.ndarray, label: int, cluster: np.ndarray) -> InferredGroups:
    """The groups of the module docstring for dataset ``labels`` (n,), the flagged class ``label`` and its
    cluster's dataset indices ``cluster``."""
    labels = np.asarray(labels, dtype=np.int64)
    others = [int(c) for c in np.unique(labels) if c != label]
    groups = np.empty(len(labels), dtype=np.int64)
    groups[labels == label] = 1
    groups[np.asarray(cluster, dtype=np.int64)] = 0
    for g, c in enumerate(others, start=2):
        groups[labels == c] = g
    return InferredGroups(label, labels, groups, (f"{label}:cluster", f"{label}:rest", *map(str, others)))


def check_group_sizes(inferred: InferredGroups, minimum: int, what: str) -> None:
    """Refuse groups smaller than ``minimum``, naming every group's size (``what`` needs them)."""
    if inferred.sizes.min() < minimum:
        raise GroupSizeError(
            f"{what} needs at least {minimum} samples in every inferred group, got {inferred.describe()}; "
            "choose a larger cluster, or a dataset with more samples of every class"
        )


def group_tallies(predicted: np.ndarray, labels: np.ndarray, groups: np.ndarray,
                  n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Per group (n_groups,): how many samples are classified right, and how many there are."""
    correct = np.bincount(groups, weights=(predicted == labels).astype(float), minlength=n_groups)
    return correct.astype(np.int64), np.bincount(groups, minlength=n_groups)


def group_accuracies(predicted: np.ndarray, labels: np.ndarray, groups: np.ndarray, n_groups: int) -> np.ndarray:
    """Accuracy per group (n_groups,); NaN for a group without samples."""
    correct, count = group_tallies(predicted, labels, groups, n_groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        return correct / count


@dataclass(frozen=True)
class WorstGroup:
    """The group a model does worst on among some samples: its ``name`` (an inferred group's, or
    ``"<class>+<kind>"`` for the counterfactual group of another class with the artifact of that kind), and
    how many of its ``size`` samples the model gets ``correct``. The size says what one sample is worth: a
    worst group of 3 moves by 0.33 with one sample."""

    name: str
    correct: int
    size: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.size

    def to_dict(self) -> dict[str, Any]:
        return {"worst_group": self.accuracy, "worst_group_name": self.name,
                "worst_group_correct": self.correct, "worst_group_size": self.size}

    def __str__(self) -> str:
        return f"{self.accuracy:.3f} ({self.correct}/{self.size} of {self.name})"


def worst_group(model: nn.Module, dataset: Dataset, index: np.ndarray, inferred: InferredGroups,
                *transforms: Callable[[Tensor], Tensor]) -> WorstGroup:
    """The group of lowest accuracy of ``model`` over the inferred groups among samples ``index``; with the
    artifact's ``transforms``, over each one's counterfactual groups too (the samples of other classes,
    transformed). Ties go to the group listed first (inferred before counterfactual)."""
    index = np.asarray(index, dtype=np.int64)
    predicted, labels = (t.numpy() for t in predict_samples(model, dataset, index))
    groups, other = inferred.groups[index], labels != inferred.label
    n = len(inferred.names)
    tallies = [group_tallies(predicted, labels, groups, n)]
    names = list(inferred.names)
    for transform in transforms:
        tallies.append(group_tallies(predict_samples(model, dataset, index[other], transform)[0].numpy(),
                                     labels[other], groups[other], n))
        kind = getattr(transform, "kind", "transformed")
        names += [f"{name}+{kind}" for name in inferred.names]
    correct, count = (np.concatenate(t) for t in zip(*tallies))
    present = np.flatnonzero(count > 0)
    worst = present[np.argmin(correct[present] / count[present])]
    return WorstGroup(names[worst], int(correct[worst]), int(count[worst]))


def worst_group_accuracy(model: nn.Module, dataset: Dataset, index: np.ndarray, inferred: InferredGroups,
                         *transforms: Callable[[Tensor], Tensor]) -> float:
    """The accuracy of :func:`worst_group`."""
    return worst_group(model, dataset, index, inferred, *transforms).accuracy
