"""``--method auto``: choose one correction per case without ground truth.

The rule, in order:

1. **Split.** The inferred groups (spray.clarc.groups) are split, seeded and stratified, into a fit part
   and a validation part (:data:`~spray.clarc.groups.VALIDATION` of every group). Every candidate is
   trained on the fit part only.
2. **Kind.** The artifact is *local*, *global* or *moving* (spray.clarc.transform.artifact_kind): global
   when the mean mask covers at least half the image, or the group's intensity map changes the contrast
   where the class varies (a lifted background does, a patch does not); local when the group's masks agree
   on at least 1 % of it where the cluster differs from the rest of its class and lie at one place (a local
   artifact sits at the same pixels in every sample); otherwise moving (a local artifact at another place in
   each sample) when the masks lie apart, unless the intensity map reproduces what the CAV sees better than
   the group's own masked content transplanted into the rest of the class, beyond chance
   (:attr:`~spray.clarc.transform.KindFigures.moving`), else global (LRP along a global confounder's CAV lands
   on each sample's own content). A global artifact is *spectral*, the group's spectral map of the rest of the class
   (a gain per spatial frequency: a blur), which nests its intensity map (one gain: a lifted background), unless
   the model tells the spectral map's result from the group beyond chance and the intensity map's less well
   (:attr:`~spray.clarc.transform.KindFigures.spectral`). The kind fixes the candidates (:data:`CANDIDATES`),
   each a method with the artifact's transformation it uses (the pasted patch, the intensity map — the mean
   input shift with a contrast gain —, the spectral map or the transplant; P- and RR-ClArC use none, they act
   along the CAV).
   A local artifact's A-ClArC draws either of its two transformations per image (``"local+global"``: the patch
   pasted, or the intensity map, which carries a fixed-position artifact too): a candidate trained on one form
   alone stays sensitive to the other, which step 3 scores, and the one candidate met the targets wherever the two
   single-form candidates had, for about half their epochs (docs/clarc.md §22, §23). RR-ClArC, the costliest
   (a second-order gradient in every fine-tuning step), comes last for every kind.
   A candidate that cannot be fitted on the fit part because a group is under its minimum
   (:class:`~spray.errors.GroupSizeError`: a DFR head and GroupDRO need 8 samples in every inferred group,
   which a cluster of 10 no longer has once its validation share is held out), or whose fine-tuning diverges
   (:class:`~spray.errors.DivergedError`: RR-ClArC's loss on the benchmark's full-size Waterbirds-like set,
   docs/clarc.md §25), is skipped, with its reason recorded; the others are still scored.
3. **Score.** Each candidate's corrected model is scored on the validation part by its worst-group
   accuracy over the inferred groups and the counterfactual ones (:data:`COUNTERFACTUALS`): for a local
   artifact of *both* transformations (other classes with the patch pasted, and with the intensity map
   applied), so that a model still following the shortcut in either form fails one; for a global one of its
   map only, the intensity or the spectral map (its "patch" is the group's own digits); for a moving one of
   the transplant.
   A-ClArC's number of epochs is chosen here too (:data:`EPOCH_CHOICE`): each epoch's model is scored so,
   the candidate is its best epoch by steps 4–5 (the later epoch of equals), and the fine-tuning stops once
   that best epoch lies :data:`PATIENCE` epochs back, or at the most it tries (early stopping on the
   validation part, as GroupDRO's). A model that follows its shortcut completely needs more than the 3
   epochs that suffice where it does not, and the ViT more than 8 (docs/clarc.md §19–§22).
4. **Guard.** A candidate is dropped when its validation samples show, beyond sampling noise, that it
   loses more than :data:`MAX_CLEAN_LOSS` of clean accuracy: a one-sided paired test on the same validation
   samples (:func:`loss_p_value`, p below :data:`ALPHA`). If every candidate is dropped, the smallest
   observed loss wins.
5. **Choose** the best score; ties go to the candidate listed first (the cheaper one).
6. **Refit.** The chosen method is fitted again, with the same transformation, settings and epochs, on all the
   training data (fit and validation parts); that refit is the result. The validation chose the *method*;
   the share it held out would otherwise be lost to the shipped model (A-ClArC on all the data lost less
   clean accuracy than on the fit part: docs/clarc.md §11, §12).
7. **Verify**, where the run verifies its correction (``--verify``, ``spray run``, ``spray demo``, the
   benchmark): the refit's class is audited again (spray.clarc.verify). If it is still flagged, the next
   :func:`contenders` are refitted and verified in turn, and the first whose class is no longer flagged is the
   result: the chosen candidate at the latest of the later epochs its validation scored (its early stop lies
   :data:`PATIENCE` epochs past its best), then the other candidates by score — each only where the guard kept it
   and its worst group is within :data:`MAX_WORST_GROUP_GAP` of the chosen one's, counted in whole samples of the
   chosen one's worst group (:func:`worst_group_gap`). A fine-tuning can meet the accuracy figures after its first
   epochs and still encode the artifact for the class, which further epochs unlearn (A-ClArC on the development
   split's fixed patch at 30 %, seed 0: chosen at 1 epoch, the class still flagged; at 7 epochs cleared, with the
   same accuracies: docs/clarc.md §48). The gap is the accuracy target's (the artifact-everywhere accuracy within 5
   points of clean). Where none clears the flag, the chosen one ships and its verification says "not cleared".
   Contenders cost their refits only where the first keeps the flag.
   Step 7 looks past the chosen refit only where the validation part shows the chosen candidate correcting
   something: its worst group above the original model's on the same groups (``original``). Where it is not — the
   original already at the part's ceiling, the validation part seeing no use of the artifact that a correction
   removes — every contender ties on it, none can be shown to give up nothing, and the flag alone would choose:
   the chosen refit ships with its verdict (the CNN's two-class set at 3 %, development seed 0: every candidate
   and the original at a worst group of 1.00; DFR's refit cleared the flag and lost 7 points of balanced accuracy
   on the test set, docs/clarc.md §50).

The figures of every candidate (of its fit-part model; its worst group named, with its samples right and its size),
the original model's worst group, the candidates' order, the guard's level, the :func:`close_call`, the refit's and
the verdict of every refit verified are returned (``params["auto"]``) and printed (:func:`describe_choice`), so the
choice can be checked.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import binom
from torch import nn
from torch.utils.data import Dataset, Subset

from spray.clarc.artifact import digest
from spray.clarc.finetune import history_seconds
from spray.clarc.groups import InferredGroups, WorstGroup, infer_groups, labels_of, worst_group
from spray.clarc.transform import Transform, Transformations, kind_figures
from spray.errors import DivergedError, GroupSizeError
from spray.training import predict_samples

CANDIDATES = {"local": (("pclarc", "local"), ("aclarc", "local+global"), ("rrclarc", "local")),
              **{kind: tuple((method, kind) for method in ("aclarc", "dfr", "groupdro", "rrclarc"))
                 for kind in ("global", "spectral", "moving")}}
"""The candidates per artifact kind, cheapest first: (method, the artifact's transformation it uses)."""
COUNTERFACTUALS = {"local": ("local", "global"), "global": ("global",), "spectral": ("spectral",),
                   "moving": ("moving",)}
"""The transformations whose counterfactual groups score the candidates, per artifact kind. A global
confounder's "patch" is the mask-weighted mean of its group's own content (the digits the masks fell on),
not the artifact: a model that ignores the confounder still fails other classes with it pasted."""
REFIT = "refit"
"""The subdirectory of an auto run where the chosen method's refit on all the data keeps its checkpoint."""
UNTRANSFORMED = ("pclarc", "rrclarc")
"""The candidates that use no transformation of the artifact (they act along its CAV)."""
MAX_CLEAN_LOSS = 0.02
"""δ, the clean-accuracy loss a candidate may have (the correction's target: at most 2 points)."""
ALPHA = 0.05
"""The guard's level: a candidate is dropped when its loss exceeds δ at this one-sided significance."""
EPOCH_CHOICE = {"aclarc": 24}
"""The fine-tuned candidates whose number of epochs auto chooses on the validation part, and the most it
tries (unless ``--epochs`` gives them): A-ClArC reached the ResNet's brightness within 8 epochs, the CNN's
cases after 2–3, and the ViT's frame was still improving after 8 and up to 19 (docs/clarc.md §19–§21)."""
PATIENCE = 6
"""A candidate whose epochs auto chooses stops when its best validation epoch lies this many epochs back: the
worst group moves in steps of one validation sample and stands still for several epochs where the test
accuracies still rise (docs/clarc.md §20, §22)."""
MAX_WORST_GROUP_GAP = 0.05
"""How much validation worst-group accuracy a contender whose refit clears the flag may give up to the chosen
candidate (rule step 7): the accuracy target's gap, the artifact-everywhere accuracy within 5 points of clean,
counted in whole samples of the chosen candidate's worst group (:func:`worst_group_gap`)."""
SCORED = ("worst_group", "worst_group_name", "worst_group_correct", "worst_group_size", "clean_loss", "lost",
          "gained", "n", "p_value")
"""A candidate's validation figures (and those of each epoch where its epochs are chosen): its worst group's
accuracy, name, samples right and size (:class:`~spray.clarc.groups.WorstGroup`), and the guard's figures."""


def within(artifact: Any, fit: np.ndarray) -> Any:
    """``artifact`` with its cluster and rest re-indexed into ``Subset(dataset, fit)`` (sorted ``fit``), and its
    per-sample masks those of the cluster's samples kept."""
    def remap(index: np.ndarray) -> np.ndarray:
        kept = index[np.isin(index, fit)]
        return np.searchsorted(fit, kept).astype(np.int64)

    in_fit = np.isin(artifact.artifact_index, fit)  # the per-sample masks follow the artifact samples kept
    localization = dataclasses.replace(artifact.localization, masks=artifact.localization.masks[in_fit])
    return dataclasses.replace(artifact, artifact_index=remap(artifact.artifact_index),
                               rest_index=remap(artifact.rest_index), localization=localization)


def auto_method(corrections: Mapping[str, Callable[..., Any]]) -> Callable[..., Any]:
    """The ``auto`` correction over the methods of ``corrections`` (spray.clarc.run.CORRECTIONS)."""

    def correct(model: nn.Module, dataset: Dataset, artifact: Any, tuning: Any, run_dir: Path, overwrite: bool,
                progress: bool) -> Any:
        inferred = infer_groups(labels_of(dataset), artifact.label, artifact.artifact_index)
        fit, val = inferred.split(seed=tuning.seed)
        built = Transformations(artifact, dataset)  # the class read once for the kind and the counterfactuals
        read = kind_figures(built, model)
        kind = read.kind
        transforms = counterfactual_transforms(built, kind)
        part, reduced = Subset(dataset, fit.tolist()), within(artifact, fit)  # Python ints: a dataset may need them
        # Computed once for every candidate: the validation samples and which of them the original gets right.
        score = Validation(dataset, val, inferred, tuple(transforms), correct_on(model, dataset, val))
        original = score.worst_group(model)  # the same groups' worst with the original model
        figures: dict[str, dict[str, Any]] = {}
        candidates = {candidate_name(*c): c for c in CANDIDATES[kind]}
        for name, (method, transformation) in candidates.items():
            tick = time.perf_counter()
            most = EPOCH_CHOICE.get(method) if tuning.epochs is None else None
            settings = dataclasses.replace(tuning, kind=transformation)
            if most is not None:
                settings = dataclasses.replace(settings, epochs=most, annotate=score)
            try:
                correction = corrections[method](model, part, reduced, settings, Path(run_dir) / name, overwrite,
                                                 progress)
            except (GroupSizeError, DivergedError) as error:
                figures[name] = {"skipped": str(error), "seconds": time.perf_counter() - tick}
                continue
            scored = score.figures(correction.model) if most is None else best_epoch(correction.history)
            figures[name] = {**scored, "seconds": history_seconds(correction.history, time.perf_counter() - tick)}
        def refit(contender: Contender) -> tuple[Any, float]:  # rule step 6
            method, transformation = candidates[contender.name]
            epochs = {} if contender.epochs is None else {"epochs": contender.epochs}
            tick = time.perf_counter()
            result = corrections[method](model, dataset, artifact,
                                         dataclasses.replace(tuning, kind=transformation, **epochs),
                                         Path(run_dir) / REFIT / contender.directory(figures), overwrite, progress)
            return result, history_seconds(result.history, time.perf_counter() - tick)

        chosen = choose(figures)
        order = contenders(figures, chosen, original.accuracy)
        shipped, seconds = refit(order[0])
        step = Verified(shipped, order[0], None, [], seconds)
        if tuning.verify is not None:  # rule step 7
            step = verify_contenders(order, shipped, seconds, refit, tuning.verify)
        refit_record = {"n_fit": len(fit), "n": len(dataset), "seconds": step.seconds}
        params = {**step.result.params, "auto": {"kind": kind, **dataclasses.asdict(read),
                                                 "chosen": step.contender.name, "epochs": step.contender.epochs,
                                                 "original": original.to_dict(),
                                                 "candidates": figures, "listed": list(figures), "alpha": ALPHA,
                                                 "max_clean_loss": MAX_CLEAN_LOSS,
                                                 "close_call": close_call(chosen, figures), "refit": refit_record,
                                                 "verified": step.verdicts}}
        return dataclasses.replace(step.result, params=params, verification=step.verification)

    return correct


@dataclass(frozen=True)
class Contender:
    """A refit rule step 7 may ship: candidate ``name`` fitted for ``epochs`` (None: a method whose epochs auto
    does not choose)."""

    name: str
    epochs: int | None

    def directory(self, figures: Mapping[str, Mapping[str, Any]]) -> str:
        """Where its refit keeps its checkpoint, under :data:`REFIT`: the candidate's name, with ``@<epochs>``
        where they are not the candidate's chosen ones (``figures``), so that the chosen refit's checkpoint stays
        that of its epochs (a run again resumes it)."""
        chosen = figures[self.name].get("epochs")
        return self.name if self.epochs == chosen else f"{self.name}@{self.epochs}"

    def __str__(self) -> str:
        return self.name if self.epochs is None else f"{self.name} at {self.epochs} epochs"


def contenders(figures: Mapping[str, Mapping[str, Any]], chosen: str, original: float) -> list[Contender]:
    """The refits rule step 7 verifies in turn: ``chosen`` at its chosen epochs; at the latest later epoch its
    validation scored that qualifies; then the other candidates that qualify, best score first (the one listed
    first of equals). An epoch or candidate qualifies where the guard kept it and its worst group is within
    :func:`worst_group_gap` of ``chosen``'s; ``chosen`` comes alone where the guard kept no candidate (it is
    then the least loss, step 4), and where its worst group is not above ``original``, the original model's on the
    same validation groups (the validation shows nothing it corrects)."""
    best = figures[chosen]
    first = Contender(chosen, best.get("epochs"))
    floor = best["worst_group"] - worst_group_gap(best["worst_group_size"])

    def kept(f: Mapping[str, Any]) -> bool:
        return "skipped" not in f and f["p_value"] >= ALPHA and f["worst_group"] >= floor - 1e-9  # float sums

    if not kept(best) or not shows_correction(best["worst_group"], original):  # all dropped (step 4); nothing corrected
        return [first]
    later = [e["epoch"] for e in best.get("per_epoch", ()) if e["epoch"] > first.epochs and kept(e)]
    longer = [Contender(chosen, e) for e in later[-1:]]
    others = sorted((n for n, f in figures.items() if n != chosen and kept(f)),
                    key=lambda n: -figures[n]["worst_group"])
    return [first, *longer, *(Contender(n, figures[n].get("epochs")) for n in others)]


def worst_group_gap(size: int) -> float:
    """:data:`MAX_WORST_GROUP_GAP` for a worst group of ``size`` validation samples, counted in whole samples: the
    nearest number of them (halves up), as a share of the group. A worst group of 32 can drop by 1 sample (3.1
    points) or 2 (6.3), not by 5 points; 1.6 samples round to 2. Under 10 samples the gap is none, from 10 to 29
    one sample, and so on."""
    return math.floor(MAX_WORST_GROUP_GAP * size + 0.5) / size


def shows_correction(worst_group: float, original: float) -> bool:
    """Whether the validation part shows a candidate of ``worst_group`` correcting something: its worst group above
    ``original``, the original model's on the same groups (rule step 7 looks past the chosen refit only then)."""
    return worst_group > original


def describe_choice(record: Mapping[str, Any]) -> str:
    """auto's record (``params["auto"]``) as lines for the command line: the artifact's kind; each candidate's
    epochs, validation worst group (which group, how many of its samples right), clean-accuracy loss, guard p and
    seconds, the one shipped starred, a skipped one with its reason; the original model's worst group on the same
    groups; the refit and every refit rule step 7 verified; and the record's :func:`close_call`, where the choice
    was within sampling noise."""
    candidates = record["candidates"]
    n = next(f["n"] for f in candidates.values() if "skipped" not in f)
    width = max(len("the original model"), *map(len, candidates))
    lines = [f"auto: {record['kind']} artifact; candidates fitted on the fit part, scored on {n} validation samples",
             f"  {'candidate':<{width}}  epochs  {'worst group':<28}  clean loss  guard p  seconds"]
    for name in record["listed"]:
        f = candidates[name]
        star = "*" if name == record["chosen"] else " "
        if "skipped" in f:
            lines.append(f"{star} {name:<{width}}  skipped: {f['skipped']}")
            continue
        epochs = "-" if f.get("epochs") is None else str(f["epochs"])
        lines.append(f"{star} {name:<{width}}  {epochs:>6}  {_worst(f):<28}  {f['clean_loss']:>+10.1%}  "
                     f"{f['p_value']:>7.3f}  {f['seconds']:>7.0f}")
    lines.append(f"  {'the original model':<{width}}  {'':>6}  {_worst(record['original'])}")
    refit = record["refit"]
    lines.append(f"refit on all {refit['n']} samples ({refit['seconds']:.0f} s)" + "".join(
        f"; verified {v['contender']}: {v['verdict']} (rank {v['rank']})" for v in record["verified"]))
    close = record["close_call"]
    if close is not None:
        won, other = candidates[close["chosen"]], candidates[close["over"]]
        lines.append(f"note: {close['chosen']} was chosen over {close['over']} (listed before it) by one sample of "
                     f"their validation worst groups or less, {won['worst_group_correct']}/{won['worst_group_size']} "
                     f"against {other['worst_group_correct']}/{other['worst_group_size']}: within sampling noise")
    return "\n".join(lines)


def _worst(figures: Mapping[str, Any]) -> str:
    """A recorded worst group (:meth:`WorstGroup.to_dict`) as :class:`WorstGroup` prints it."""
    return str(WorstGroup(figures["worst_group_name"], figures["worst_group_correct"], figures["worst_group_size"]))


def close_call(chosen: str, figures: Mapping[str, Mapping[str, Any]]) -> dict[str, str] | None:
    """``{"chosen": chosen, "over": name}`` where ``chosen`` (rule step 5's choice among ``figures``, in the order
    auto lists its candidates) beats ``name``, the best candidate the guard kept that is listed before it (a cheaper
    one), by at most one sample of the smaller of their two worst groups: a choice within sampling noise. Else
    None."""
    names = list(figures)
    best = figures[chosen]
    before = [n for n in names[:names.index(chosen)] if "skipped" not in figures[n] and figures[n]["p_value"] >= ALPHA]
    if best["p_value"] < ALPHA or not before:
        return None
    runner = max(before, key=lambda n: figures[n]["worst_group"])
    size = min(best["worst_group_size"], figures[runner]["worst_group_size"])
    if best["worst_group"] - figures[runner]["worst_group"] > 1 / size + 1e-9:
        return None
    return {"chosen": chosen, "over": runner}


@dataclass(frozen=True)
class Verified:
    """The refit auto ships: the ``result``, its ``contender`` and its ``verification`` (None where the run does
    not verify); rule step 7's ``verdicts``, one per verified refit (the ``contender``, its ``verdict``, the
    class's ``rank`` and ``outlier`` after, the refit's and verification's ``seconds``); the ``seconds`` of
    every refit and verification."""

    result: Any
    contender: Contender
    verification: Any
    verdicts: list[dict[str, Any]]
    seconds: float


def verify_contenders(order: Sequence[Contender], first: Any, seconds: float,
                      refit: Callable[[Contender], tuple[Any, float]], verify: Callable[[nn.Module], Any]
                      ) -> Verified:
    """Rule step 7 over ``order`` (:func:`contenders`), of which the first is refitted already (``first``, in
    ``seconds``): the first whose verification clears its class ships, or else the first."""
    verdicts: list[dict[str, Any]] = []
    verifications = []
    for contender in order:
        result, spent = (first, seconds) if contender == order[0] else refit(contender)
        tick = time.perf_counter()
        verification = verify(result.model)
        verifications.append(verification)
        verdicts.append({"contender": str(contender), "verdict": verification.verdict,
                         "rank": verification.after.rank, "outlier": verification.after.outlier,
                         "seconds": spent + time.perf_counter() - tick})
        if not verification.failed:
            break
    else:  # none cleared its class: the chosen one ships
        result, contender, verification = first, order[0], verifications[0]
    return Verified(result, contender, verification, verdicts, sum(v["seconds"] for v in verdicts))


@dataclass(frozen=True)
class Validation:
    """How auto scores a corrected model on the validation samples ``val`` of ``dataset`` (rule steps 3–4):
    the worst group over the ``inferred`` groups and the counterfactual ones of ``transforms``, and the clean
    figures against which of them the original model gets right (``original``, bool). Called as
    ``(epoch, model)`` it is a fine-tuning's per-epoch annotation (spray.clarc.finetune) that stops it when
    :meth:`done`, and its :meth:`fingerprint` goes into the checkpoint, so a checkpoint scored otherwise is not
    resumed."""

    dataset: Dataset
    val: np.ndarray
    inferred: InferredGroups
    transforms: tuple[Transform, ...]
    original: np.ndarray

    def worst_group(self, model: nn.Module) -> WorstGroup:
        """``model``'s worst group over the inferred and the counterfactual groups."""
        return worst_group(model, self.dataset, self.val, self.inferred, *self.transforms)

    def figures(self, model: nn.Module) -> dict[str, Any]:
        """The :data:`SCORED` figures of ``model``."""
        return {**self.worst_group(model).to_dict(),
                **clean_figures(self.original, correct_on(model, self.dataset, self.val))}

    def __call__(self, epoch: int, model: nn.Module) -> dict[str, Any]:
        return self.figures(model)

    def done(self, history: Sequence[Mapping[str, float]]) -> bool:
        """Whether the fine-tuning of ``history`` (these figures per epoch) may stop: its best epoch
        (:func:`best_epoch`) lies :data:`PATIENCE` epochs back."""
        return int(history[-1]["epoch"]) - best_epoch(history)["epochs"] >= PATIENCE

    def fingerprint(self) -> dict[str, Any]:
        return {"val": digest(torch.from_numpy(self.val)), "original": digest(torch.from_numpy(self.original)),
                "transforms": [t.fingerprint() for t in self.transforms], "scored": list(SCORED)}


def best_epoch(history: Sequence[Mapping[str, float]]) -> dict[str, Any]:
    """A candidate whose epochs auto chose, from its fine-tuning ``history`` (each epoch's :data:`SCORED`
    figures): its best epoch's figures by :func:`choose`, the later of equals (the worst group in steps of one
    validation sample ties often, and A-ClArC's objective was still falling: docs/clarc.md §20), that epoch
    (``epochs``), and every epoch's (``per_epoch``)."""
    per_epoch = {int(entry["epoch"]): {k: entry[k] for k in SCORED} for entry in history}
    best = choose(dict(reversed(per_epoch.items())))  # the later of equal epochs
    return {**per_epoch[best], "epochs": best, "per_epoch": [{"epoch": e, **f} for e, f in per_epoch.items()]}


def correct_on(model: nn.Module, dataset: Dataset, index: np.ndarray) -> np.ndarray:
    """Which of samples ``index`` (bool (k,)) ``model`` classifies right, read by chunks
    (spray.training.predict_samples)."""
    predicted, labels = predict_samples(model, dataset, index)
    return (predicted == labels).numpy()


def counterfactual_transforms(transforms: Transformations, kind: str) -> list[Transform]:
    """The transformations whose counterfactual groups score the candidates for an artifact of ``kind``
    (:data:`COUNTERFACTUALS`), of the artifact's ``transforms``."""
    return [transforms.of(k) for k in COUNTERFACTUALS[kind]]


def candidate_name(method: str, transformation: str) -> str:
    """``pclarc``, ``rrclarc`` (no transformation), else ``aclarc/local+global``, ``dfr/global``, ...."""
    return method if method in UNTRANSFORMED else f"{method}/{transformation}"


def loss_p_value(lost: int, gained: int, n: int, budget: float = MAX_CLEAN_LOSS) -> float:
    """The one-sided p-value of "the candidate loses at most ``budget`` of clean accuracy" from its paired
    validation figures: of ``n`` samples, ``lost`` the original model got right and the candidate gets wrong,
    ``gained`` the reverse.

    McNemar's exact test conditioned on the ``m = lost + gained`` discordant samples, with a margin: the loss
    is ``Δ = (m / n)(2p − 1)`` where ``p`` is the chance that a discordant sample is a lost one, so
    ``Δ ≤ budget`` is ``p ≤ p₀ = ½ (1 + n · budget / m)``, and the p-value is ``P(X ≥ lost)`` for
    ``X ~ Binomial(m, p₀)``. ``budget = 0`` is McNemar's exact one-sided test. Where ``p₀ ≥ 1`` (too few
    discordant samples to lose more than the budget), or nothing was lost, it is 1."""
    m = lost + gained
    if lost == 0 or n * budget >= m:
        return 1.0
    return float(binom.sf(lost - 1, m, 0.5 * (1 + n * budget / m)))


def clean_figures(original: np.ndarray, corrected: np.ndarray) -> dict[str, float]:
    """A candidate's clean-accuracy figures on the validation samples from which of them (bool (n,)) the
    ``original`` model and the ``corrected`` one get right: ``clean_loss`` (the accuracy it loses), ``lost``,
    ``gained``, ``n`` and the guard's ``p_value`` (:func:`loss_p_value`)."""
    lost, gained, n = int(np.sum(original & ~corrected)), int(np.sum(~original & corrected)), len(original)
    return {"clean_loss": (lost - gained) / n, "lost": lost, "gained": gained, "n": n,
            "p_value": loss_p_value(lost, gained, n)}


def choose(figures: Mapping[Any, Mapping[str, Any]]) -> Any:
    """The candidate of rule steps 4–5 from ``{name: {"worst_group", "clean_loss", "p_value"}}`` (in listed
    order); a candidate recorded as ``{"skipped": reason}`` (step 2) is not one."""
    fitted = {name: f for name, f in figures.items() if "skipped" not in f}
    if not fitted:
        raise GroupSizeError("auto could fit none of its candidates: " +
                             "; ".join(f"{name}: {f['skipped']}" for name, f in figures.items()))
    kept = [name for name, f in fitted.items() if f["p_value"] >= ALPHA]
    if not kept:
        return min(fitted, key=lambda name: fitted[name]["clean_loss"])
    return max(kept, key=lambda name: fitted[name]["worst_group"])  # max keeps the first of equals
