"""One audit step: explain every sample into the store, run a SpRAy pipeline on it, rank the classes.

What ``spray run``, ``spray demo`` and ClArC's FDA rank (the corrected model audited again,
spray.clarc.evaluate) all do; each part is memoised by the stage that runs it (attributions by the store's
resume, analysis nodes by their keys), so auditing a store again costs little.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import Dataset

from spray.attribution.distributed import WorkerRecipe
from spray.attribution.methods import Attributor
from spray.attribution.runner import attribute_dataset
from spray.data.models import model_hash
from spray.pipeline import PipelineSpec, analyze
from spray.ranking import rank_classes
from spray.store import AuditStore


def audit(store: Path, model: nn.Module, dataset: Dataset, attributor: Attributor, spec: PipelineSpec, *,
          model_name: str, dataset_name: str, target: str = "label", batch_size: int = 32,
          label_names: Sequence[str] | None = None, thumbnail_size: int | None = 64,
          thumbnail_range: tuple[float, float] | None = None, scheduler: str | None = None,
          recipe: WorkerRecipe | None = None, progress: bool = True,
          allow_nonconservative: bool = False, workers: int = 0) -> list[dict[str, Any]]:
    """Explain every sample of ``dataset`` with ``attributor`` into ``store`` (as the attribution that
    ``spec`` analyses: ``spec.attribution``, by default the attributor's name), run the SpRAy pipeline
    ``spec``, return the ranking (``spray rank --json`` entries). ``scheduler`` (with the workers'
    ``recipe``) runs both on dask (spray.scheduling); the other arguments are
    :func:`spray.attribution.attribute_dataset`'s."""
    attribute_dataset(
        store, model, dataset, attributor, model_hash=model_hash(model), model_name=model_name,
        dataset_name=dataset_name, name=spec.attribution, target=target, batch_size=batch_size,
        label_names=label_names, progress=progress, thumbnail_size=thumbnail_size,
        thumbnail_range=thumbnail_range, scheduler=scheduler, recipe=recipe,
        allow_nonconservative=allow_nonconservative, workers=workers,
    )
    analyze(str(store), spec, scheduler=scheduler, progress=progress)
    with AuditStore(store) as opened:
        return rank_classes(opened, spec.name)
