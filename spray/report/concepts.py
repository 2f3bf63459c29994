"""Conditional heatmaps of concept groups: what a group's most relevant channels contribute to an explanation.

A concept-level analysis (pipelines/concept.toml) groups samples by the latent relevance a latent
attribution stored at one layer (spray.attribution.LatentAttributor). A group is read through its most
relevant channels and its reference samples, the members in which those channels receive the most relevance;
CRP's conditional heatmap (Achtibat et al. 2023, :meth:`spray.lrp.LRP.conditional`) shows where in such a
sample's input the relevance flowing through those channels comes from. Drawing it needs the audited model
and the data the store was attributed from, checked against the store before anything is explained.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from spray.attribution.batches import placement, sample_input
from spray.attribution.methods import get_method
from spray.data import model_hash
from spray.errors import BadInputError
from spray.lrp import LRP
from spray.store import AuditStore

__all__ = ["AuditedModel", "ConditionalExplainer", "Explained", "reference_samples"]

REFERENCES = 4
"""Reference samples shown per concept group."""


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


def reference_samples(channel_totals: np.ndarray, channels: np.ndarray, shown: int = REFERENCES) -> np.ndarray:
    """Positions (into the rows of ``channel_totals``, (n, C): each member's relevance per channel) of the
    ``shown`` members whose ``channels`` together receive the most relevance, most first (CRP's
    relevance-maximising reference samples of a concept)."""
    return np.argsort(-channel_totals[:, channels].sum(axis=1), kind="stable")[:shown]


class ConditionalExplainer:
    """Conditional heatmaps at the layer of latent attribution ``attribution`` of ``store``, with its LRP
    composite, for ``audited`` (checked: the model is the one the attribution recorded, by the sha256 of its
    weights; the dataset has as many samples as the store).

    Raises:
        BadInputError: another model, or a dataset of another size; the attribution's composite cannot be
            rebuilt from its record.
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
        n = store.n_samples
        if len(audited.dataset) != n:
            raise BadInputError(
                f"the dataset given (--data) has {len(audited.dataset)} samples, but audit store {store.path} "
                f"holds {n}: pass the dataset the store was attributed from"
            )
        params: dict[str, Any] = info["params"]
        self.lrp: LRP = get_method(params["composite"], **params["composite_params"])
        self.layer: str = params["layer"]
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

