"""The artifact as a transformation of inputs: a local patch pasted, or a global shift added.

A local artifact (a sticker, a tag, a frame) is modelled by its patch and mean mask (spray.clarc.localize):
``x' = (1 − M) ⊙ x + M ⊙ patch``. A global confounder (brightness, a colour cast, a texture over the
whole image) has no patch: LRP along its CAV spreads over the image, and a "patch" averaged over the
cluster would paste the cluster's own digits. Its model is the **mean input shift** of the group,
``δ = mean(x of the cluster) − mean(x of the rest of its class)`` (C, H, W), added to the inputs:
``x' = x + δ``. What the digits have in common cancels in the difference; what the cluster has in addition
stays.

The rule (:func:`artifact_kind`): the artifact is *global* when its localisation covers most of the image,
i.e. the mean mask's area share ``mean_{h,w} M`` is at least :data:`GLOBAL_COVERAGE`; else *local*.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor
from torch.utils.data import Dataset

from spray._checks import check_choice
from spray.clarc.localize import paste
from spray.training import stack_samples

GLOBAL_COVERAGE = 0.5
KINDS = ("auto", "local", "global")


def coverage(mask: Tensor) -> float:
    """The area share of a soft mask (H, W) with values in [0, 1]: its mean."""
    return float(mask.float().mean())


def artifact_kind(artifact: object) -> str:
    """``"global"`` if the artifact's mean mask covers at least :data:`GLOBAL_COVERAGE` of the image, else
    ``"local"``."""
    return "global" if coverage(artifact.mask) >= GLOBAL_COVERAGE else "local"  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Paste:
    """``x ↦ (1 − mask) ⊙ x + mask ⊙ patch``."""

    patch: Tensor
    mask: Tensor
    kind = "local"

    def __call__(self, x: Tensor) -> Tensor:
        return paste(x, self.patch, self.mask)


@dataclass(frozen=True)
class Shift:
    """``x ↦ x + delta`` (``delta`` one input's shape)."""

    delta: Tensor
    kind = "global"

    def __call__(self, x: Tensor) -> Tensor:
        return x + self.delta.to(x.dtype)


def mean_shift(dataset: Dataset, artifact: object, chunk: int = 512) -> Tensor:
    """``mean(x of the cluster) − mean(x of the rest of its class)`` (one input's shape)."""
    def mean(index) -> Tensor:
        total = sum(stack_samples(dataset, index[i : i + chunk])[0].sum(0) for i in range(0, len(index), chunk))
        return total / len(index)  # type: ignore[operator]

    return mean(artifact.artifact_index) - mean(artifact.rest_index)  # type: ignore[attr-defined]


def artifact_transform(artifact: object, dataset: Dataset, kind: str = "auto") -> Paste | Shift:
    """The artifact's transformation: ``kind="auto"`` by :func:`artifact_kind`, or forced ``"local"``
    (:class:`Paste`) / ``"global"`` (:class:`Shift`)."""
    check_choice(kind, "artifact kind", KINDS)
    if kind == "auto":
        kind = artifact_kind(artifact)
    if kind == "global":
        return Shift(mean_shift(dataset, artifact))
    return Paste(artifact.patch, artifact.mask)  # type: ignore[attr-defined]

