"""From an audit store and a flagged cluster to corrected weights and a recorded result.

:func:`clarc_from_store` is what ``spray clarc`` runs: read the cluster's members, isolate the artifact,
correct the model (A-, P- or RR-ClArC), save the corrected weights, optionally evaluate and verify (audit
the flagged class again with the corrected model: spray.clarc.verify), and record it all in the store as
node ``clarc/<run>/result`` (docs/clarc.md lists its contract). :func:`evaluate_from_store`
(``spray evaluate``) measures a recorded run again, e.g. on other test data, and updates its metrics.

Run directory ``<out_dir>/<run>/``: ``weights.pt`` (the corrected state_dict), ``checkpoint.pt`` (fine-tuning,
resumable), ``result.json`` (what the node holds, minus arrays), ``corrected.h5`` (the re-audit for the FDA
rank, when asked), ``verify-<model hash>.h5`` (the flagged class's re-audit, when verifying).
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from spray.clarc.artifact import ArtifactModel, isolate_artifact
from spray.clarc.augmentive import AClArC
from spray.clarc.auto import Contender, auto_method, describe_choice, shows_correction
from spray.clarc.dfr import DFR
from spray.clarc.groupdro import GroupDRO
from spray.clarc.cluster import ClusterSpec, choose_analysis, read_cluster, resolve_cluster
from spray.clarc.evaluate import FdaSetup, empty_row, evaluate_correction, format_metrics
from spray.clarc.finetune import CHECKPOINT, Annotation, FinetuningCorrector, history_seconds
from spray.clarc.localize import SIGMA, THRESHOLD
from spray.clarc.projective import load_corrected, project_model
from spray.clarc.rrclarc import RRClArC
from spray.clarc.verify import Verification, verification_analyses, verification_store, verify_correction
from spray.data.images import check_audited
from spray.errors import BadInputError
from spray.results import analysis_summary, result_node, write_result
from spray.lrp import Composite, EpsilonPlusFlat
from spray.outputs import OutputGuard, active
from spray.store import AuditStore

WEIGHTS = "weights.pt"


@dataclass(frozen=True)
class Tuning:
    """Fine-tuning settings of a ClArC run; None takes the method's default (A-/RR-ClArC, GroupDRO)."""

    epochs: int | None = None
    lr: float | None = None
    batch_size: int = 64
    seed: int = 0
    fraction: float | None = None
    """A-ClArC, GroupDRO: the share of other-class samples that get the artifact."""
    lam: float | None = None
    """RR-ClArC: λ, the weight of the right-reason penalty."""
    kind: str = "auto"
    """A-ClArC, DFR, GroupDRO: the artifact's transformation, ``"local"`` (patch), ``"global"`` (intensity map),
    ``"spectral"`` (a gain per spatial frequency), ``"moving"`` (the group's own masked content),
    ``"local+global"`` (patch or map, drawn per image) or ``"auto"`` (by the localisation, and the model where
    that leaves it open or the artifact may be global; spray.clarc.transform)."""
    annotate: Annotation | None = field(default=None, compare=False)
    """The fine-tuning methods: figures of each epoch's model, added to its history entry, and when to stop
    early (auto scores the epochs of its candidates with them: spray.clarc.auto)."""
    verify: Callable[[nn.Module], Verification] | None = field(default=None, compare=False)
    """auto: audits a refitted candidate's class again (spray.clarc.verify), so that one whose class is still
    flagged gives way to the next (spray.clarc.auto, rule step 7); :func:`clarc_from_store` sets it when the run
    verifies."""

    def given(self) -> dict[str, Any]:
        return {k: v for k, v in (("epochs", self.epochs), ("lr", self.lr), ("batch_size", self.batch_size),
                                  ("seed", self.seed)) if v is not None}


@dataclass(frozen=True)
class Correction:
    """What a correction method made of the model: the corrected copy, its fine-tuning history, and the
    fine-tuning parameters it used (epochs, lr, batch_size, fraction, lambda; None where it has none);
    ``verification``: the corrected copy's, where the method verified it itself (auto, rule step 7)."""

    model: nn.Module
    history: list[dict[str, float]]
    params: dict[str, Any]
    verification: Verification | None = None


CorrectionMethod = Callable[[nn.Module, Dataset, ArtifactModel, Tuning, Path, bool, bool], Correction]
"""``method(model, dataset, artifact, tuning, run_dir, overwrite, progress) -> Correction``."""


def _projection(model: nn.Module, dataset: Dataset, artifact: ArtifactModel, tuning: Tuning, run_dir: Path,
                overwrite: bool, progress: bool) -> Correction:
    """P-ClArC: project the artifact direction (or subspace) out of the layer's activations; nothing is trained."""
    return Correction(project_model(model, artifact.layer, artifact.basis, artifact.clean_mean), [], {})


def _fine_tuning(make: Callable[[Tuning], FinetuningCorrector]) -> CorrectionMethod:
    """A method that fine-tunes a copy of the model with the corrector ``make(tuning)`` builds."""

    def correct(model: nn.Module, dataset: Dataset, artifact: ArtifactModel, tuning: Tuning, run_dir: Path,
                overwrite: bool, progress: bool) -> Correction:
        corrector = make(tuning)
        corrector.fit(model, dataset, artifact, checkpoint_dir=run_dir, overwrite=overwrite, progress=progress,
                      annotate=tuning.annotate)
        p = corrector.params()
        return Correction(corrector.model_, corrector.history_, {
            "epochs": p["epochs"], "lr": p["lr"], "batch_size": p["batch_size"], "fraction": p.get("fraction"),
            "lambda": p.get("lambda"),
        })

    return correct


def _dfr(model: nn.Module, dataset: Dataset, artifact: ArtifactModel, tuning: Tuning, run_dir: Path,
         overwrite: bool, progress: bool) -> Correction:
    """DFR: refit the last linear layer on group-balanced inferred groups; no fine-tuning loop."""
    dfr = DFR(seed=tuning.seed, kind=tuning.kind).fit(model, dataset, artifact)
    return Correction(dfr.model_, [], {"C": dfr.C_, "head": dfr.head_})


def _transformed(t: Tuning) -> dict[str, Any]:
    """The settings of the methods that add the artifact to other classes: its transformation, the share."""
    return {"kind": t.kind, **({} if t.fraction is None else {"fraction": t.fraction})}


CORRECTIONS: dict[str, CorrectionMethod] = {
    "aclarc": _fine_tuning(lambda t: AClArC(**t.given(), **_transformed(t))),
    "dfr": _dfr,
    "groupdro": _fine_tuning(lambda t: GroupDRO(**t.given(), **_transformed(t))),
    "pclarc": _projection,
    "rrclarc": _fine_tuning(lambda t: RRClArC(**t.given(), **({} if t.lam is None else {"lam": t.lam}))),
}
CORRECTIONS["auto"] = auto_method(dict(CORRECTIONS))
"""The correction methods by name (``spray clarc --method``): a new method is one entry here."""
METHODS = tuple(sorted(CORRECTIONS))


@dataclass
class ClarcResult:
    """A finished ClArC run: names, the artifact model, the corrected model and weights file, metrics."""

    run: str
    method: str
    cluster: str
    layer: str
    artifact: ArtifactModel
    model: nn.Module
    weights: Path
    run_dir: Path
    params: dict[str, Any]
    metrics: list[dict[str, Any]] = field(default_factory=list)
    history: list[dict[str, float]] = field(default_factory=list)
    verification: Verification | None = None
    flagged: bool | None = None
    """Whether the ranking flags the corrected cluster's class (spray.clarc.cluster.Target); False: the run
    corrected a group no test found distinct (``--cluster top`` with no class flagged, or a cluster so named)."""
    q_value: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary (``spray clarc --json``)."""
        return {"run": self.run, "method": self.method, "cluster": self.cluster, "flagged": self.flagged,
                "q_value": self.q_value, "layer": self.layer,
                **cav_figures(self.artifact), "weights": str(self.weights), "run_dir": str(self.run_dir),
                "params": self.params, "metrics": self.metrics, "history": self.history,
                "n_artifact": len(self.artifact.artifact_index), "n_rest": len(self.artifact.rest_index),
                "verification": None if self.verification is None else self.verification.to_dict()}

    def unflagged_warning(self) -> str | None:
        """What ``spray clarc`` and ``spray run`` print on stderr when the corrected class is not flagged."""
        if self.flagged is not False:
            return None
        q = "untested" if self.q_value is None else f"q = {self.q_value:.3g}"
        return (f"warning: {self.method} corrected cluster {self.cluster}, whose class {self.cluster.split(':')[0]} "
                f"is not flagged ({q}): no test found its group distinct; judge the cluster (`spray rank`, the "
                "report) before using the corrected model")

    def choice(self) -> str | None:
        """How ``--method auto`` chose the correction it shipped (spray.clarc.auto.describe_choice); None for
        another method."""
        return describe_choice(self.params["auto"]) if self.method == "auto" else None

    def table(self) -> str:
        """The metrics table, auto's choice where auto chose, and, when verified, the verification's summary."""
        return "\n".join(part for part in (format_metrics(self.metrics), self.choice(),
                                            None if self.verification is None else self.verification.summary())
                         if part is not None)


def cav_figures(artifact: ArtifactModel) -> dict[str, Any]:
    """What a run reports of its artifact model: the CAV's out-of-fold AUC, its rank and the subspace score's
    AUC (None unless a subspace CAV), and the layer choice (every candidate's figures; None when ``--layer``
    named the layer)."""
    return {"cav_auc": artifact.cav.auc_, "cav_rank": artifact.cav.rank_,
            "cav_subspace_auc": artifact.cav.subspace_auc_,
            "layer_choice": None if artifact.choice is None else artifact.choice.to_dict()}


def describe_artifact(artifact: ArtifactModel) -> str:
    """The layer (how it was chosen, every candidate's figures) and the CAV, as ``spray clarc`` prints them."""
    cav = artifact.cav
    subspace = f", subspace score AUC {cav.subspace_auc_:.3f}" if cav.subspace_auc_ is not None else ""
    lines = [f"CAV ({cav.method}, rank {cav.rank_}) at layer {artifact.layer}: out-of-fold AUC {cav.auc_:.3f}"
             f"{subspace}"]
    choice = artifact.choice
    if choice is None:
        return "\n".join([*lines, "layer as given (--layer)"])
    width = max(len("layer"), *(len(c.layer) for c in choice.candidates))
    lines += [f"layer chosen: {choice.reason}", f"  {'layer':<{width}}  channels  CAV AUC  concentration  kept"]
    lines += [f"{'*' if c.layer == choice.layer else ' '} {c.layer:<{width}}  {c.channels:>8}  {c.auc:>7.3f}  "
              f"{c.concentration:>13.3f}  {c.kept:>4.0%}" for c in choice.candidates]
    return "\n".join(lines)


def shipped(method: str, params: dict[str, Any]) -> str:
    """What a run's corrected model is: its method; for auto the candidate it chose (with the epochs auto
    chose for it, where it chose them), refitted on all the data (what auto ships; a run recorded before the
    refit shipped the candidate's fit-part model), and the refits it shipped in place of, whose class stayed
    flagged (spray.clarc.auto, rule step 7), or why it tried none where the flag stayed and the validation part
    showed nothing corrected."""
    if method != "auto":
        return method
    record = params["auto"]
    chosen = record["chosen"]
    epochs = record.get("epochs", record["candidates"][chosen].get("epochs"))  # runs before rule step 7 lack it
    ships, verified = str(Contender(chosen, epochs)), [v["contender"] for v in record.get("verified", ())]
    before = verified[:verified.index(ships)] if ships in verified else []
    return (f"auto: {ships}, " +
            ("refit on all the data" if "refit" in record else "fit part") +
            (f", in place of {'; '.join(before)} (class still flagged after the refit)" if before else "") +
            _none_tried(record))


def _none_tried(record: dict[str, Any]) -> str:
    """Why step 7 verified no contender after the chosen refit failed its verification (its class still flagged,
    or not seen by the re-audit), where that is the validation part showing nothing corrected (the chosen
    candidate's worst group not above the original model's); else ""."""
    verdicts = [v["verdict"] for v in record.get("verified", ())]
    original = record.get("original", {}).get("worst_group")  # runs before scoring version 31 lack it
    chosen = record["candidates"][record["chosen"]]["worst_group"]
    if verdicts not in (["not cleared"], ["not verified"]) or original is None or shows_correction(chosen, original):
        return ""
    return (f"; no other contender tried: its validation worst group ({chosen:.2f}) is not above the original "
            f"model's ({original:.2f})")


def run_name(method: str, cluster: str | ClusterSpec) -> str:
    """The default run name: ``<method>_<class>_<clustering>_<id>``."""
    spec = ClusterSpec.parse(cluster)
    return f"{method}_{spec.label}_{spec.clustering}_{spec.cluster}"


def audit_composite(store: AuditStore, analysis: str) -> Composite:
    """The LRP composite of the attribution the analysis used (a latent attribution's too); EpsilonPlusFlat if
    that was not LRP."""
    from spray.attribution.methods import recorded_method

    info = store.attribution_info(analysis_summary(store, analysis)["attribution"])
    try:
        attributor = recorded_method(info)
    except BadInputError:
        return EpsilonPlusFlat()
    return getattr(attributor, "composite", None) or EpsilonPlusFlat()


@dataclass(frozen=True)
class ClarcConfig:
    """One ClArC run, checked when it is made: which cluster, which correction, where its files go, how.

    Args:
        method: the correction, a name in :data:`CORRECTIONS` (``"aclarc"``, ``"pclarc"``, ``"rrclarc"``).
        out_dir: the run's files go to ``out_dir/<run>/`` (``run``: default :func:`run_name`).
        cluster: ``CLASS:CLUSTERING:ID`` as ``spray rank --json`` reports it (class, clustering, cluster), or
            ``"top"``: the best cluster of the best-ranked flagged class of ``analysis``, or of the best-ranked
            class when none is flagged (default: the store's only analysis, or ``"spray"``;
            spray.clarc.cluster.resolve_cluster).
        layer: the module whose features the CAV is fitted on (default: the last feature map the head
            reads; ``"auto"``: the candidate spray.clarc.layer_choice chooses); ``cav`` (``"signal"``,
            ``"svm"``, ``"subspace"``), ``reference``, ``sigma``, ``threshold``: how the artifact is isolated
            (docs/clarc.md).
        tuning: fine-tuning settings (A-/RR-ClArC); its ``seed`` also seeds the CAV.
        relevance_target: the output whose relevance the evaluation measures in the artifact's mask.
        fda_rank: the evaluation also re-attributes and re-analyses the audited data with the corrected
            model (slow).
        verify: re-attribute and re-analyse the flagged class with the corrected model and record whether
            its group is gone (spray.clarc.verify; needs no test data).
        overwrite: start the fine-tuning afresh instead of resuming its checkpoint.
    """

    method: str
    out_dir: str | Path
    cluster: str | ClusterSpec = "top"
    analysis: str | None = None
    run: str | None = None
    layer: str | None = None
    cav: str = "signal"
    reference: str = "class"
    sigma: float = SIGMA
    threshold: float = THRESHOLD
    tuning: Tuning = Tuning()
    relevance_target: str = "prediction"
    fda_rank: bool = False
    verify: bool = False
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise BadInputError(f"unknown ClArC method {self.method!r}; choose one of {', '.join(METHODS)}")


@dataclass(frozen=True)
class EvaluationData:
    """What a correction is measured on: ``test`` (clean) and ``poisoned_test`` (as poisoned at training
    time); ``everywhere_test``: test data with the known artifact in every sample, by default ``test`` with
    the isolated artifact pasted into every sample."""

    test: Dataset
    poisoned_test: Dataset | None = None
    everywhere_test: Dataset | None = None


def clarc_from_store(
    store_path: str | Path, model: nn.Module, dataset: Dataset, config: ClarcConfig,
    evaluation: EvaluationData | None = None,
) -> ClarcResult:
    """Correct ``model`` (the audited model, not modified) for the artifact behind ``config.cluster`` of the
    analysed store at ``store_path`` as ``config`` says, and record the run there (node
    ``clarc/<run>/result``). ``dataset``: the audited data (dataset indices as stored; refused unless it is
    the data the store was attributed from: :func:`spray.data.images.check_audited`). Without
    ``evaluation`` the metrics stay None (``evaluate_from_store`` can fill them in later)."""
    with AuditStore(store_path) as store:
        check_audited(store.attrs()["dataset"], dataset, store_path)
        target = resolve_cluster(store, config.cluster, config.analysis)
        spec, analysis = target.spec, target.analysis
        members = read_cluster(store, spec, analysis)
        composite = audit_composite(store, analysis)
        if config.verify:  # refused before training a correction that could not be verified
            verification_analyses(store, target.analyses)
    run = config.run or run_name(config.method, spec)
    guard = active().with_inputs({"the audit store": store_path})
    run_dir = guard.directory(guard.directory(config.out_dir, "ClArC output directory") / run, "ClArC run directory")
    guard.file(run_dir / CHECKPOINT, "fine-tuning checkpoint")  # the corrector writes it (atomically) itself
    artifact = isolate_artifact(
        model, dataset, members.artifact, members.rest, label=spec.label, layer=config.layer, cav=config.cav,
        composite=composite, reference=config.reference, sigma=config.sigma, threshold=config.threshold,
        random_state=config.tuning.seed, cluster=str(spec),
    )
    def judge(corrected: nn.Module) -> Verification:
        guard.file(verification_store(run_dir, corrected), "verification audit store")
        return verify_correction(store_path, corrected, dataset, members, run_dir, analyses=target.analyses,
                                 progress=config.progress)

    tuning = replace(config.tuning, verify=judge) if config.verify else config.tuning
    started = time.perf_counter()
    correction = CORRECTIONS[config.method](model, dataset, artifact, tuning, run_dir, config.overwrite,
                                            config.progress)
    seconds = _training_seconds(correction, time.perf_counter() - started)
    weights = guard.write(run_dir / WEIGHTS, "corrected weights",
                          lambda tmp: torch.save(correction.model.state_dict(), tmp))
    params = {**_params(config, correction, weights, analysis, evaluation), "training_seconds": seconds}
    metrics = [empty_row("original"), empty_row("corrected", shipped(config.method, params))]
    if evaluation is not None:
        fda = FdaSetup(Path(store_path), dataset, run_dir, analysis) if config.fda_rank else None
        metrics = evaluate_correction(
            model, correction.model, label=spec.label, patch=artifact.patch, mask=artifact.mask,
            clean=evaluation.test, poisoned=evaluation.poisoned_test, everywhere_test=evaluation.everywhere_test,
            composite=composite, target=config.relevance_target, fda=fda, layer=artifact.layer,
            training_seconds=seconds, correction=shipped(config.method, params), progress=config.progress,
        )
    verification = None
    if config.verify:  # auto verified what it shipped (rule step 7); other methods' corrections are verified here
        verification = correction.verification or judge(correction.model)
    result = ClarcResult(run, config.method, str(spec), artifact.layer, artifact, correction.model, weights,
                         run_dir, params, metrics, correction.history, verification, target.flagged, target.q_value)
    _record(store_path, result, dataset, guard)
    return result


def _training_seconds(correction: Correction, wall: float) -> float:
    """What the correction cost: its fine-tuning's epochs as their history recorded them, or ``wall``, the
    seconds the method took (:func:`spray.clarc.finetune.history_seconds`); auto's, every candidate's training and
    validation and the refit, as it recorded each (the same rule), or ``wall`` where that is more (the reading of
    the class and the groups around them; a resumed or loaded run took less than it cost)."""
    if "auto" in correction.params:
        auto = correction.params["auto"]
        return max(wall, sum(c["seconds"] for c in auto["candidates"].values()) + auto["refit"]["seconds"])
    return history_seconds(correction.history, wall)


def _params(config: ClarcConfig, correction: Correction, weights: Path, analysis: str,
            evaluation: EvaluationData | None) -> dict[str, Any]:
    """The parameters a run records (docs/clarc.md): the correction's own, then how the artifact was
    isolated and the run evaluated."""
    everywhere = "given" if evaluation is not None and evaluation.everywhere_test is not None else "isolated"
    return {"lambda": None, "epochs": None, "lr": None, "fraction": None, "batch_size": None,
            "seed": config.tuning.seed, **correction.params, "weights": str(weights), "cav_method": config.cav,
            "reference": config.reference, "sigma": config.sigma, "threshold": config.threshold,
            "analysis": analysis, "relevance_target": config.relevance_target, "everywhere": everywhere}


def evaluate_from_store(
    store_path: str | Path,
    run: str,
    model: nn.Module,
    *,
    test: Dataset,
    poisoned_test: Dataset | None = None,
    everywhere_test: Dataset | None = None,
    dataset: Dataset | None = None,
    fda_rank: bool = False,
    relevance_target: str | None = None,
    region: np.ndarray | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Evaluate recorded run ``run`` again (``model``: the original, uncorrected model) and update its
    metrics in the store. The corrected weights are the file the run recorded; the artifact its patch and
    mask. ``everywhere_test`` as in :class:`EvaluationData`; ``dataset`` (the audited data, checked as
    :func:`clarc_from_store` checks it) is needed for ``fda_rank``."""
    with AuditStore(store_path) as store:
        if dataset is not None:
            check_audited(store.attrs()["dataset"], dataset, store_path)
        path = result_node(run)
        if not store.has_node(path):
            runs = sorted(p.split("/")[1] for p in store.list_nodes("clarc") if p.endswith("/result"))
            raise BadInputError(
                f"audit store {store_path} has no ClArC run {run!r}; runs: {', '.join(runs) or 'none'}"
            )
        arrays, attrs = store.read_node(path)
        analysis = attrs.get("analysis") or choose_analysis(store, None)
        composite = audit_composite(store, analysis)
    if fda_rank and dataset is None:
        raise BadInputError("the FDA rank needs the audited dataset (--data) to attribute it again")
    if not Path(str(attrs.get("weights"))).is_file():
        raise BadInputError(
            f"ClArC run {run!r} of {store_path} recorded its corrected weights in {attrs.get('weights')}, which "
            "does not exist (moved or deleted?); run `spray clarc` again"
        )
    corrected = load_corrected(copy.deepcopy(model), attrs["weights"])
    label = ClusterSpec.parse(attrs["cluster"]).label
    fda = FdaSetup(Path(store_path), dataset, Path(attrs["weights"]).parent, analysis) if fda_rank else None
    metrics = evaluate_correction(
        model, corrected, label=label, patch=torch.from_numpy(arrays["patch"]),
        mask=torch.from_numpy(arrays["mask"]),
        clean=test, poisoned=poisoned_test, everywhere_test=everywhere_test, composite=composite,
        target=relevance_target or attrs.get("relevance_target") or "prediction", region=region, fda=fda,
        layer=attrs.get("layer"), training_seconds=attrs.get("training_seconds"),
        correction=shipped(attrs["method"], attrs), progress=progress,
    )
    everywhere = "isolated" if everywhere_test is None else "given"
    write_result(store_path, run, arrays, {**attrs, "metrics": metrics, "everywhere": everywhere})
    return metrics


def _record(store_path: str | Path, result: ClarcResult, dataset: Dataset, guard: OutputGuard) -> None:
    """Write node ``clarc/<run>/result`` and ``result.json`` in the run directory."""
    artifact = result.artifact
    inputs, masks, index = artifact.examples(dataset)
    arrays = {
        "patch": artifact.patch.numpy().astype(np.float32),
        "mask": artifact.mask.numpy().astype(np.float32),
        "example_inputs": inputs,
        "example_masks": masks,
        "example_index": index,
        "cav": artifact.direction.numpy().astype(np.float32),
        "cav_basis": artifact.basis.numpy().astype(np.float32),
    }
    attrs = {
        "method": result.method,
        "cluster": result.cluster,
        "flagged": result.flagged,
        "q_value": result.q_value,
        "layer": result.layer,
        **cav_figures(artifact),
        "metrics": result.metrics,
        **result.params,
        "n_artifact": int(len(artifact.artifact_index)),
        "n_rest": int(len(artifact.rest_index)),
        "history": result.history,
        "verification": None if result.verification is None else result.verification.to_dict(),
    }
    write_result(store_path, result.run, arrays, attrs)
    text = json.dumps(result.to_dict(), indent=2, sort_keys=True) + "\n"
    guard.write(result.run_dir / "result.json", "ClArC result", lambda tmp: tmp.write_text(text))
