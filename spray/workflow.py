"""The audit chain as functions: (train) -> attribute -> SpRAy -> rank -> ClArC, shared by the demo and runs.

``spray run FILE.toml`` (spray/run.py) and ``spray demo`` (spray/demo/audit.py) go through the same steps:
:func:`train_once`, :func:`audit` (spray/audit.py), :func:`correct`. Every step is memoised by the stage
that runs it (trained weights by file, attributions by the store's resume, analysis nodes by their keys,
fine-tuning by its checkpoint), so running a chain twice costs little the second time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.utils.data import Dataset

from spray.audit import audit
from spray.errors import BadInputError
from spray.training import TrainingConfig, train_model
from spray.outputs import active

if TYPE_CHECKING:
    from spray.attribution import LatentAttributor
    from spray.clarc import ClarcConfig, ClarcResult, EvaluationData

__all__ = ["audit", "correct", "latent_attributor", "train_once"]


def latent_attributor(attributor: object, model: nn.Module, dataset: Dataset, layer: str = "default",
                      grid: int = 2, quantity: str = "relevance") -> LatentAttributor:
    """The latent relevance (or activations) of an LRP ``attributor`` at ``layer`` of ``model``
    (spray.attribution.LatentAttributor); ``"default"`` is ClArC's default layer (spray.clarc.default_layer: the
    last feature map the model's head reads), ``"first"`` the first feature map
    (spray.clarc.activations.first_layer), both found from dataset sample 0."""
    from spray.attribution import LatentAttributor
    from spray.attribution.batches import placement, sample_input
    from spray.clarc.activations import default_layer, first_layer
    from spray.lrp import LRP

    if not isinstance(attributor, LRP):
        raise BadInputError(f"latent relevance needs an LRP method; {getattr(attributor, 'name', attributor)!r} "
                            "is not one (use e.g. --method epsilon_plus_flat)")
    if layer in ("default", "first"):
        device, dtype = placement(model)
        sample = sample_input(dataset, 0).unsqueeze(0).to(device, dtype)
        layer = (default_layer if layer == "default" else first_layer)(model, sample)
    return LatentAttributor(attributor, layer, grid, quantity)


def train_once(model: nn.Module, dataset: Callable[[], Dataset], weights: Path, config: TrainingConfig, *,
               progress: bool = True) -> nn.Module:
    """Train ``model`` in place on ``dataset()`` (:func:`spray.training.train_model` with ``config``) and
    save its state_dict to ``weights``; when ``weights`` exists, load it instead (and never open the data).
    Returns the model in eval mode."""
    if weights.exists():
        model.load_state_dict(torch.load(weights, weights_only=True, map_location="cpu"))
        return model.eval()
    train_model(model, dataset(), config, progress=progress)
    active().write(weights, "trained weights", lambda tmp: torch.save(model.state_dict(), tmp))
    return model.eval()


def correct(store: Path, model: nn.Module, dataset: Dataset, configs: Sequence[ClarcConfig],
            evaluation: EvaluationData | None = None) -> list[ClarcResult]:
    """A ClArC run per config (:func:`spray.clarc.clarc_from_store`), each measured on ``evaluation``."""
    from spray.clarc import clarc_from_store

    return [clarc_from_store(store, model, dataset, config, evaluation) for config in configs]
