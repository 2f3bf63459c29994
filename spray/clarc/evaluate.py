"""Did the correction work? Accuracies (overall and per group), artifact relevance, TCAV, the FDA rank, cost.

One row per model (``"original"``, ``"corrected"``), keys ``correction`` (what the corrected model is: the
method, for ``auto`` the candidate it chose and shipped, refitted on all the data; None for the original)
and :data:`METRICS`:

- ``clean_accuracy``: accuracy on the clean test data.
- ``poisoned_accuracy``: on the test data as poisoned at training time (None if not given).
- ``everywhere_accuracy``: on the clean test data with the *isolated* artifact (learned patch and mean
  mask, not any ground truth) pasted into every sample of every class, or on given test data that
  carries the known artifact in every sample (``everywhere_test``). A Clever Hans model drops here.
- ``group_accuracy``: accuracy per group ``"<class>:clean"`` (the clean test samples of the class) and
  ``"<class>:artifact"`` (its samples of the everywhere set): the groups are (class, artifact absent or
  present), the test sets with and without the artifact split by class, as group-robustness studies
  define them (Sagawa et al. 2020). ``average_group_accuracy`` (AGA) is their mean, ``worst_group_accuracy``
  (WGA) their minimum; an empty group is left out.
- ``artifact_relevance``: the share of LRP relevance inside the artifact's mask on that everywhere set,
  ``mean_i Σ_{c,h,w} |R_i| M / Σ_{c,h,w} |R_i|``, with ``R_i`` the heatmap of sample ``i`` for its true
  class (``target="label"``, so both models explain the same output; ``"prediction"`` explains each
  model's own decision) and ``M`` the artifact's mean mask (or a given ground-truth ``region``). The LRP
  composite is the audit's. A model that ignores the artifact spends little relevance there.
- ``relevance_density``: that share divided by the mask's area ``mean_{h,w} M``: 1 = as dense inside the
  mask as anywhere, above 1 = concentrated on the artifact.
- ``tcav_score``, ``tcav_magnitude``, ``tcav_layer``: TCAV of the flagged class along a CAV of the artifact
  (everywhere set against clean set) fitted on each model's own activations at another layer than the
  corrected one (spray.clarc.tcav): the share of the class's clean test samples whose logit rises along
  it (0.5 = no consistent use) and the mean |directional derivative| (0 = insensitive).
- ``fda_rank``: the class's rank in ``spray rank`` (1 = most suspicious) when the training data is
  attributed and analysed again with the corrected model, with the original analysis's pipeline (None if
  not computed). The original's rank comes from the audit store itself.
- ``training_seconds``: what the correction cost (corrected row; None for the original): the fine-tuning
  epochs' seconds as recorded in their history (each epoch once, also across resumes), or the wall time
  of a method that trains nothing (P-ClArC's projection).
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
from torch.utils.data import Dataset, Subset

from spray._checks import check_choice
from spray.attribution.config import AttributionRun
from spray.attribution.methods import recorded_method
from spray.audit import audit
from spray.clarc.cluster import choose_analysis
from spray.clarc.localize import paste
from spray.clarc.projective import explaining, projected_layers, with_projection_rule
from spray.clarc.tcav import tcav, tcav_layer
from spray.data.models import model_hash
from spray.errors import BadInputError
from spray.lrp import LRP, Composite, EpsilonPlusFlat
from spray.pipeline import PipelineSpec
from spray.ranking import Ranking, rank_classes
from spray.results import analysis_summary
from spray.store import AuditStore
from spray.training import accuracy, predict, predict_samples, sample_chunks, stack_samples

METRICS = ("clean_accuracy", "poisoned_accuracy", "everywhere_accuracy", "group_accuracy",
           "average_group_accuracy", "worst_group_accuracy", "artifact_relevance", "relevance_density",
           "tcav_score", "tcav_magnitude", "tcav_layer", "fda_rank", "training_seconds")
_TARGETS = ("label", "prediction")


def empty_row(model: str, correction: str | None = None) -> dict[str, Any]:
    """A metrics row with every value None (not measured); ``correction``: what the corrected model is."""
    return {"model": model, "correction": correction, **dict.fromkeys(METRICS)}


class Everywhere(Dataset):
    """``dataset`` with the artifact (``patch`` (C, H, W) through ``mask`` (H, W)) pasted into every sample,
    as each is read: a test set need not fit in memory."""

    def __init__(self, dataset: Dataset, patch: Tensor, mask: Tensor) -> None:
        self.dataset, self.patch, self.mask = dataset, patch, mask

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[Tensor, Any]:
        x, y = self.dataset[i][:2]
        return paste(torch.as_tensor(x, dtype=torch.float32)[None], self.patch, self.mask)[0], y


def everywhere(dataset: Dataset, patch: Tensor, mask: Tensor) -> Everywhere:
    """``dataset`` with the artifact (``patch`` (C, H, W) through ``mask`` (H, W)) pasted into every sample
    (:class:`Everywhere`); its first sample's shape is checked against the patch's and the mask's."""
    if len(dataset):  # type: ignore[arg-type]
        shape = tuple(torch.as_tensor(dataset[0][0]).shape)
        if shape != tuple(patch.shape) or shape[1:] != tuple(mask.shape):
            raise BadInputError(
                f"the test samples have shape {shape}, but the artifact patch is {tuple(patch.shape)} with a "
                f"{tuple(mask.shape)} mask; use test data like the training data"
            )
    return Everywhere(dataset, patch, mask)


def artifact_relevance(model: nn.Module, dataset: Dataset, mask: Tensor, *, composite: Composite | None = None,
                       target: str = "prediction", batch_size: int = 64) -> float:
    """``mean_i Σ|R_i| M / Σ|R_i|`` over ``dataset`` (see the module docstring); ``mask`` (H, W) in [0, 1]."""
    check_choice(target, "relevance target", _TARGETS)
    composite = composite or EpsilonPlusFlat()
    if projected_layers(model):
        composite = with_projection_rule(composite)
    lrp = LRP(composite)
    mask = torch.as_tensor(mask, dtype=torch.float32)
    shares = []
    for xb, yb in sample_chunks(dataset, np.arange(len(dataset)), batch_size):  # type: ignore[arg-type]
        if target == "prediction":
            yb = predict(model, xb)
        relevance, _ = lrp.attribute(model, xb, yb)
        magnitude = relevance.abs().sum(1)
        total = magnitude.flatten(1).sum(1)
        inside = (magnitude * mask).flatten(1).sum(1)
        shares.append(torch.where(total > 0, inside / total.clamp(min=1e-30), torch.zeros_like(total)))
    return float(torch.cat(shares).mean())


def group_accuracy(predictions: Tensor, labels: Tensor, groups: list[str]) -> dict[str, float]:
    """Accuracy per group: ``groups[i]`` names sample ``i``'s group; predictions and labels (n,)."""
    if not len(predictions) == len(labels) == len(groups):
        raise ValueError(f"{len(predictions)} predictions, {len(labels)} labels and {len(groups)} groups differ")
    right = (predictions == labels).numpy()
    names = np.asarray(groups, dtype=object)
    return {name: float(right[names == name].mean()) for name in dict.fromkeys(groups)}


def _group_rows(per_group: dict[str, float]) -> dict[str, Any]:
    """``group_accuracy``, its mean (AGA) and minimum (WGA); None without groups."""
    values = list(per_group.values())
    return {"group_accuracy": per_group or None, "average_group_accuracy": float(np.mean(values)) if values else None,
            "worst_group_accuracy": min(values) if values else None}


def evaluate_model(model: nn.Module, *, clean: Dataset, patch: Tensor, mask: Tensor,
                   poisoned: Dataset | None = None, everywhere_test: Dataset | None = None,
                   composite: Composite | None = None, target: str = "prediction",
                   region: Tensor | np.ndarray | None = None, label: int | None = None,
                   tcav_at: str | None = None) -> dict[str, Any]:
    """Accuracies, group accuracies, artifact relevance and TCAV of one model (keys of :data:`METRICS`
    except ``fda_rank`` and ``training_seconds``).

    ``everywhere_test``: test data with the artifact in every sample, where the artifact is known (e.g. the
    demo's planted stamp); by default ``clean`` with the isolated artifact pasted into every sample.
    ``label``: the flagged class, whose TCAV is measured at layer ``tcav_at`` (None: not measured).
    """
    stamped = everywhere(clean, patch, mask) if everywhere_test is None else everywhere_test
    inside = mask if region is None else torch.as_tensor(np.asarray(region), dtype=torch.float32)
    if inside.shape != mask.shape:
        raise BadInputError(f"region must have the mask's shape {tuple(mask.shape)}, got {tuple(inside.shape)}")
    shape = tuple(torch.as_tensor(stamped[0][0]).shape) if len(stamped) else None  # type: ignore[arg-type]
    if shape is not None and shape[-2:] != tuple(mask.shape):
        raise BadInputError(f"the everywhere test samples have shape {shape}, but the artifact mask is "
                            f"{tuple(mask.shape)}; use test data like the training data")
    # Read by chunks (spray.training.CHUNK), as the relevance and TCAV are: a test set need not fit in memory.
    predicted_clean, y_clean = predict_samples(model, clean, np.arange(len(clean)))  # type: ignore[arg-type]
    predicted, y = predict_samples(model, stamped, np.arange(len(stamped)))  # type: ignore[arg-type]
    groups = group_accuracy(torch.cat([predicted_clean, predicted]), torch.cat([y_clean, y]),
                            [f"{c}:clean" for c in y_clean.tolist()] + [f"{c}:artifact" for c in y.tolist()])
    share = artifact_relevance(model, stamped, inside, composite=composite, target=target)
    area = float(inside.float().mean())
    row = {
        "clean_accuracy": float((predicted_clean == y_clean).float().mean()) if len(y_clean) else math.nan,
        "poisoned_accuracy": accuracy(model, poisoned) if poisoned is not None else None,
        "everywhere_accuracy": float((predicted == y).float().mean()) if len(y) else math.nan,
        **_group_rows(dict(sorted(groups.items(), key=lambda kv: _group_order(kv[0])))),
        "artifact_relevance": share,
        "relevance_density": share / area if area > 0 else None,
        "tcav_score": None, "tcav_magnitude": None, "tcav_layer": tcav_at,
    }
    if tcav_at is not None and label is not None:
        try:
            of_class = Subset(clean, np.flatnonzero((y_clean == label).numpy()).tolist())  # Python ints
            measured = tcav(model, tcav_at, concept=stamped, random=clean, inputs=of_class, target=label)
        except BadInputError:  # no CAV at that layer (the artifact leaves it unchanged, too few samples) or
            measured = None    # no sample of the class: TCAV is not measured, the rest of the row is
        if measured is not None:
            row |= {"tcav_score": measured.score, "tcav_magnitude": measured.magnitude}
    return row


def _group_order(name: str) -> tuple[int, bool]:
    """Groups by class index, clean before artifact."""
    label, _, kind = name.partition(":")
    return int(label), kind == "artifact"


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


def reaudit(model: nn.Module, setup: FdaSetup, *, name: str = "corrected", progress: bool = False) -> Ranking:
    """Attribute ``setup.dataset`` with ``model`` as the original audit did into ``setup.out_dir/<name>.h5``,
    analyse it with the original pipeline and return the ranking. Resumable like any audit."""
    with AuditStore(setup.store) as store:
        analysis = choose_analysis(store, setup.analysis)
        summary = analysis_summary(store, analysis)
        attribution = summary["attribution"]
        info = store.attribution_info(attribution)
        label_names = store.attrs().get("label_names") or None
    pipeline = json.loads(summary["pipeline"])
    attributor = explaining(recorded_method(info), model)
    spec = PipelineSpec(name=pipeline["name"], attribution=attribution, nodes=pipeline["nodes"])
    attribution = AttributionRun(
        attributor, model_hash=model_hash(model), model_name=f"{info.get('model_name', 'model')} ({name})",
        dataset_name=f"{name} re-audit", target=info["target"], label_names=label_names,
        batch_size=int(info["batch_size"]), thumbnail_size=None, progress=progress,
    )
    return audit(Path(setup.out_dir) / f"{name}.h5", model, setup.dataset, attribution, spec)


def fda_rank(model: nn.Module, setup: FdaSetup, label: int, *, name: str = "corrected",
             progress: bool = False) -> int | None:
    """``label``'s rank (None if the class was skipped) in the :func:`reaudit` of ``setup.dataset``."""
    return _rank_of(reaudit(model, setup, name=name, progress=progress), label)


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
    layer: str | None = None,
    training_seconds: float | None = None,
    correction: str | None = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """The before/after table: one row per model, keys ``model``, ``correction`` and :data:`METRICS` (None =
    not measured). ``layer``: the corrected layer (TCAV is measured at another one:
    :func:`spray.clarc.tcav.tcav_layer`; None: no TCAV); ``training_seconds``: what the correction cost and
    ``correction``: what the corrected model is (:func:`spray.clarc.run.shipped`), both the corrected row's."""
    tcav_at = None if layer is None else tcav_layer(original, layer, stack_samples(clean, [0])[0])
    rows = []
    for name, model in (("original", original), ("corrected", corrected)):
        row = {"model": name, "correction": correction if name == "corrected" else None,
               **evaluate_model(model, clean=clean, patch=patch, mask=mask, poisoned=poisoned,
                                everywhere_test=everywhere_test, composite=composite, target=target,
                                region=region, label=label, tcav_at=tcav_at)}
        row["fda_rank"] = None
        if fda is not None:
            row["fda_rank"] = (original_rank(fda.store, label, fda.analysis) if name == "original"
                               else fda_rank(model, fda, label, name=name, progress=progress))
        row["training_seconds"] = training_seconds if name == "corrected" else None
        rows.append(row)
    return rows


COLUMNS = {"model": "model", "clean_accuracy": "clean acc", "poisoned_accuracy": "poisoned acc",
           "everywhere_accuracy": "everywhere acc", "average_group_accuracy": "AGA",
           "worst_group_accuracy": "WGA", "artifact_relevance": "artifact rel.", "relevance_density": "density",
           "tcav_score": "TCAV", "tcav_magnitude": "|dd|", "fda_rank": "FDA rank", "training_seconds": "cost"}
"""The text table's columns (key: header); per-group accuracies and the TCAV layer are in the JSON only."""


def format_metrics(rows: list[dict[str, Any]]) -> str:
    """The table as aligned text (accuracies, relevance shares and TCAV scores in %, the density as a
    factor, |dd| to 3 significant digits, ranks as integers, cost in seconds, '-' for None)."""

    def cell(key: str, value: Any) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "-"
        if key == "fda_rank":
            return str(value)
        if key == "relevance_density":
            return f"{value:.2f}x"
        if key == "tcav_magnitude":
            return f"{value:.3g}"
        if key == "training_seconds":
            return f"{value:.1f}s"
        return f"{100 * value:.1f}%"

    def model(row: dict[str, Any]) -> str:
        return row["model"] + (f" ({row['correction']})" if row.get("correction") else "")

    table = [list(COLUMNS.values())] + [[model(row), *(cell(k, row.get(k)) for k in list(COLUMNS)[1:])]
                                        for row in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
                     for r in table)
