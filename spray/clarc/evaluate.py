"""Did the correction work? Accuracy on three test versions, artifact relevance, and the class's FDA rank.

One row per model (``"original"``, ``"corrected"``), keys :data:`METRICS`:

- ``clean_accuracy``: accuracy on the clean test data.
- ``poisoned_accuracy``: on the test data as poisoned at training time (None if not given).
- ``everywhere_accuracy``: on the clean test data with the *isolated* artifact (learned patch and mean
  mask, not any ground truth) pasted into every sample of every class, or on given test data that
  carries the known artifact in every sample (``everywhere_test``). A Clever Hans model drops here.
- ``artifact_relevance``: the share of LRP relevance inside the artifact's mask on that everywhere set,
  ``mean_i Σ_{c,h,w} |R_i| M / Σ_{c,h,w} |R_i|``, with ``R_i`` the heatmap of sample ``i`` for its true
  class (``target="label"``, so both models explain the same output; ``"prediction"`` explains each
  model's own decision) and ``M`` the artifact's mean mask (or a given ground-truth ``region``). The LRP
  composite is the audit's. A model that ignores the artifact spends little relevance there.
- ``fda_rank``: the class's rank in ``spray rank`` (1 = most suspicious) when the training data is
  attributed and analysed again with the corrected model, with the original analysis's pipeline (None if
  not computed). The original's rank comes from the audit store itself.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, TensorDataset

from spray._checks import check_choice
from spray.attribution.config import AttributionRun
from spray.attribution.methods import get_method
from spray.audit import audit
from spray.clarc.cluster import choose_analysis
from spray.clarc.localize import paste
from spray.clarc.projective import projected_layers, with_projection_rule
from spray.data.models import model_hash
from spray.errors import BadInputError
from spray.lrp import LRP, Composite, EpsilonPlusFlat
from spray.pipeline import PipelineSpec
from spray.ranking import Ranking, rank_classes
from spray.results import analysis_summary
from spray.store import AuditStore
from spray.training import accuracy, as_tensors, predict

METRICS = ("clean_accuracy", "poisoned_accuracy", "everywhere_accuracy", "artifact_relevance", "fda_rank")
_TARGETS = ("label", "prediction")


def empty_row(model: str) -> dict[str, Any]:
    """A metrics row with every value None (not measured)."""
    return {"model": model, **dict.fromkeys(METRICS)}


def everywhere(dataset: Dataset, patch: Tensor, mask: Tensor) -> TensorDataset:
    """``dataset`` with the artifact (``patch`` (C, H, W) through ``mask`` (H, W)) pasted into every sample."""
    x, y = as_tensors(dataset)
    if x.dim() != 4 or x.shape[1:] != patch.shape or x.shape[2:] != mask.shape:
        raise BadInputError(
            f"the test samples have shape {tuple(x.shape[1:])}, but the artifact patch is "
            f"{tuple(patch.shape)} with a {tuple(mask.shape)} mask; use test data like the training data"
        )
    return TensorDataset(paste(x, patch, mask), y)


def artifact_relevance(model: nn.Module, dataset: Dataset, mask: Tensor, *, composite: Composite | None = None,
                       target: str = "prediction", batch_size: int = 64) -> float:
    """``mean_i Σ|R_i| M / Σ|R_i|`` over ``dataset`` (see the module docstring); ``mask`` (H, W) in [0, 1]."""
    check_choice(target, "relevance target", _TARGETS)
    composite = composite or EpsilonPlusFlat()
    if projected_layers(model):
        composite = with_projection_rule(composite)
    lrp = LRP(composite)
    x, y = as_tensors(dataset)
    mask = torch.as_tensor(mask, dtype=torch.float32)
    shares = []
    for i in range(0, len(y), batch_size):
        xb, yb = x[i : i + batch_size], y[i : i + batch_size]
        if target == "prediction":
            yb = predict(model, xb)
        relevance, _ = lrp.attribute(model, xb, yb)
        magnitude = relevance.abs().sum(1)
        total = magnitude.flatten(1).sum(1)
        inside = (magnitude * mask).flatten(1).sum(1)
        shares.append(torch.where(total > 0, inside / total.clamp(min=1e-30), torch.zeros_like(total)))
    return float(torch.cat(shares).mean())


def evaluate_model(model: nn.Module, *, clean: Dataset, patch: Tensor, mask: Tensor,
                   poisoned: Dataset | None = None, everywhere_test: Dataset | None = None,
                   composite: Composite | None = None, target: str = "prediction",
                   region: Tensor | np.ndarray | None = None) -> dict[str, float | None]:
    """Accuracies and artifact relevance of one model (keys of :data:`METRICS` except ``fda_rank``).

    ``everywhere_test``: test data with the artifact in every sample, where the artifact is known (e.g. the
    demo's planted stamp); by default ``clean`` with the isolated artifact pasted into every sample.
    """
    stamped = everywhere(clean, patch, mask) if everywhere_test is None else everywhere_test
    inside = mask if region is None else torch.as_tensor(np.asarray(region), dtype=torch.float32)
    if inside.shape != mask.shape:
        raise BadInputError(f"region must have the mask's shape {tuple(mask.shape)}, got {tuple(inside.shape)}")
    x, _ = as_tensors(stamped)
    if tuple(x.shape[-2:]) != tuple(mask.shape):
        raise BadInputError(f"the everywhere test samples have shape {tuple(x.shape[1:])}, but the artifact mask "
                            f"is {tuple(mask.shape)}; use test data like the training data")
    return {
        "clean_accuracy": accuracy(model, clean),
        "poisoned_accuracy": accuracy(model, poisoned) if poisoned is not None else None,
        "everywhere_accuracy": accuracy(model, stamped),
        "artifact_relevance": artifact_relevance(model, stamped, inside, composite=composite, target=target),
    }


@dataclass(frozen=True)
class FdaSetup:
    """How to measure the class's FDA rank after correction.

    ``store``: the original audit store (its attribution and analysis are repeated); ``dataset``: the
    audited data (the training data); ``out_dir``: where the corrected model's audit store goes;
    ``analysis``: which analysis of ``store`` to repeat (default: its only one, or ``"spray"``).
    """

    store: Path
    dataset: Dataset
    out_dir: Path
    analysis: str | None = None


def original_rank(store_path: str | Path, label: int, analysis: str | None = None) -> int | None:
    """The class's rank in the audit store's own ranking (None if it was skipped)."""
    with AuditStore(store_path) as store:
        ranking = rank_classes(store, choose_analysis(store, analysis))
    return _rank_of(ranking, label)


def fda_rank(model: nn.Module, setup: FdaSetup, label: int, *, name: str = "corrected",
             progress: bool = False) -> int | None:
    """Attribute ``setup.dataset`` with ``model`` as the original audit did, analyse it with the original
    pipeline, and return ``label``'s rank (None if the class was skipped). Resumable like any audit."""
    with AuditStore(setup.store) as store:
        analysis = choose_analysis(store, setup.analysis)
        summary = analysis_summary(store, analysis)
        attribution = summary["attribution"]
        info = store.attribution_info(attribution)
        label_names = store.attrs().get("label_names") or None
    pipeline = json.loads(summary["pipeline"])
    attributor = get_method(info["method"], **info["params"])
    if projected_layers(model) and hasattr(attributor, "composite"):
        attributor.composite = with_projection_rule(attributor.composite)
    spec = PipelineSpec(name=pipeline["name"], attribution=attribution, nodes=pipeline["nodes"])
    attribution = AttributionRun(
        attributor, model_hash=model_hash(model), model_name=f"{info.get('model_name', 'model')} ({name})",
        dataset_name=f"{name} re-audit", target=info["target"], label_names=label_names,
        batch_size=int(info["batch_size"]), thumbnail_size=None, progress=progress,
    )
    ranking = audit(Path(setup.out_dir) / f"{name}.h5", model, setup.dataset, attribution, spec)
    return _rank_of(ranking, label)


def _rank_of(ranking: Ranking, label: int) -> int | None:
    entry = ranking.of(label)
    return None if entry is None or entry.skipped else entry.rank


def evaluate_correction(
    original: nn.Module,
    corrected: nn.Module,
    *,
    label: int,
    patch: Tensor,
    mask: Tensor,
    clean: Dataset,
    poisoned: Dataset | None = None,
    everywhere_test: Dataset | None = None,
    composite: Composite | None = None,
    target: str = "prediction",
    region: Tensor | np.ndarray | None = None,
    fda: FdaSetup | None = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """The before/after table: one row per model, keys ``model`` and :data:`METRICS` (None = not measured)."""
    rows = []
    for name, model in (("original", original), ("corrected", corrected)):
        row = {"model": name, **evaluate_model(model, clean=clean, patch=patch, mask=mask, poisoned=poisoned,
                                              everywhere_test=everywhere_test, composite=composite,
                                              target=target, region=region)}
        row["fda_rank"] = None
        if fda is not None:
            row["fda_rank"] = (original_rank(fda.store, label, fda.analysis) if name == "original"
                               else fda_rank(model, fda, label, name=name, progress=progress))
        rows.append(row)
    return rows


def format_metrics(rows: list[dict[str, Any]]) -> str:
    """The table as aligned text (accuracies and relevance in %, ranks as integers, '-' for None)."""
    header = ["model", "clean acc", "poisoned acc", "everywhere acc", "artifact rel.", "FDA rank"]

    def cell(key: str, value: Any) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "-"
        return str(value) if key in ("model", "fda_rank") else f"{100 * value:.1f}%"

    table = [header] + [[cell(k, row.get(k)) for k in ("model", *METRICS)] for row in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    return "\n".join("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
                     for r in table)
