"""One benchmark case through spray's own chain, scored against its ground truth; cached and resumable.

:func:`run_case`: make the case's data (spray.benchmark.cases) -> train its model (spray.workflow.train_once,
the weights cached) -> attribute the training split (spray.attribution.attribute_dataset) -> SpRAy
(spray.pipeline.analyze) -> rank (spray.ranking.rank_classes) -> P-ClArC on the top-ranked cluster with the
ground-truth artifact in every test image (spray.clarc.clarc_from_store) -> score, and score the baseline
without attribution (spray.benchmark.baseline) the same way, and the faithfulness of the model's heatmaps
(spray.benchmark.faithfulness). These are the calls the
``spray attribute``, ``analyze``, ``rank`` and ``clarc`` commands make. Each stage is memoised by the stage
itself (weights by file, attributions by the store's resume, analysis nodes by their keys), and the scored
result of a finished case is kept as ``result-v<SCORES>.json``: an interrupted benchmark started again skips the
finished cases and resumes the unfinished one where it stopped.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spray.attribution.methods import get_method
from spray.attribution import AttributionRun, attribute_dataset
from spray.benchmark.baseline import activation_baseline
from spray.benchmark.cases import Case, CaseData, Size, make_case
from spray.benchmark.data import load_images
from spray.benchmark.faithfulness import aopc, spread
from spray.benchmark.metrics import detection, mask_iou, out_of_fold_cav_auroc, relevance_density
from spray.benchmark.models import build
from spray.clarc import (ClarcConfig, EvaluationData, Tuning, clarc_from_store, default_layer, isolate_artifact,
                         localize)
from spray.clarc.activations import activations, pool
from spray.data.models import model_hash
from spray.errors import BadInputError
from spray.outputs import active
from spray.pipeline import analyze, pipeline_from_text
from spray.pipeline.graph import hash_json
from spray.ranking import Ranking, rank_classes
from spray.store import AuditStore
from spray.training import TrainingConfig, accuracy
from spray.workflow import train_once

VERSION = 1
"""Part of every case's cache key: raise it when a change makes cached models or audit stores wrong."""
SCORES = 3
"""The version of a case's scored result (``result-v3.json``): raise it when the scoring changes, and a
benchmark started again scores every case anew from its cached model and store. 2: the baseline; 3: the
pixel-flipping AOPC and the IoU of ClArC's artifact masks."""
METHOD = "epsilon_plus_flat"
CLARC = "pclarc"
"""P-ClArC: no fine-tuning, so a case's correction costs seconds; A- and RR-ClArC join the grid later."""
USES_MARGIN = 0.05
"""A model *uses* the artifact when pasting it into every clean test image costs at least 5 points."""
PIPELINE = """
[analysis]
name = "spray"
[hdbscan]
[agglomerative]
"""
"""The default pipeline's clusterings (so its ranking) without the 2-D maps, which do not feed the ranking."""
ATTRIBUTION_BATCH = 128
STAGES = ("train", "attribute", "analyze", "rank", "clarc", "score", "baseline", "faithfulness")


@dataclass
class CaseResult:
    """A scored case (docs/benchmark.md, "Metrics", defines every field). None: not defined for the case
    (the control has no artifact) or not reached (``clarc_error`` says why)."""

    case: Case
    n_planted: int
    clean_accuracy: float
    everywhere_accuracy: float | None
    uses_artifact: bool | None
    rank: int | None
    flagged: bool
    cluster: str | None
    cluster_size: int
    precision: float | None
    recall: float | None
    f1: float | None
    cav_auroc: float | None
    clean_flags: int
    clean_classes: int
    relevance_density: float | None
    baseline_rank: int | None = None
    baseline_f1: float | None = None
    iou: float | None = None
    aopc: dict[str, float] | None = None
    clarc_cluster: str | None = None
    clarc_clean: tuple[float, float] | None = None
    clarc_everywhere: tuple[float, float] | None = None
    clarc_error: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CaseResult:
        pairs = {k: tuple(data[k]) if data[k] is not None else None for k in ("clarc_clean", "clarc_everywhere")}
        return cls(**{**data, **pairs, "case": Case(**data["case"])})


def case_directory(cache: Path, case: Case, size: Size, source: str) -> Path:
    """``cache/<case name>-<key>``: the key hashes everything the case's model and store depend on."""
    key = hash_json({"case": asdict(case), "size": asdict(size), "data": source, "version": VERSION})[:10]
    return cache / f"{case.name}-{key}"


def result_file(directory: Path) -> Path:
    """Where a case directory keeps its scored result (of this scoring version)."""
    return directory / f"result-v{SCORES}.json"


@contextmanager
def _timed(seconds: dict[str, float], stage: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    seconds[stage] = seconds.get(stage, 0.0) + time.perf_counter() - start


def run_case(case: Case, cache: str | Path, size: Size, *, source: str = "mnist",
             progress: bool = False) -> CaseResult:
    """Run ``case`` (or load its cached result) in a directory under ``cache``; see the module docstring."""
    guard = active()
    directory = guard.directory(case_directory(Path(cache), case, size, source), "benchmark case directory")
    scored = result_file(directory)
    if scored.is_file():
        return CaseResult.from_dict(json.loads(scored.read_text(encoding="utf-8")))
    seconds: dict[str, float] = {}
    data = make_case(case, load_images(source), size)
    train = data.dataset(data.train)
    with _timed(seconds, "train"):
        model = build(case.architecture, case.seed)
        config = TrainingConfig(epochs=size.epochs, batch_size=size.batch_size, lr=size.lr, seed=case.seed)
        train_once(model, lambda: train, directory / "model.pt", config, progress=progress)
    store = directory / "audit.h5"
    spec = pipeline_from_text(PIPELINE, source="spray.benchmark pipeline")
    with _timed(seconds, "attribute"):
        attribute_dataset(store, model, train, AttributionRun(
            get_method(METHOD), model_hash=model_hash(model), model_name=f"spray.benchmark {case.architecture}",
            dataset_name=case.name, batch_size=ATTRIBUTION_BATCH, label_names=train.label_names,
            thumbnail_size=None, progress=progress))
    with _timed(seconds, "analyze"):
        analyze(str(store), spec, progress=progress)
    with _timed(seconds, "rank"), AuditStore(store) as opened:
        ranking = rank_classes(opened, spec.name)
    result = _score(data, model, ranking, seconds)
    with _timed(seconds, "faithfulness"):
        x, y = (torch.from_numpy(a[spread(len(a))]) for a in data.clean_test)
        result.aopc = aopc(model, x, y, METHOD, seed=case.seed)
    if data.everywhere_test is not None:
        with _timed(seconds, "clarc"):
            _correct(result, store, model, data, directory, progress)
    text = json.dumps(result.to_dict(), indent=2) + "\n"
    guard.write(scored, "benchmark case result", lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return result


def _score(data: CaseData, model: torch.nn.Module, ranking: Ranking, seconds: dict[str, float]) -> CaseResult:
    """Detection and localisation scores of a case's audit (the ranking) against its ground truth."""
    case = data.case
    with _timed(seconds, "score"):
        ranked = [e for e in ranking if e.cluster is not None]
        entry = next((e for e in ranked if e.label == data.poisoned_class), None)
        clean = [e for e in ranked if case.is_control or e.label != data.poisoned_class]
        members = list(entry.cluster.members) if entry else []
        clean_acc = accuracy(model, data.dataset(data.clean_test))
        everywhere = data.everywhere_test
        everywhere_acc = None if everywhere is None else accuracy(model, data.dataset(everywhere))
        result = CaseResult(
            case=case, n_planted=len(data.planted), clean_accuracy=clean_acc, everywhere_accuracy=everywhere_acc,
            uses_artifact=None if everywhere_acc is None else clean_acc - everywhere_acc >= USES_MARGIN,
            rank=entry.rank if entry else None, flagged=bool(entry and entry.flagged),
            cluster=entry.cluster.reference if entry else None,
            cluster_size=len(members), precision=None, recall=None, f1=None, cav_auroc=None,
            clean_flags=sum(e.flagged for e in clean), clean_classes=len(clean), relevance_density=None,
            seconds=seconds,
        )
        if not case.is_control:
            result.precision, result.recall, result.f1 = detection(members, data.planted.tolist())
            result.cav_auroc = _cav_auroc(data, model, members)
            if not data.is_global:
                x = torch.from_numpy(data.train[0][data.planted])
                y = torch.from_numpy(data.train[1][data.planted])
                relevance, _ = get_method(METHOD).attribute(model, x, y)
                result.relevance_density = relevance_density(relevance.detach().numpy(), data.masks)
                result.iou = _localization_iou(data, model, members)
    if not case.is_control:
        with _timed(seconds, "baseline"):
            baseline = activation_baseline(model, *data.train)
            entry = next((i for i, c in enumerate(baseline) if c.label == data.poisoned_class), None)
            if entry is not None:
                result.baseline_rank = entry + 1
                result.baseline_f1 = detection(baseline[entry].members.tolist(), data.planted.tolist())[2]
    return result


def _cav_auroc(data: CaseData, model: torch.nn.Module, members: list[int]) -> float | None:
    """Out-of-fold CAV AUROC of the planted samples within the poisoned class, the CAV fitted to spray's
    flagged cluster in ClArC's default layer."""
    in_class = np.flatnonzero(data.train[1] == data.poisoned_class)
    x = torch.from_numpy(data.train[0][in_class])
    pooled = pool(activations(model, default_layer(model, x[:2]), x)).numpy()
    return out_of_fold_cav_auroc(pooled, np.isin(in_class, members), np.isin(in_class, data.planted),
                                 seed=data.case.seed)


def _localization_iou(data: CaseData, model: torch.nn.Module, members: list[int]) -> float | None:
    """IoU of ClArC's artifact masks with the true masks over the planted images. The artifact model of spray's
    flagged cluster is isolated as ClArC isolates it (its CAV against the rest of the class, the audit's
    composite); each planted image is localised along that CAV (spray.clarc.localize) and its mask is the
    pixels the soft mask covers at all. None where ClArC refuses the cluster (too few samples for a CAV)."""
    in_class = np.flatnonzero(data.train[1] == data.poisoned_class)
    composite = get_method(METHOD).composite
    try:
        artifact = isolate_artifact(model, data.dataset(data.train), np.asarray(members, np.int64),
                                    np.setdiff1d(in_class, members), label=data.poisoned_class,
                                    composite=composite, random_state=data.case.seed)
    except BadInputError:
        return None
    found = localize(model, artifact.layer, torch.from_numpy(data.train[0][data.planted]), artifact.direction,
                     composite)
    return mask_iou(found.masks.numpy() > 0, data.masks)


def _correct(result: CaseResult, store: Path, model: torch.nn.Module, data: CaseData, directory: Path,
             progress: bool) -> None:
    """P-ClArC on the top-ranked class's flagged cluster (what ``spray clarc --cluster top`` corrects),
    evaluated with the ground-truth artifact in every clean test image; a refusal is recorded, not raised."""
    try:
        corrected = clarc_from_store(
            store, model, data.dataset(data.train),
            ClarcConfig(CLARC, directory / "clarc", tuning=Tuning(seed=data.case.seed), progress=progress),
            EvaluationData(data.dataset(data.clean_test), everywhere_test=data.dataset(data.everywhere_test)),
        )
    except BadInputError as exc:  # e.g. a flagged cluster too small for a CAV: part of what is measured
        result.clarc_error = str(exc)
        return
    before, after = corrected.metrics
    result.clarc_cluster = corrected.cluster
    result.clarc_clean = (before["clean_accuracy"], after["clean_accuracy"])
    result.clarc_everywhere = (before["everywhere_accuracy"], after["everywhere_accuracy"])



def run_benchmark(cases: list[Case], cache: str | Path, size: Size, *, source: str = "mnist",
                  on_case: Callable[[int, CaseResult], None] | None = None,
                  progress: bool = False) -> list[CaseResult]:
    """Every case of ``cases`` in order (:func:`run_case`), cached under ``cache``; ``on_case(i, result)``
    after each. The cache directory and the data are checked before the first case runs."""
    active().directory(cache, "benchmark cache directory")
    load_images(source)
    results = []
    for i, case in enumerate(cases):
        results.append(run_case(case, cache, size, source=source, progress=progress))
        if on_case is not None:
            on_case(i, results[-1])
    return results
