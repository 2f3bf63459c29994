"""Conditional heatmaps of concept groups: what the channels that set a group apart contribute to an explanation.

A concept-level analysis (pipelines/concept.toml) groups samples by the latent relevance a latent
attribution stored at one layer (spray.attribution.LatentAttributor). A group is read through the channels
that distinguish it from the rest of its class (:func:`distinguishing_channels`) and its reference samples,
the members in which those channels receive the most relevance; CRP's conditional heatmap (Achtibat et al.
2023, :meth:`spray.lrp.LRP.conditional`) shows where in such a sample's input the relevance flowing through
those channels comes from. The channels with the most relevance overall are nearly the same for every group
of a class (what the class is recognised by), and their conditional heatmaps point at a shortcut less than
the full explanation does (docs/report.md, "Concept groups"). Drawing the heatmaps needs the audited model
and the data the store was attributed from, checked against the store before anything is explained.
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from spray.analysis import HeatmapPreprocessor
from spray.attribution.batches import placement, sample_input
from spray.attribution.methods import recorded_method
from spray.data import model_hash
from spray.errors import BadInputError
from spray.lrp import LRP
from spray.store import AuditStore

__all__ = [
    "AuditedModel", "ConditionalExplainer", "Explained", "channel_relevance", "distinguishing_channels",
    "reference_samples",
]

REFERENCES = 4
"""Reference samples shown per concept group."""
CHANNELS = 5
"""Channels listed per concept group (its distinguishing ones, and its most relevant ones)."""


@dataclass(frozen=True)
class AuditedModel:
    """The audited model and the dataset its store was attributed from (``dataset[i]`` is sample ``i``'s
    ``(x, y)``, as attributed: the same preprocessing): with them the report draws conditional heatmaps."""

    model: nn.Module
    dataset: Dataset


class Explained(NamedTuple):
    """Samples explained by :meth:`ConditionalExplainer.explain`, each (k, *input shape) float64: the
    ``inputs``, their ``heatmaps`` (input relevance) and the ``conditional`` heatmaps (its part that flows
    through the chosen channels)."""

    inputs: np.ndarray
    heatmaps: np.ndarray
    conditional: np.ndarray


def channel_relevance(relevance: np.ndarray, preprocess: Mapping[str, Any]) -> np.ndarray:
    """Each sample's relevance per channel as the analysis compared it, (n, C) float64: latent relevance
    ``relevance`` (n, C, H, W) through the analysis's ``preprocess`` parameters (its pipeline's
    ``[preprocess]``: pooling, ``absolute``, the per-sample ``normalization``) with every channel kept, as
    a concept-level analysis keeps them, and summed over the pooled cells of each channel. With ``"l2"``
    (pipelines/concept.toml) that is ``R_{i,c} / ‖R_i‖₂``: how sample ``i``'s decision is composed, not its
    size."""
    features = HeatmapPreprocessor(**{**preprocess, "channel_reduction": "keep"}).fit_transform(relevance)
    return features.reshape(relevance.shape[0], relevance.shape[1], -1).sum(axis=2, dtype=np.float64)


def distinguishing_channels(
    relevance: np.ndarray, inside: np.ndarray, k: int = CHANNELS
) -> tuple[np.ndarray, np.ndarray]:
    """The channels that set a group apart from the rest of its class, and by how much: of each channel's
    mean relevance over the group (``inside``, (n,) bool) minus its mean over the rest of the class, in
    ``relevance`` (n, C) (:func:`channel_relevance`), the ``k`` largest positive differences, largest
    first (ties by channel), as (channels, differences). None for a group that is the whole class, or in which
    no channel receives more relevance than in the rest (a group set apart only by less relevance)."""
    if inside.all():
        return np.empty(0, np.int64), np.empty(0)
    difference = relevance[inside].mean(axis=0) - relevance[~inside].mean(axis=0)
    order = np.argsort(-difference, kind="stable")[:k]
    order = order[difference[order] > 0]
    return order, difference[order]


def reference_samples(channel_totals: np.ndarray, channels: np.ndarray, shown: int = REFERENCES) -> np.ndarray:
    """Positions (into the rows of ``channel_totals``, (n, C): each member's relevance per channel) of the
    ``shown`` members whose ``channels`` together receive the most relevance, most first (CRP's
    relevance-maximising reference samples of a concept)."""
    return np.argsort(-channel_totals[:, channels].sum(axis=1), kind="stable")[:shown]


class ConditionalExplainer:
    """Conditional heatmaps at the layer of latent attribution ``attribution`` of ``store``, with its LRP
    composite, for ``audited`` (checked: the model is the one the attribution recorded, by the sha256 of its
    weights; that the dataset is the audited one, the report checks first: spray.report.content.gather).

    Raises:
        BadInputError: another model; the attribution's composite cannot be rebuilt from its record.
    """

    def __init__(self, audited: AuditedModel, store: AuditStore, attribution: str) -> None:
        info = store.attribution_info(attribution)
        given, recorded = model_hash(audited.model), str(info.get("model_hash"))
        if given != recorded:
            raise BadInputError(
                f"the model given (--model, --weights) has weights sha256 {given[:12]}…, but attribution "
                f"{attribution!r} of audit store {store.path} was made by a model with {recorded[:12]}…: pass "
                "the model and weights the store was attributed with"
            )
        latent = recorded_method(info)  # spray.attribution.LatentAttributor: a concept analysis reads latent relevance
        self.lrp: LRP = latent.lrp
        self.layer: str = latent.layer
        self.n_channels = int(info["shape"][1])
        self.audited = audited
        self.store_path = store.path
        self._labels = store.read("samples/label")

    def explain(self, indices: np.ndarray, targets: np.ndarray, channels: np.ndarray) -> Explained:
        """Dataset samples ``indices`` (k,) explained for outputs ``targets`` (k,): the full explanation, and
        the part of it that flows through ``channels`` of the layer (:meth:`spray.lrp.LRP.conditional`).

        Raises:
            BadInputError: a sample's label in the dataset differs from the store's (another dataset).
        """
        model, dataset = self.audited.model, self.audited.dataset
        xs = []
        for i in indices.tolist():
            stored, given = int(self._labels[i]), _label(dataset[i])
            if given != stored:
                raise BadInputError(
                    f"dataset sample {i} has label {given} in the dataset given (--data) but {stored} in audit "
                    f"store {self.store_path}: pass the dataset the store was attributed from"
                )
            xs.append(sample_input(dataset, i))
        device, dtype = placement(model)
        x = torch.stack(xs).to(device, dtype)
        target = torch.as_tensor(targets, dtype=torch.int64, device=device)
        full, _ = self.lrp.attribute(model, x, target)
        mask = torch.zeros(self.n_channels)
        mask[torch.as_tensor(channels, dtype=torch.int64)] = 1.0
        conditional = self.lrp.conditional(model, x, target, self.layer, mask)
        return Explained(*(t.detach().cpu().double().numpy() for t in (x, full, conditional)))


def _label(item: Any) -> int:
    y = item[1]
    return int(y.item() if hasattr(y, "item") else y)

