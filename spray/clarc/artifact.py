"""The artifact model of a flagged cluster: its CAV at a layer, its masks and patch, the clean mean.

:func:`isolate_artifact` is the first half of every ClArC method: from the cluster's samples (the
artifact) and the rest of their class, at the given layer, the default one (the last feature map the head
reads) or, with ``layer="auto"``, the one spray.clarc.layer_choice chooses, it fits the CAV on spatially pooled activations, localises the
artifact in input space by LRP along the CAV (spray.clarc.localize), and records the clean samples' mean
activation ``z`` for P-ClArC.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, Subset

from spray._checks import check_choice
from spray.clarc.activations import activations, default_layer, pool, pooled_activations, resolve_layer
from spray.clarc.cav import CAV, check_cav_sizes
from spray.clarc.layer_choice import AUTO, LayerChoice, choose_layer
from spray.clarc.localize import SIGMA, THRESHOLD, Localization, localize
from spray.lrp import Composite, EpsilonPlusFlat
from spray.training import stack_samples

#: How many artifact samples (inputs and masks) are kept as examples for reports.
N_EXAMPLES = 8
#: How many samples outside the cluster (a seeded draw) the layer choice checks its projections on.
N_CLEAN = 256
_REFERENCES = ("class", "all")


@dataclass(frozen=True, eq=False)
class ArtifactModel:
    """What ClArC knows about one artifact.

    ``label``: the class whose cluster it is; ``layer``: module name; ``cav``: the fitted :class:`CAV`
    (``direction`` (C,) its unit vector as a tensor, ``basis`` (k, C) its orthonormal directions, the first
    ``direction``: k > 1 only for a subspace CAV); ``clean_mean``: ``z``, the mean activation of the
    clean reference samples (one activation's shape, (C, *spatial)); ``localization``: per-sample masks,
    patch (C, H, W), mean mask (H, W); ``artifact_index`` / ``rest_index``: dataset indices of the
    cluster's samples and of the rest of the class; ``cluster``: the ``CLASS:CLUSTERING:ID`` it came from;
    ``choice``: how the layer was chosen (None when it was given).
    """

    label: int
    layer: str
    cav: CAV
    direction: Tensor
    clean_mean: Tensor
    localization: Localization
    artifact_index: np.ndarray
    rest_index: np.ndarray
    cluster: str | None = None
    basis: Tensor | None = None
    choice: LayerChoice | None = None

    def __post_init__(self) -> None:
        if self.basis is None:
            object.__setattr__(self, "basis", self.direction[None])

    @property
    def patch(self) -> Tensor:
        return self.localization.patch

    @property
    def mask(self) -> Tensor:
        return self.localization.mask

    def examples(self, dataset: Dataset, k: int = N_EXAMPLES) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(inputs (k, C, H, W), masks (k, H, W), dataset indices (k,)) of the first ``k`` artifact samples."""
        index = self.artifact_index[:k]
        x, _ = stack_samples(dataset, index)
        masks = self.localization.masks[: len(index)]
        return x.numpy().astype(np.float32), masks.numpy().astype(np.float32), index.astype(np.int64)

    def fingerprint(self) -> dict[str, object]:
        """What a fine-tuning run depends on (for its checkpoint): label, layer, hashes of v, patch, mask."""
        subspace = {"basis": digest(self.basis)} if len(self.basis) > 1 else {}
        return {"label": self.label, "layer": self.layer, "direction": digest(self.direction),
                "patch": digest(self.patch), "mask": digest(self.mask), **subspace}


def digest(t: Tensor) -> str:
    """A short hash of a tensor's float32 values (the fingerprints of fine-tuning checkpoints)."""
    return hashlib.sha256(t.detach().cpu().float().contiguous().numpy().tobytes()).hexdigest()[:16]


def isolate_artifact(
    model: nn.Module,
    dataset: Dataset,
    artifact_index: np.ndarray,
    rest_index: np.ndarray,
    *,
    label: int,
    layer: str | None = None,
    cav: str | CAV = "signal",
    composite: Composite | None = None,
    reference: str = "class",
    sigma: float = SIGMA,
    threshold: float = THRESHOLD,
    random_state: int = 0,
    cluster: str | None = None,
) -> ArtifactModel:
    """Fit the artifact model of the samples ``artifact_index`` against ``rest_index`` (dataset indices).

    Args:
        layer: module name (``model.named_modules()``); default: the last feature map the head reads
            (:func:`~spray.clarc.activations.default_layer`); ``"auto"``: the candidate chosen by
            :func:`~spray.clarc.layer_choice.choose_layer` (measured: not better on the benchmark, worse on
            the demo for A- and RR-ClArC; docs/clarc.md §9).
        cav: ``"signal"``, ``"svm"`` or ``"subspace"``, or an unfitted :class:`CAV` with other settings.
        composite: LRP composite for the masks, the audit's own; default ``EpsilonPlusFlat()``.
        reference: the clean samples ``z`` is the mean over: ``"class"`` the rest of the class,
            ``"all"`` every dataset sample outside the cluster.
    """
    if layer and layer != AUTO:
        resolve_layer(model, layer)
    check_choice(reference, "reference", _REFERENCES)
    artifact_index = np.asarray(artifact_index, dtype=np.int64)
    rest_index = np.asarray(rest_index, dtype=np.int64)
    check_cav_sizes(len(artifact_index), len(rest_index), label=label, cluster=cluster)
    composite = composite or EpsilonPlusFlat()
    x_artifact, _ = stack_samples(dataset, artifact_index)
    outside = np.setdiff1d(np.arange(len(dataset)), artifact_index)  # type: ignore[arg-type]
    choice = None
    if not layer:
        layer = default_layer(model, x_artifact)
    elif layer == AUTO:
        method = cav if isinstance(cav, str) else cav.method
        rng = np.random.default_rng(random_state)
        x_clean, _ = stack_samples(dataset, np.sort(rng.choice(outside, min(len(outside), N_CLEAN), replace=False)))
        rest = Subset(dataset, rest_index.tolist())
        choice = choose_layer(model, x_artifact, rest, x_clean, composite, cav=method, random_state=random_state)
        layer = choice.layer
    # The rest of the class, and the dataset outside the cluster, by chunks: neither need fit in memory.
    pooled_rest, clean_mean = pooled_activations(model, layer, dataset, rest_index)
    estimator = CAV(cav, random_state=random_state) if isinstance(cav, str) else cav
    estimator.fit(pool(activations(model, layer, x_artifact)).numpy(), pooled_rest.numpy())
    direction = torch.from_numpy(estimator.direction_)
    if reference == "all":
        clean_mean = pooled_activations(model, layer, dataset, outside)[1]
    found = localize(model, layer, x_artifact, direction, composite, sigma=sigma, threshold=threshold)
    return ArtifactModel(label, layer, estimator, direction, clean_mean, found, artifact_index, rest_index,
                         cluster, torch.from_numpy(estimator.basis_), choice)
