"""Which layer ClArC models the artifact in: the candidate feature map where the flagged cluster is best
separated from the rest of its class and the CAV's relevance is best concentrated on the cluster.

Each candidate (:func:`spray.clarc.activations.candidate_layers`: the default layer and the feature maps
before it) gets two figures:

- ``auc``: the CAV's out-of-fold ROC AUC, cluster vs rest of the class (:class:`spray.clarc.cav.CAV`, the
  run's CAV method): how well the layer separates the group;
- ``concentration``: LRP along the CAV (spray.clarc.localize, the localisation's own relevance) started on
  the cluster's images and on the rest's; ``P_i`` is image ``i``'s positive input relevance and
  ``concentration = mean_cluster P / (mean_cluster P + mean_rest P)``: 0.5 when the direction is as present
  in the rest as in the cluster, 1 when it is found only in the cluster's images.

The choice: among the candidates whose AUC is within :data:`AUC_TOLERANCE` of the best, the one with the
highest concentration (ties: the later layer). A layer that separates the group only as well as chance
plus noise is never chosen for its concentration; among layers that separate it equally well, the one
whose direction is specific to the cluster is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from spray.clarc.activations import activations, candidate_layers, pool
from spray.clarc.cav import CAV
from spray.clarc.localize import artifact_relevance
from spray.lrp import Composite

#: Candidates whose out-of-fold AUC is at most this far below the best count as separating equally well.
AUC_TOLERANCE = 0.02
#: At most this many rest images are explained for the concentration (a seeded draw).
MAX_REST = 64


@dataclass(frozen=True)
class LayerFigures:
    """One candidate layer's figures: channels of its feature map, out-of-fold CAV ``auc``, ``concentration``."""

    layer: str
    channels: int
    auc: float
    concentration: float

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "channels": self.channels, "auc": self.auc, "concentration": self.concentration}


@dataclass(frozen=True)
class LayerChoice:
    """The chosen ``layer``, why (``reason``), and every candidate's figures (forward order)."""

    layer: str
    reason: str
    candidates: tuple[LayerFigures, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "reason": self.reason, "candidates": [c.to_dict() for c in self.candidates]}


def layer_figures(model: nn.Module, layer: str, x_artifact: Tensor, x_rest: Tensor, composite: Composite,
                  cav: str = "signal", random_state: int = 0) -> LayerFigures:
    """The figures of one layer for the cluster's images ``x_artifact`` and the rest's ``x_rest``."""
    a_artifact, a_rest = activations(model, layer, x_artifact), activations(model, layer, x_rest)
    fitted = CAV(cav, random_state=random_state).fit(pool(a_artifact).numpy(), pool(a_rest).numpy())
    direction = torch.from_numpy(fitted.direction_)
    rest = x_rest
    if len(rest) > MAX_REST:
        rest = rest[np.sort(np.random.default_rng(random_state).choice(len(rest), MAX_REST, replace=False))]
    positive = [artifact_relevance(model, layer, x, direction, composite).clamp(min=0).flatten(1).sum(1).mean()
                for x in (x_artifact, rest)]
    total = float(positive[0] + positive[1])
    concentration = float(positive[0]) / total if total > 0 else 0.5
    return LayerFigures(layer, int(a_artifact.shape[1]), fitted.auc_, concentration)


def choose_layer(model: nn.Module, x_artifact: Tensor, x_rest: Tensor, composite: Composite, *,
                 cav: str = "signal", random_state: int = 0) -> LayerChoice:
    """Compare the candidate layers (module docstring) and pick one (:func:`pick_layer`)."""
    return pick_layer([layer_figures(model, layer, x_artifact, x_rest, composite, cav, random_state)
                       for layer in candidate_layers(model, x_artifact)])


def pick_layer(candidates: list[LayerFigures]) -> LayerChoice:
    """The rule of the module docstring applied to the candidates' figures (forward order)."""
    figures = tuple(candidates)
    best = max(f.auc for f in figures)
    separating = [f for f in figures if f.auc >= best - AUC_TOLERANCE]
    chosen = max(reversed(separating), key=lambda f: f.concentration)
    if len(figures) == 1:
        reason = f"the only candidate (out-of-fold CAV AUC {chosen.auc:.3f}, concentration {chosen.concentration:.3f})"
    else:
        reason = (f"out-of-fold CAV AUC {chosen.auc:.3f} (best of {len(figures)} candidates {best:.3f}, "
                  f"tolerance {AUC_TOLERANCE}); highest concentration on the cluster among the "
                  f"{len(separating)} that separate it as well: {chosen.concentration:.3f}")
    return LayerChoice(chosen.layer, reason, figures)
