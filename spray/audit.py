"""One audit step: explain every sample into the store, run a SpRAy pipeline on it, rank the classes.

What ``spray run``, ``spray demo`` and ClArC's FDA rank (the corrected model audited again,
spray.clarc.evaluate) all do; each part is memoised by the stage that runs it (attributions by the store's
resume, analysis nodes by their keys), so auditing a store again costs little.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from torch import nn
from torch.utils.data import Dataset

from spray.attribution.config import AttributionRun
from spray.attribution.runner import attribute_dataset
from spray.pipeline import PipelineSpec, analyze
from spray.ranking import Ranking, rank_classes
from spray.store import AuditStore


def audit(
    store: Path, model: nn.Module, dataset: Dataset, attribution: AttributionRun, spec: PipelineSpec
) -> Ranking:
    """Explain every sample of ``dataset`` into ``store`` as ``attribution`` says, as the attribution that
    ``spec`` analyses (``spec.attribution``, by default the attributor's name), run the SpRAy pipeline
    ``spec`` and return its ranking. ``attribution.scheduler`` runs both on dask (spray.scheduling)."""
    attribute_dataset(store, model, dataset, replace(attribution, name=spec.attribution))
    analyze(str(store), spec, scheduler=attribution.scheduler, progress=attribution.progress)
    with AuditStore(store) as opened:
        return rank_classes(opened, spec.name)
