"""One benchmark case through spray's own chain, scored against its ground truth; cached and resumable.

:func:`run_case`: make the case's data (spray.benchmark.cases) -> train its model (spray.workflow.train_once,
the weights cached) -> attribute the training split (spray.attribution.attribute_dataset) -> SpRAy
(spray.pipeline.analyze: pixel-level, concept-level, the first feature map's max-pooled activations) -> rank
(spray.ranking.rank_analyses over :data:`RANKED`; each analysis alone too) -> the corrections (P-ClArC by
default, any of spray.clarc.CORRECTIONS) on the top-ranked cluster with the ground-truth artifact in every test image
(spray.clarc.clarc_from_store) -> score, and score the baselines without attribution (spray.benchmark.baseline)
the same way, and the faithfulness of the model's heatmaps (spray.benchmark.faithfulness). These are the calls the
``spray attribute``, ``analyze``, ``rank`` and ``clarc`` commands make. Each stage is memoised by the stage
itself (weights by file, attributions by the store's resume, analysis nodes by their keys), and the scored
result of a finished case is kept as ``result-v<SCORES>.json`` (``result-v<SCORES>-<methods>.json`` for corrections
other than the default): an interrupted benchmark started again skips the finished cases and resumes the
unfinished one where it stopped. Each stage's wall and CPU seconds and the process's peak RSS are recorded.
"""

from __future__ import annotations

import json
import resource
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

from spray._checks import check_names
from spray.attribution.methods import Attributor, get_method
from spray.attribution import AttributionRun, attribute_dataset
from spray.benchmark.baseline import BASELINES
from spray.benchmark.cases import Case, CaseData, Size, check_extras, make_case
from spray.benchmark.data import load_images
from spray.benchmark.faithfulness import aopc, spread
from spray.benchmark.metrics import best_separated, detection, mask_iou, out_of_fold_cav_auroc, relevance_density
from spray.benchmark.models import RECIPES, build, training_config
from spray.clarc import (CORRECTIONS, ClarcConfig, EvaluationData, Tuning, Verification, clarc_from_store,
                         default_layer, isolate_artifact, localize)
from spray.clarc.activations import activations, first_layer, pool
from spray.clarc.projective import explaining
from spray.data.models import model_hash
from spray.errors import BadInputError
from spray.outputs import active
from spray.pipeline import analyze, pipeline_from_text
from spray.pipeline.graph import hash_json
from spray.ranking import Ranking, rank_analyses, rank_classes
from spray.store import AuditStore
from spray.training import accuracy
from spray.workflow import latent_attributor, train_once

VERSION = 1
"""Part of every case's cache key: raise it when a change makes cached models or audit stores wrong."""
SCORES = 35
"""The version of a case's scored result (``result-v<SCORES>.json``): raise it when the scoring changes, and a
benchmark started again scores every case anew from its cached model and store. 2: the baseline; 3: the
pixel-flipping AOPC and the IoU of ClArC's artifact masks; 4: the kNN-outlier and error-slice baselines, one
score per correction method, group accuracies, CPU seconds and peak RSS per stage; 5: the concept
analysis's ranking (``concept``); 6: the detection fields from the ranking over both analyses, the pixel-level
ranking alone as ``pixel``; 7: flags judged on the classes' selection excess (docs/spray-method.md §12); 8: the
CAV AUROC's CAV fitted to activations pooled to :data:`CAV_GRID` × :data:`CAV_GRID` cells; 9: ``auto`` ships
the chosen method refitted on all the training data (docs/clarc.md §2), and DFR is seeded; 10: a local artifact
is pasted where its mask and the cluster's mean difference agree (docs/clarc.md §13), and a ClArC checkpoint of
another configuration in the case's directory is started over (``overwrite``), not refused; 11: an artifact is
local only where its group's masks agree on the region the local transformation pastes (docs/clarc.md §14);
12: the first feature map's max-pooled activations analysed, ranked with the pixel-level and concept-level
analyses and alone (``activation_max``); 13: auto chooses A-ClArC's epochs (up to 8) on its validation part,
the global transformation is the group's intensity map (the mean shift with a contrast gain), and a changed
contrast makes an artifact global (docs/clarc.md §20); 14: A-ClArC's candidates stop early, 6 epochs after their
best validation epoch, or after 24 (docs/clarc.md §22); 15: a local artifact's A-ClArC candidate pastes the patch
or applies the intensity map, drawn per image, in place of one candidate of each (docs/clarc.md §23); 16: each
correction's relevance density inside the true masks, before and after (``density``); 17: a global artifact's
transformation is its spectral map where the model tells it from the group less well than the intensity map
(docs/clarc.md §26); 18: RR-ClArC clips each step's gradient to norm 1 (docs/clarc.md §27); 19: each
correction records whether its class is flagged (``flagged``; ``--cluster top`` prefers a flagged class, docs/clarc.md
§29); 20: a global artifact takes its spectral map unless the model tells that map's result from the group beyond
chance and the intensity map's less well, each AUC's distance from 0.5 either way (docs/clarc.md §32); 21: an
agreed area makes an artifact local only where its transplant masks lie at one place (docs/clarc.md §32); 22: masks
apart read a moving artifact unless the model tells the transplant's result from the group worse than the intensity
map's beyond chance (docs/clarc.md §34); 23: the CAV AUROC's CAV is fitted in the feature set of
:func:`cav_features` that separates the named cluster best (docs/benchmark.md, "CAV retrieval"); 24: each
correction records the two-class set's balanced accuracy (``balanced``), which its target reads; 25: each
correction records the TCAV score and mean |directional derivative| of its class before and after (``tcav``,
``tcav_magnitude``) and what it cost (``training_seconds``), issue 18's remaining metrics; 26: each correction is
verified, its class audited again with the corrected model and ranked again over the ranked analyses
(``verification``: spray.clarc.verify); 27: auto ships the first of its contenders whose refit clears the
class's flag (spray.clarc.auto, rule step 7); 28: a re-audit that sees none of the class's samples is "not
verified", not "cleared" (spray.clarc.verify.NOT_REAUDITED), and DFR's two-class head splits its decision between
both outputs, so that either class can be explained (docs/clarc.md §48); 29: each verification records how many
refits it took (``refits``: auto's contenders verified), which the scorecard counts as the flags cleared by a later
contender; 30: the two-class set has no clean class (its other class has its own minority group), so its flags
count nowhere in ``clean_flags``; 31: auto's step 7 looks past its chosen refit only where the chosen candidate's
validation worst group is above the original model's (docs/clarc.md §50); 32: clusters of at most
``knn.n_neighbors`` samples are cut in the graph of each sample's first 5 neighbours (the fda node's
``small_neighbors``, docs/spray-method.md §8); 33: auto's step-7 gap counts whole samples of the chosen
candidate's worst group (spray.clarc.auto.worst_group_gap), whose name, samples right and size auto records, and
the ``activation`` baseline cuts its small clusters as SpRAy does since 32 (spray.benchmark.baseline); 34: DFR's
regressions get 1000 liblinear iterations, not 100 (spray.clarc.dfr.MAX_ITER); 35: the flags compare the classes'
contrasts, the selection excess with the named cluster's separation (spray.ranking.contrasts, fda version 5)."""
METHOD = "epsilon_plus_flat"
CLARC = ("pclarc",)
"""The default corrections: P-ClArC, no fine-tuning, so a case's correction costs seconds."""
CAV_GRID = 2
"""The CAV AUROC's CAV, in ClArC's default layer, is fitted to its activations averaged over 2 × 2 cells per
channel (spray.clarc.activations.pool), not over every position: a local artifact raises a few channels in a
few positions, and the mean over all of them dilutes it (chosen on the development split, docs/benchmark.md)."""
USES_MARGIN = 0.05
"""A model *uses* the artifact when pasting it into every clean test image costs at least 5 points."""
PIPELINE = """
[analysis]
name = "spray"
[hdbscan]
[agglomerative]
"""
"""The default pipeline's clusterings (so its ranking) without the 2-D maps, which do not feed the ranking."""


def _latent_pipeline(name: str, attribution: str) -> str:
    """The concept analysis's nodes (channels kept, rows scaled to unit length) as analysis ``name`` of latent
    attribution ``attribution``, without the 2-D maps."""
    return (f'[analysis]\nname = "{name}"\nattribution = "{attribution}"\n'
            '[preprocess]\nchannel_reduction = "keep"\nnormalization = "l2"\n[hdbscan]\n[agglomerative]\n')


CONCEPT_PIPELINE = _latent_pipeline("concept", "latent")
"""pipelines/concept.toml's analysis (concept-level SpRAy on the latent relevance), without the 2-D maps."""
ACTIVATION_MAX = "activation_max"
"""The attribution and the analysis of the first feature map's activations, maximised over every position
(spray.attribution.LatentAttributor's ``activation_max``, grid 1): what the images contain, wherever it sits."""
ACTIVATION_MAX_PIPELINE = _latent_pipeline(ACTIVATION_MAX, ACTIVATION_MAX)
"""pipelines/activation_max.toml's analysis, without the 2-D maps."""
RANKED = ("spray", "concept", ACTIVATION_MAX)
"""The analyses whose ranking together gives a case's detection fields (docs/benchmark.md, "Metrics"): the
max-pooled activations with the relevance analyses, chosen on the development split (docs/spray-method.md, "What
relevance cannot show": the random patch's group named, no flag and no false flag more)."""
ATTRIBUTION_BATCH = 128
STAGES = ("train", "attribute", "analyze", "rank", "clarc", "score", "baseline", "faithfulness")


@dataclass
class CaseResult:
    """A scored case (docs/benchmark.md, "Metrics", defines every field). None: not defined for the case
    (the control has no artifact) or not reached (a correction's ``error`` says why).

    ``baselines``: per baseline (spray.benchmark.baseline.BASELINES), ``{"rank", "f1"}``. ``corrections``: per
    correction method, ``{"cluster", "flagged", "clean", "everywhere", "worst_group", "balanced", "density",
    "tcav", "tcav_magnitude", "training_seconds", "verification", "error"}``, the accuracies, densities and TCAV
    figures as [original, corrected], ``flagged`` whether the corrected cluster's class is, ``verification`` the
    re-audit's ``{"verdict", "rank", "flagged", "outlier", "separability_dropped", "match_f1"}`` (the standings as
    [before, after]: :class:`spray.clarc.verify.Verification`).
    ``group_accuracy``: the two-class set's accuracy per group on the clean test set."""

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
    analysis: str | None = None
    iou: float | None = None
    aopc: dict[str, float] | None = None
    group_accuracy: dict[str, float] | None = None
    worst_group_accuracy: float | None = None
    balanced_accuracy: float | None = None
    baselines: dict[str, dict[str, Any]] = field(default_factory=dict)
    corrections: dict[str, dict[str, Any]] = field(default_factory=dict)
    pixel: dict[str, Any] | None = None
    concept: dict[str, Any] | None = None
    activation_max: dict[str, Any] | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    peak_rss_mib: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CaseResult:
        return cls(**{**data, "case": Case(**data["case"])})


def case_directory(cache: Path, case: Case, size: Size, source: str) -> Path:
    """``cache/<case name>-<key>``: the key hashes everything the case's model and store depend on; an
    architecture's own training recipe (spray.benchmark.models.RECIPES) too, so changing it retrains (the
    others' recipe is the size's, already hashed: their keys, and caches, predate the recipes)."""
    keyed = {"case": asdict(case), "size": asdict(size), "data": source, "version": VERSION}
    if case.architecture in RECIPES:
        keyed["recipe"] = asdict(RECIPES[case.architecture])
    key = hash_json(keyed)[:10]
    return cache / f"{case.name}-{key}"


def result_file(directory: Path, corrections: tuple[str, ...] = CLARC) -> Path:
    """Where a case directory keeps its scored result (of this scoring version) with ``corrections``."""
    return directory / (f"result-v{SCORES}.json" if corrections == CLARC else
                        f"result-v{SCORES}-{'+'.join(corrections)}.json")


def check_corrections(names: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """``names`` as a tuple if each is a correction of spray.clarc.CORRECTIONS (read when called, so methods
    added there are accepted here); a BadInputError naming the unknown ones otherwise."""
    chosen = check_names(names, tuple(CORRECTIONS), "correction", "--clarc")
    if len(chosen) < len(names):  # each names a column and a result file: a repeat is a typo, not a request
        raise BadInputError(f"a correction is named twice in --clarc {','.join(names)}")
    return chosen


@dataclass
class Costs:
    """Per stage: wall seconds, CPU seconds of the process (all its threads, ``time.process_time``) and the
    process's peak resident set size in MiB by the end of the stage (``getrusage``'s ``ru_maxrss``: a high-water
    mark over the stage and everything before it in the process, so a stage that allocates more than any
    before it raises it)."""

    wall: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)
    rss: dict[str, float] = field(default_factory=dict)


@contextmanager
def _timed(seconds: Costs, stage: str) -> Iterator[None]:
    start, cpu = time.perf_counter(), time.process_time()
    yield
    seconds.wall[stage] = seconds.wall.get(stage, 0.0) + time.perf_counter() - start
    seconds.cpu[stage] = seconds.cpu.get(stage, 0.0) + time.process_time() - cpu
    seconds.rss[stage] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_case(case: Case, cache: str | Path, size: Size, *, source: str = "mnist",
             corrections: tuple[str, ...] = CLARC, progress: bool = False) -> CaseResult:
    """Run ``case`` (or load its cached result) in a directory under ``cache``, correcting with each of
    ``corrections`` (names in spray.clarc.CORRECTIONS); see the module docstring."""
    corrections = check_corrections(corrections)
    guard = active()
    directory = guard.directory(case_directory(Path(cache), case, size, source), "benchmark case directory")
    scored = result_file(directory, corrections)
    if scored.is_file():
        return CaseResult.from_dict(json.loads(scored.read_text(encoding="utf-8")))
    seconds = Costs()
    data = make_case(case, load_images(source), size)
    train = data.dataset(data.train)
    with _timed(seconds, "train"):
        model = build(case.architecture, case.seed, len(data.label_names), data.train[0].shape[1])
        train_once(model, lambda: train, directory / "model.pt", training_config(case.architecture, size, case.seed),
                   progress=progress)
    store = directory / "audit.h5"
    with _timed(seconds, "attribute"):
        # The heatmaps, the latent relevance at ClArC's default layer (the concept analysis's input), and the
        # first feature map's activations maximised over positions.
        lrp = get_method(METHOD)
        for attributor, name in ((lrp, None), (latent_attributor(lrp, model, train), None),
                                 (latent_attributor(lrp, model, train, "first", 1, ACTIVATION_MAX), ACTIVATION_MAX)):
            attribute_case(store, model, train, case, attributor, name, progress)
    pipelines = {"pixel": pipeline_from_text(PIPELINE, source="spray.benchmark pipeline"),
                 "concept": pipeline_from_text(CONCEPT_PIPELINE, source="spray.benchmark concept pipeline"),
                 ACTIVATION_MAX: pipeline_from_text(ACTIVATION_MAX_PIPELINE,
                                                    source="spray.benchmark activation_max pipeline")}
    with _timed(seconds, "analyze"):
        for pipeline in pipelines.values():
            analyze(str(store), pipeline, progress=progress)
    with _timed(seconds, "rank"), AuditStore(store) as opened:
        combined = rank_analyses(opened, RANKED)
        alone = {field_name: rank_classes(opened, p.name) for field_name, p in pipelines.items()}
    result = _score(data, model, combined, alone, seconds)
    with _timed(seconds, "faithfulness"):
        x, y = (torch.from_numpy(a[spread(len(a))]) for a in data.clean_test)
        result.aopc = aopc(model, x, y, METHOD, seed=case.seed)
    if data.everywhere_test is not None:
        with _timed(seconds, "clarc"):
            for method in corrections:
                result.corrections[method] = _correct(method, store, model, data, directory, progress, result)
    text = json.dumps(result.to_dict(), indent=2) + "\n"
    guard.write(scored, "benchmark case result", lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return result


def attribute_case(store: str | Path, model: torch.nn.Module, train: TensorDataset, case: Case, attributor: Attributor,
                   name: str | None = None, progress: bool = False) -> None:
    """Attribute ``case``'s training split ``train`` with ``attributor`` into ``store`` as the benchmark does (its
    batch size, no thumbnails), as attribution ``name`` (None: the attributor's own); resumes a partial run."""
    attribute_dataset(store, model, train, AttributionRun(
        attributor, model_hash=model_hash(model), model_name=f"spray.benchmark {case.architecture}",
        dataset_name=case.name, name=name, batch_size=ATTRIBUTION_BATCH, label_names=train.label_names,
        thumbnail_size=None, progress=progress))


def _score(data: CaseData, model: torch.nn.Module, combined: Ranking, alone: dict[str, Ranking],
           seconds: Costs) -> CaseResult:
    """Detection and localisation scores of a case's audit against its ground truth: the detection fields of
    the ranking over :data:`RANKED` (``combined``), and each analysis's ranking alone (``alone``: ``pixel``,
    ``concept``, ``activation_max``) as :func:`_detect` scores it, in the result's field of that name."""
    case = data.case
    with _timed(seconds, "score"):
        features = cav_features(model, data)  # once: every ranking's CAV AUROC reads the same class
        members, detected = _detect(data, combined, features)
        clean_acc = accuracy(model, data.dataset(data.clean_test))
        everywhere = data.everywhere_test
        everywhere_acc = None if everywhere is None else accuracy(model, data.dataset(everywhere))
        result = CaseResult(
            case=case, n_planted=len(data.planted), clean_accuracy=clean_acc, everywhere_accuracy=everywhere_acc,
            uses_artifact=None if everywhere_acc is None else clean_acc - everywhere_acc >= USES_MARGIN,
            **detected, relevance_density=None, seconds=seconds.wall, cpu_seconds=seconds.cpu,
            peak_rss_mib=seconds.rss, **{name: _detect(data, ranking, features)[1] for name, ranking in alone.items()},
        )
        if data.groups is not None:
            result.group_accuracy = _group_accuracy(model, data)
            result.worst_group_accuracy = min(result.group_accuracy.values())
            result.balanced_accuracy = float(np.mean(list(result.group_accuracy.values())))
        if not case.is_control and not data.is_global:  # a global artifact's mask is the whole image
            result.relevance_density = _planted_density(model, data)
            result.iou = _localization_iou(data, model, members)
    if not case.is_control:
        with _timed(seconds, "baseline"):
            for name, baseline in BASELINES.items():
                found = baseline(model, *data.train)
                entry = next((i for i, c in enumerate(found) if c.label == data.poisoned_class), None)
                result.baselines[name] = {"rank": None, "f1": None} if entry is None else {
                    "rank": entry + 1, "f1": detection(found[entry].members.tolist(), data.planted.tolist())[2]}
    return result


def _group_accuracy(model: torch.nn.Module, data: CaseData) -> dict[str, float]:
    """``model``'s accuracy on each group of the two-class set's clean test images, by group name."""
    x, y = data.clean_test
    groups = data.groups[1]
    return {name: accuracy(model, data.dataset((x[groups == g], y[groups == g])))
            for g, name in enumerate(data.group_names)}


def _detect(data: CaseData, ranking: Ranking, features: list[np.ndarray] | None) -> tuple[list[int], dict[str, Any]]:
    """The members of the cluster ``ranking`` names for the poisoned class, and the ranking's detection scores
    (docs/benchmark.md, "Metrics"): the class's ``rank``, ``flagged``, the ``analysis`` and ``cluster`` named,
    its size, ``precision``, ``recall``, ``f1`` and ``cav_auroc`` (None on the control; ``features``: the case's
    :func:`cav_features`, None: no CAV AUROC), and the flags on the clean classes: those without a planted group,
    so none in the two-class set, whose every class has its minority group on the other background."""
    ranked = [e for e in ranking if e.cluster is not None]
    entry = next((e for e in ranked if e.label == data.poisoned_class), None)
    clean = [] if data.groups is not None else [
        e for e in ranked if data.case.is_control or e.label != data.poisoned_class]
    members = list(entry.cluster.members) if entry else []
    scores: dict[str, Any] = {
        "rank": entry.rank if entry else None, "flagged": bool(entry and entry.flagged),
        "analysis": entry.analysis if entry else None, "cluster": entry.cluster.reference if entry else None,
        "cluster_size": len(members), "precision": None, "recall": None, "f1": None, "cav_auroc": None,
        "clean_flags": sum(e.flagged for e in clean), "clean_classes": len(clean)}
    if not data.case.is_control:
        scores["precision"], scores["recall"], scores["f1"] = detection(members, data.planted.tolist())
        scores["cav_auroc"] = None if features is None else _cav_auroc(data, features, members)
    return members, scores


def _cav_auroc(data: CaseData, features: list[np.ndarray], members: list[int]) -> float | None:
    """Out-of-fold CAV AUROC of the planted samples within the poisoned class, the CAV fitted to spray's
    flagged cluster in the one of ``features`` (:func:`cav_features`) that separates that cluster best (no
    ground truth)."""
    in_class = np.flatnonzero(data.train[1] == data.poisoned_class)
    flagged = np.isin(in_class, members)
    chosen = features[best_separated(features, flagged, seed=data.case.seed)]
    return out_of_fold_cav_auroc(chosen, flagged, np.isin(in_class, data.planted), seed=data.case.seed)


def cav_features(model: torch.nn.Module, data: CaseData) -> list[np.ndarray] | None:
    """The feature sets the CAV AUROC's CAV may be fitted to, of the poisoned class's training images (None on
    the control: nothing planted to retrieve): ClArC's default layer's activations averaged over
    :data:`CAV_GRID` × :data:`CAV_GRID` cells per channel, and the first feature map's activations maximised over
    positions (what the ``activation_max`` analysis clusters): a patch at a random position is a peak somewhere
    in the first map, which cells of the last map average away, and a faint frame raises no channel's maximum
    there (docs/benchmark.md, "CAV retrieval")."""
    if data.case.is_control:
        return None
    x = torch.from_numpy(data.train[0][data.train[1] == data.poisoned_class])
    last = pool(activations(model, default_layer(model, x[:2]), x), CAV_GRID)
    first = activations(model, first_layer(model, x[:2]), x).flatten(2).amax(2)
    return [last.numpy(), first.numpy()]


def _planted_density(model: torch.nn.Module, data: CaseData) -> float:
    """The relevance density (spray.benchmark.metrics.relevance_density) of ``model``'s LRP heatmaps of the
    planted training images for their labels, inside their true masks."""
    x = torch.from_numpy(data.train[0][data.planted])
    y = torch.from_numpy(data.train[1][data.planted])
    relevance, _ = explaining(get_method(METHOD), model).attribute(model, x, y)  # P-ClArC's too
    return relevance_density(relevance.detach().numpy(), data.masks)


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


def _correct(method: str, store: Path, model: torch.nn.Module, data: CaseData, directory: Path, progress: bool,
             original: CaseResult) -> dict[str, Any]:
    """The correction ``method`` on the cluster ``spray clarc --cluster top`` corrects in a store holding the
    :data:`RANKED` analyses (the best-ranked flagged class's, or with none flagged the best-ranked class's:
    ``flagged`` records which), evaluated with the ground-truth artifact in every clean test image (and per group
    on the two-class set: its worst group and balanced accuracy), and, where the true masks localise the
    artifact, by the relevance density inside them (:func:`_planted_density`: the correction's target is a cut of
    at least half), and by the TCAV of the corrected class along a CAV at another layer
    (:func:`spray.clarc.evaluate.evaluate_correction`) with the correction's cost, and verified: the corrected
    class audited again with the corrected model and ranked again (spray.clarc.verify). The original model's group
    accuracies and density are read from the case's own scores, ``original``, not evaluated again per method; a
    refusal is recorded as its ``error``, not raised."""
    score: dict[str, Any] = {"cluster": None, "flagged": None, "clean": None, "everywhere": None,
                             "worst_group": None, "balanced": None, "density": None, "tcav": None,
                             "tcav_magnitude": None, "training_seconds": None, "verification": None, "error": None}
    try:
        corrected = clarc_from_store(
            store, model, data.dataset(data.train),
            ClarcConfig(method, directory / "clarc", cluster="top", tuning=Tuning(seed=data.case.seed),
                        verify=True, overwrite=True, progress=progress),
            EvaluationData(data.dataset(data.clean_test), everywhere_test=data.dataset(data.everywhere_test)),
        )
    except BadInputError as exc:  # e.g. a flagged cluster too small for a CAV: part of what is measured
        return {**score, "error": str(exc)}
    before, after = corrected.metrics
    score.update(cluster=corrected.cluster, flagged=corrected.flagged,
                 clean=[before["clean_accuracy"], after["clean_accuracy"]],
                 everywhere=[before["everywhere_accuracy"], after["everywhere_accuracy"]],
                 tcav=[before["tcav_score"], after["tcav_score"]],
                 tcav_magnitude=[before["tcav_magnitude"], after["tcav_magnitude"]],
                 training_seconds=after["training_seconds"],
                 verification=_verified(corrected.verification, corrected.params))
    if data.groups is not None:
        groups = [list(original.group_accuracy.values()), list(_group_accuracy(corrected.model, data).values())]
        score["worst_group"] = [min(g) for g in groups]
        score["balanced"] = [float(np.mean(g)) for g in groups]
    if original.relevance_density is not None:
        score["density"] = [original.relevance_density, _planted_density(corrected.model, data)]
    return score


def _verified(verification: Verification, params: dict[str, Any]) -> dict[str, Any]:
    """What the scorecard keeps of a correction's verification: its verdict, the class's rank, flag and outlier
    score before and after, whether its best cluster's separability dropped, how much of the corrected group
    still forms a cluster, and how many refits were verified (``refits``: 1, or auto's contenders up to the one
    that shipped, rule step 7; ``params``: the run's)."""
    before, after = verification.before, verification.after
    return {"verdict": verification.verdict, "rank": [before.rank, after.rank],
            "flagged": [before.flagged, after.flagged], "outlier": [before.outlier, after.outlier],
            "separability_dropped": verification.separability_dropped, "match_f1": verification.match_f1,
            "refits": max(1, len(params.get("auto", {}).get("verified", ())))}


def run_benchmark(cases: list[Case], cache: str | Path, size: Size, *, source: str = "mnist",
                  corrections: tuple[str, ...] = CLARC, on_case: Callable[[int, CaseResult], None] | None = None,
                  progress: bool = False) -> list[CaseResult]:
    """Every case of ``cases`` in order (:func:`run_case`), cached under ``cache``; ``on_case(i, result)``
    after each. The corrections, the cache directory, the data and the extras the cases need are checked before
    the first case runs."""
    check_corrections(corrections)
    active().directory(cache, "benchmark cache directory")
    load_images(source)
    check_extras(cases)
    results = []
    for i, case in enumerate(cases):
        results.append(run_case(case, cache, size, source=source, corrections=corrections, progress=progress))
        if on_case is not None:
            on_case(i, results[-1])
    return results
