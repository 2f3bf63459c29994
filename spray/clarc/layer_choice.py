"""Which layer ClArC models the artifact in: the candidate feature map where the flagged cluster is best
separated from the rest of its class and the CAV's relevance is best concentrated on the cluster.

Each candidate (:func:`spray.clarc.activations.candidate_layers`: the default layer and the feature maps
before it) gets three figures:

- ``auc``: the CAV's out-of-fold ROC AUC, cluster vs rest of the class (:class:`spray.clarc.cav.CAV`, the
  run's CAV method): how well the layer separates the group;
- ``concentration``: LRP along the CAV (spray.clarc.localize, the localisation's own relevance) started on
  the cluster's images and on the rest's; ``P_i`` is image ``i``'s positive input relevance and
  ``concentration = mean_cluster P / (mean_cluster P + mean_rest P)``: 0.5 when the direction is as present
  in the rest as in the cluster, 1 when it is found only in the cluster's images;
- ``kept``: the share of clean samples (a seeded draw of the data outside the cluster) whose predicted class
  is unchanged when the CAV's direction is projected out at the layer (P-ClArC with the rest's mean): how
  little of the model's task the direction carries there.

The choice: the candidates that keep at least :data:`MIN_KEPT` of the clean predictions are admissible (if
none is, the one that keeps most); among those whose AUC is within :data:`AUC_TOLERANCE` of the best
admissible AUC, the one with the highest concentration (ties: the later layer). On the benchmark's CNN the
first ReLU separated a frame artifact best (out-of-fold AUC 0.99) while projecting there changed 13 % of
the clean predictions: its 8 channels cannot lose a direction without losing the digit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from spray.clarc.activations import activations, candidate_layers, pool, pooled_activations
from spray.clarc.cav import CAV
from spray.clarc.localize import artifact_relevance
from spray.clarc.projective import insert_projection, remove_projection
from spray.lrp import Composite
from spray.training import eval_mode, stack_samples

#: Candidates whose out-of-fold AUC is at most this far below the best count as separating equally well.
AUTO = "auto"
"""The layer name that asks for this choice (``spray clarc --layer auto``); without one, ClArC uses the last
feature map the head reads (spray.clarc.activations.default_layer), which corrected better on the demo."""
AUC_TOLERANCE = 0.005
#: The share of clean predictions a candidate's projection must leave unchanged to be admissible.
MIN_KEPT = 0.95
#: At most this many rest images are explained for the concentration (a seeded draw).
MAX_REST = 64


@dataclass(frozen=True)
class LayerFigures:
    """One candidate layer's figures: channels of its feature map, out-of-fold CAV ``auc``, ``concentration``,
    ``kept``."""

    layer: str
    channels: int
    auc: float
    concentration: float
    kept: float

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "channels": self.channels, "auc": self.auc, "concentration": self.concentration,
                "kept": self.kept}


@dataclass(frozen=True)
class LayerChoice:
    """The chosen ``layer``, why (``reason``), and every candidate's figures (forward order)."""

    layer: str
    reason: str
    candidates: tuple[LayerFigures, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "reason": self.reason, "candidates": [c.to_dict() for c in self.candidates]}


def layer_figures(model: nn.Module, layer: str, x_artifact: Tensor, rest: Dataset, x_clean: Tensor,
                  composite: Composite, cav: str = "signal", random_state: int = 0) -> LayerFigures:
    """The figures of one layer for the cluster's images ``x_artifact``, the rest of its class ``rest`` (read
    :data:`~spray.training.CHUNK` samples at a time; :data:`MAX_REST` of them explained) and clean samples
    ``x_clean`` (outside the cluster, any class)."""
    a_artifact = activations(model, layer, x_artifact)
    pooled_rest, rest_mean = pooled_activations(model, layer, rest, np.arange(len(rest)))  # type: ignore[arg-type]
    fitted = CAV(cav, random_state=random_state).fit(pool(a_artifact).numpy(), pooled_rest.numpy())
    direction = torch.from_numpy(fitted.direction_)
    explained = np.arange(len(pooled_rest))
    if len(explained) > MAX_REST:
        explained = np.sort(np.random.default_rng(random_state).choice(len(explained), MAX_REST, replace=False))
    positive = [artifact_relevance(model, layer, x, direction, composite).clamp(min=0).flatten(1).sum(1).mean()
                for x in (x_artifact, stack_samples(rest, explained)[0])]
    total = float(positive[0] + positive[1])
    concentration = float(positive[0]) / total if total > 0 else 0.5
    return LayerFigures(layer, int(a_artifact.shape[1]), fitted.auc_, concentration,
                        _kept(model, layer, direction, rest_mean, x_clean))


@torch.no_grad()
def _kept(model: nn.Module, layer: str, direction: Tensor, clean_mean: Tensor, x: Tensor,
          batch_size: int = 256) -> float:
    """The share of ``x`` whose predicted class is the same with ``direction`` projected out at ``layer``."""
    def predict() -> Tensor:
        with eval_mode(model):
            return torch.cat([model(x[i : i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])

    before = predict()
    insert_projection(model, layer, direction, clean_mean)
    try:
        after = predict()
    finally:
        remove_projection(model, layer)
    return float((before == after).float().mean())


def choose_layer(model: nn.Module, x_artifact: Tensor, rest: Dataset, x_clean: Tensor, composite: Composite, *,
                 cav: str = "signal", random_state: int = 0) -> LayerChoice:
    """Compare the candidate layers (module docstring) and pick one (:func:`pick_layer`); ``rest``: the rest of
    the cluster's class, read by chunks; ``x_clean``: samples outside the cluster, any class (the ``kept``
    figure)."""
    return pick_layer([layer_figures(model, layer, x_artifact, rest, x_clean, composite, cav, random_state)
                       for layer in candidate_layers(model, x_artifact)])


def pick_layer(candidates: list[LayerFigures]) -> LayerChoice:
    """The rule of the module docstring applied to the candidates' figures (forward order)."""
    figures = tuple(candidates)
    if len(figures) == 1:
        (only,) = figures
        return LayerChoice(only.layer, f"the only candidate (out-of-fold CAV AUC {only.auc:.3f}, concentration "
                                       f"{only.concentration:.3f}, keeps {only.kept:.1%} of clean predictions)",
                           figures)
    admissible = [f for f in figures if f.kept >= MIN_KEPT]
    if admissible:
        kept = f"{len(admissible)} of {len(figures)} candidates keep at least {MIN_KEPT:.0%} of clean predictions"
    else:
        admissible = [max(reversed(figures), key=lambda f: f.kept)]
        kept = (f"no candidate keeps {MIN_KEPT:.0%} of clean predictions; the one that keeps most "
                f"({admissible[0].kept:.1%})")
    best = max(f.auc for f in admissible)
    separating = [f for f in admissible if f.auc >= best - AUC_TOLERANCE]
    chosen = max(reversed(separating), key=lambda f: f.concentration)
    reason = (f"{kept}; out-of-fold CAV AUC {chosen.auc:.3f} (best of them {best:.3f}, tolerance "
              f"{AUC_TOLERANCE}); highest concentration on the cluster among the {len(separating)} that separate "
              f"it as well: {chosen.concentration:.3f}")
    return LayerChoice(chosen.layer, reason, figures)
