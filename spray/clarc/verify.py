"""Close the loop: audit the flagged class again with the corrected model and say whether its group is gone.

After a correction, the samples of the flagged cluster's class (as the original analysis holds them) are
attributed with the corrected model as the original audit attributed them, and analysed with the original
analysis's pipeline, into ``<run dir>/verify-<model hash>.h5`` (resumable like any audit: attributions
resume, analysis nodes are memoised; a store per corrected model, so a changed correction never meets a
stale one). Where the cluster was named by a ranking over several analyses of the store (pixel-level,
concept-level, activations: :func:`spray.ranking.rank_analyses`), each of them that analyses *relevance* is
repeated for the class, with its own attribution (input heatmaps, latent relevance), and the class ranked over
them together. The class's new best clusters then replace its old ones in that ranking, and the class is ranked
and flagged again against the other classes *as the original audit scored them*
(:func:`spray.ranking.replace_class`).

Why relevance only (:func:`verification_analyses`): an analysis of activations (``activation_max``) says what the
model *sees* — an artifact in the image raises the first feature map's channels whether or not the decision rests
on it — and a correction of the decision leaves it standing (P-ClArC does not touch the layers before the one it
projects). Such an analysis finds groups relevance scatters, but whether a group is *gone from the decision* only
relevance can say. A class that only an activation analysis flagged is therefore "not flagged" here: no analysis
of the decision found it, so there is no flag of the decision to clear.

Why only the flagged class: the flag asks whether this class stands out from the others, and a full
re-audit of every class costs what the audit's attribution and analysis cost, ten times the flagged
class's share on the demo (whose verification adds about 4 s of CPU to a 56 s ClArC step: docs/clarc.md);
``fda_rank`` (``--fda-rank``) runs that full re-audit when asked.
A correction that changes the other classes' explanations too is compared with their original figures.

The result, :class:`Verification`: the class's standing before and after (rank, flag, outlier score, and
its best cluster's ncut, z-score and τ), and how much of the old cluster still forms a cluster: the best F1
of any cluster of any clustering of the new analysis against the old members. ``failed`` — the class is
still flagged — is reported as such (``spray clarc`` and ``spray run`` exit 3: docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn
from torch.utils.data import Dataset, Subset

from spray.attribution.latent import reads_activations
from spray.clarc.cluster import ClusterMembers
from spray.clarc.evaluate import FdaSetup, reaudit
from spray.data.models import model_hash
from spray.errors import BadInputError
from spray.ranking import RankedClass, best_of, rank_found, replace_class
from spray.results import ClassBest, analysis_summary, read_class
from spray.store import AuditStore


NOT_REAUDITED = "not in the re-audit"
"""Why a class has no standing after its re-audit when none of its samples was analysed: the corrected model's
explanations of it are all zero (a head whose output for the class does not depend on the features; the analysis
leaves all-zero heatmaps out), or a store grouped by prediction put none of them under it."""


@dataclass(frozen=True)
class Standing:
    """A class's place in a ranking: ``rank`` (1 = most suspicious; None: not ranked), ``flagged``,
    ``outlier`` (robust standard score against the other classes), and its best cluster (``cluster``,
    ``CLASS:CLUSTERING:ID``) with that cluster's ``ncut``, ``z_score`` and ``tau``; ``skipped``: why the
    class has no best cluster; ``analysis``: the analysis whose entry the ranking took (None: not ranked)."""

    rank: int | None
    flagged: bool
    outlier: float | None
    cluster: str | None
    ncut: float | None
    z_score: float | None
    tau: float | None
    skipped: str | None
    analysis: str | None = None

    @classmethod
    def of(cls, entry: RankedClass | None) -> Standing:
        if entry is None:
            return cls(None, False, None, None, None, None, None, "not ranked")
        best = entry.cluster
        return cls(entry.rank, entry.flagged, entry.outlier, None if best is None else best.reference,
                   entry.ncut, entry.z_score, None if best is None else best.tau, entry.skipped, entry.analysis)


@dataclass(frozen=True)
class Verification:
    """Is the flagged group gone after the correction? (see the module docstring)

    ``label``, ``cluster``: the corrected class and cluster (of analysis ``cluster_analysis``); ``before``,
    ``after``: the class's :class:`Standing` in the original audit and after the corrected model's re-audit of
    the class, ranked over ``analyses`` (:func:`verification_analyses`); ``match``: the cluster of any of them,
    audited again (``match_analysis``), that best matches the old cluster's ``n_members`` members, ``match_f1``
    its F1 against them (0.0 and None when the class has no clusters); ``store``: the re-audit's store.
    """

    label: int
    cluster: str
    n_members: int
    before: Standing
    after: Standing
    match: str | None
    match_f1: float
    store: str
    analyses: tuple[str, ...] = ()
    cluster_analysis: str | None = None
    match_analysis: str | None = None

    @property
    def failed(self) -> bool:
        """The class is still flagged after the correction, or the re-audit could not see it (:attr:`unverified`):
        either way the correction is not shown to have removed the group."""
        return self.after.flagged or self.unverified

    @property
    def unverified(self) -> bool:
        """The re-audit analysed none of the class's samples (:data:`NOT_REAUDITED`): no group can stand out of
        explanations that are all zero, so "not flagged" would prove nothing."""
        return self.after.skipped == NOT_REAUDITED

    @property
    def verdict(self) -> str:
        """``"cleared"`` (flagged before, not after), ``"not cleared"`` (still flagged), ``"not verified"`` (the
        re-audit could not see the class: :attr:`unverified`) or ``"not flagged"`` (flagged neither before nor
        after: the cluster was chosen by hand, or only an analysis of activations flagged its class)."""
        if self.unverified:
            return "not verified"
        if self.failed:
            return "not cleared"
        return "cleared" if self.before.flagged else "not flagged"

    @property
    def separability_dropped(self) -> bool | None:
        """The class's best cluster is less separable than before: a larger cut, or, where either cut is
        missing, a smaller z-score (the ranking's keys, in its order); True for a class now without one, None
        where the re-audit could not see the class."""
        if self.unverified:
            return None
        if self.after.skipped is not None:
            return True
        before, after = self.before, self.after
        if before.ncut is not None and after.ncut is not None:
            return after.ncut > before.ncut
        if before.z_score is not None and after.z_score is not None:
            return after.z_score < before.z_score
        return None

    @property
    def cluster_unjudged(self) -> bool:
        """The corrected cluster's analysis was not among those judged: it reads activations (the module
        docstring), so the verdict is the relevance analyses'."""
        return self.cluster_analysis is not None and self.cluster_analysis not in self.analyses

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable (``--json``, the run's record): the fields, ``verdict``, ``failed``,
        ``separability_dropped`` and ``cluster_unjudged``."""
        return {**asdict(self), "verdict": self.verdict, "failed": self.failed, "unverified": self.unverified,
                "separability_dropped": self.separability_dropped, "cluster_unjudged": self.cluster_unjudged}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Verification:
        fields = {k: data[k] for k in ("label", "cluster", "n_members", "match", "match_f1", "store")}
        later = {k: data.get(k) for k in ("cluster_analysis", "match_analysis")}  # records before 2026-12-06 lack
        return cls(**fields, before=Standing(**data["before"]), after=Standing(**data["after"]),
                   analyses=tuple(data.get("analyses", ())), **later)

    def summary(self) -> str:
        """Two lines for the command line: the verdict with rank and flag, then separability and match; a third
        where the corrected cluster's analysis read activations and was not judged (the module docstring)."""
        b, a = self.before, self.after
        several = len(self.analyses) > 1

        def num(value: float | None, form: str) -> str:
            return "-" if value is None else format(value, form)

        def where(cluster: str | None, analysis: str | None) -> str:  # which analysis, where several were ranked
            return f"{cluster or '-'} ({analysis})" if several and cluster else cluster or "-"

        head = (f"verification: class {self.label} {self.verdict.upper()} (flagged {_yes(b.flagged)} -> "
                f"{_yes(a.flagged)}, outlier {num(b.outlier, '.1f')} -> {num(a.outlier, '.1f')}, "
                f"rank {b.rank or '-'} -> {a.rank or '-'})")
        if self.unverified:
            body = ("  the re-audit analysed none of the class's samples: the corrected model's explanations of the "
                    "class are all zero, or none of its samples is grouped under it")
        elif a.skipped is not None:
            body = f"  after the correction the class has no candidate cluster ({a.skipped})"
        else:
            body = (f"  best cluster {where(b.cluster, b.analysis)} -> {where(a.cluster, a.analysis)}: ncut "
                    f"{num(b.ncut, '.3g')} -> {num(a.ncut, '.3g')}, z {num(b.z_score, '.1f')} -> "
                    f"{num(a.z_score, '.1f')}, tau {num(b.tau, '.3g')} -> {num(a.tau, '.3g')}; the {self.n_members} "
                    f"old members' best match {where(self.match, self.match_analysis)}, F1 {self.match_f1:.2f}")
        lines = [head, body]
        if self.cluster_unjudged:
            lines.append(f"  judged on the relevance analyses {', '.join(self.analyses)}: the cluster's analysis "
                         f"{self.cluster_analysis!r} reads activations, which a correction of the decision need not "
                         "change")
        return "\n".join(lines)


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def best_match(members: np.ndarray, dataset_index: np.ndarray, clusterings: dict[str, np.ndarray],
               label: int) -> tuple[str | None, float]:
    """The cluster (``CLASS:CLUSTERING:ID``) of ``clusterings`` (labels aligned with ``dataset_index``;
    -1 = noise, no cluster) that best matches ``members`` (dataset indices), and its F1; (None, 0.0) if none
    overlaps them."""
    wanted = np.isin(dataset_index, members)
    best: tuple[str | None, float] = (None, 0.0)
    for name, labels in sorted(clusterings.items()):
        for cid in np.unique(labels[labels >= 0]):
            inside = labels == cid
            hit = int((inside & wanted).sum())
            f1 = 2 * hit / (int(inside.sum()) + len(members)) if hit else 0.0
            if f1 > best[1]:
                best = (f"{label}:{name}:{int(cid)}", f1)
    return best


def verification_store(out_dir: str | Path, corrected: nn.Module) -> Path:
    """Where the re-audit of ``corrected`` goes: ``out_dir/verify-<model hash>.h5``."""
    return Path(out_dir) / f"verify-{model_hash(corrected)[:12]}.h5"


def verification_analyses(store: AuditStore, analyses: Sequence[str]) -> tuple[str, ...]:
    """Those of ``analyses`` (of the ranking that named a cluster) that a verification repeats and ranks: the ones
    whose attribution is relevance, not activations (the module docstring); a BadInputError where none is, before
    a correction is trained that could not be verified."""
    judged = tuple(a for a in analyses
                   if not reads_activations(store.attribution_info(analysis_summary(store, a)["attribution"])))
    if not judged:
        raise BadInputError(
            f"cannot verify a correction on analysis {', '.join(map(repr, analyses))} of {store.path}: it reads "
            "activations, which show what the model sees, not what its decision rests on; analyse the store's "
            "relevance too (e.g. `spray analyze` with pipelines/spray.toml), or run without --verify")
    return judged


def verify_correction(store_path: str | Path, corrected: nn.Module, dataset: Dataset, members: ClusterMembers,
                      out_dir: str | Path, *, analyses: Sequence[str] | None = None,
                      progress: bool = False) -> Verification:
    """Audit the class of ``members`` (the corrected cluster, read from the audit store at ``store_path``)
    again with ``corrected`` and compare (see the module docstring). ``dataset``: the audited data;
    ``out_dir``: where the re-audit's store goes (the run directory); ``analyses``: those of the ranking that
    named the cluster (default: the cluster's own analysis), of which the relevance analyses are judged."""
    label = members.spec.label
    with AuditStore(store_path) as opened:
        judged = verification_analyses(opened, analyses or (members.analysis,))
        found = best_of(opened, judged)
    index = np.sort(np.concatenate([members.artifact, members.rest]))
    store = verification_store(out_dir, corrected)
    samples = Subset(dataset, index.tolist())
    for analysis in judged:
        reaudit(corrected, FdaSetup(Path(store_path), samples, store.parent, analysis), name=store.stem,
                progress=progress)
    matches: list[tuple[float, str, str | None]] = [(0.0, judged[0], None)]
    with AuditStore(store) as opened:
        replacements = {a: _in_dataset(next((c for c in classes if c.label == label), None), label, index)
                        for a, classes in best_of(opened, judged).items()}
        for analysis in (a for a in judged if replacements[a].skipped is None):
            analysed = read_class(opened, analysis, label)
            cluster, f1 = best_match(members.artifact, index[analysed.dataset_index], analysed.clusterings, label)
            matches.append((f1, analysis, cluster))
    f1, match_analysis, match = max(matches, key=lambda m: m[0])  # the first of equals: the ranking's order
    after = replace_class(found, replacements).of(label)
    return Verification(label, str(members.spec), len(members.artifact), Standing.of(rank_found(found).of(label)),
                        Standing.of(after), match, f1, str(store), judged, members.analysis,
                        match_analysis if match else None)


def _in_dataset(again: ClassBest | None, label: int, index: np.ndarray) -> ClassBest:
    """The class's best cluster in the re-audit with its members as indices of the audited dataset (the
    re-audit's are positions in ``index``, the class's samples); a class missing from the re-audit (a store
    grouped by prediction: its samples came out as other classes) is skipped."""
    if again is None:
        return ClassBest(label, str(label), len(index), None, NOT_REAUDITED, None)
    if again.cluster is None:
        return again
    return replace(again, cluster=replace(again.cluster, members=tuple(int(index[i]) for i in again.cluster.members)))
