"""Close the loop: audit the flagged class again with the corrected model and say whether its group is gone.

After a correction, the samples of the flagged cluster's class (as the original analysis holds them) are
attributed with the corrected model as the original audit attributed them, and analysed with the original
analysis's pipeline, into ``<run dir>/verify-<model hash>.h5`` (resumable like any audit: attributions
resume, analysis nodes are memoised; a store per corrected model, so a changed correction never meets a
stale one). The class's new best cluster then replaces its old one in the original ranking, and the class
is ranked and flagged again against the other classes *as the original audit scored them*
(:func:`spray.ranking.replace_class`).

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

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn
from torch.utils.data import Dataset, Subset

from spray.clarc.cluster import ClusterMembers
from spray.clarc.evaluate import FdaSetup, reaudit
from spray.data.models import model_hash
from spray.ranking import RankedClass, class_best, rank_classes, replace_class
from spray.results import ClassBest, read_class
from spray.store import AuditStore


@dataclass(frozen=True)
class Standing:
    """A class's place in a ranking: ``rank`` (1 = most suspicious; None: not ranked), ``flagged``,
    ``outlier`` (robust standard score against the other classes), and its best cluster (``cluster``,
    ``CLASS:CLUSTERING:ID``) with that cluster's ``ncut``, ``z_score`` and ``tau``; ``skipped``: why the
    class has no best cluster."""

    rank: int | None
    flagged: bool
    outlier: float | None
    cluster: str | None
    ncut: float | None
    z_score: float | None
    tau: float | None
    skipped: str | None

    @classmethod
    def of(cls, entry: RankedClass | None) -> Standing:
        if entry is None:
            return cls(None, False, None, None, None, None, None, "not ranked")
        best = entry.cluster
        return cls(entry.rank, entry.flagged, entry.outlier, None if best is None else best.reference,
                   entry.ncut, entry.z_score, None if best is None else best.tau, entry.skipped)


@dataclass(frozen=True)
class Verification:
    """Is the flagged group gone after the correction? (see the module docstring)

    ``label``, ``cluster``: the corrected class and cluster; ``before``, ``after``: the class's
    :class:`Standing` in the original audit and after the corrected model's re-audit of the class;
    ``match``: the re-analysis's cluster that best matches the old cluster's ``n_members`` members,
    ``match_f1`` its F1 against them (0.0 and None when the class has no clusters); ``store``: the
    re-audit's store.
    """

    label: int
    cluster: str
    n_members: int
    before: Standing
    after: Standing
    match: str | None
    match_f1: float
    store: str

    @property
    def failed(self) -> bool:
        """The class is still flagged after the correction."""
        return self.after.flagged

    @property
    def verdict(self) -> str:
        """``"cleared"`` (flagged before, not after), ``"not cleared"`` (still flagged) or ``"not flagged"``
        (flagged neither before nor after: the cluster was chosen by hand)."""
        if self.failed:
            return "not cleared"
        return "cleared" if self.before.flagged else "not flagged"

    @property
    def separability_dropped(self) -> bool | None:
        """The class's best cluster is less separable than before: a larger cut, or, where either cut is
        missing, a smaller z-score (the ranking's keys, in its order); True for a class now without one."""
        if self.after.skipped is not None:
            return True
        before, after = self.before, self.after
        if before.ncut is not None and after.ncut is not None:
            return after.ncut > before.ncut
        if before.z_score is not None and after.z_score is not None:
            return after.z_score < before.z_score
        return None

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable (``--json``, the run's record): the fields, ``verdict``, ``failed`` and
        ``separability_dropped``."""
        return {**asdict(self), "verdict": self.verdict, "failed": self.failed,
                "separability_dropped": self.separability_dropped}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Verification:
        fields = {k: data[k] for k in ("label", "cluster", "n_members", "match", "match_f1", "store")}
        return cls(**fields, before=Standing(**data["before"]), after=Standing(**data["after"]))

    def summary(self) -> str:
        """Two lines for the command line: the verdict with rank and flag, then separability and match."""
        b, a = self.before, self.after

        def num(value: float | None, form: str) -> str:
            return "-" if value is None else format(value, form)

        head = (f"verification: class {self.label} {self.verdict.upper()} (flagged {_yes(b.flagged)} -> "
                f"{_yes(a.flagged)}, outlier {num(b.outlier, '.1f')} -> {num(a.outlier, '.1f')}, "
                f"rank {b.rank or '-'} -> {a.rank or '-'})")
        if a.skipped is not None:
            return f"{head}\n  after the correction the class has no candidate cluster ({a.skipped})"
        return (f"{head}\n  best cluster {b.cluster} -> {a.cluster}: ncut {num(b.ncut, '.3g')} -> "
                f"{num(a.ncut, '.3g')}, z {num(b.z_score, '.1f')} -> {num(a.z_score, '.1f')}, tau "
                f"{num(b.tau, '.3g')} -> {num(a.tau, '.3g')}; the {self.n_members} old members' best match "
                f"{self.match or '-'}, F1 {self.match_f1:.2f}")


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


def verify_correction(store_path: str | Path, corrected: nn.Module, dataset: Dataset, members: ClusterMembers,
                      out_dir: str | Path, *, progress: bool = False) -> Verification:
    """Audit the class of ``members`` (the corrected cluster, read from the audit store at ``store_path``)
    again with ``corrected`` and compare (see the module docstring). ``dataset``: the audited data;
    ``out_dir``: where the re-audit's store goes (the run directory)."""
    label = members.spec.label
    with AuditStore(store_path) as opened:
        original = rank_classes(opened, members.analysis)
    index = np.sort(np.concatenate([members.artifact, members.rest]))
    store = verification_store(out_dir, corrected)
    setup = FdaSetup(Path(store_path), Subset(dataset, index.tolist()), store.parent, members.analysis)
    ranking = reaudit(corrected, setup, name=store.stem, progress=progress)
    again = ranking.of(label)
    if again is None:  # the class's samples came out as other classes (a store grouped by prediction)
        replacement = ClassBest(label, str(label), len(index), None, "not in the re-audit", None)
    else:  # dataset indices of the re-audit are positions in the class's samples
        replacement = class_best(again)
        if replacement.cluster is not None:
            replacement = replace(replacement, cluster=replace(
                replacement.cluster, members=tuple(int(index[i]) for i in replacement.cluster.members)))
    after = replace_class(original, replacement).of(label)
    match: tuple[str | None, float] = (None, 0.0)
    if replacement.skipped is None:
        with AuditStore(store) as opened:
            analysed = read_class(opened, ranking.analysis, label)
        match = best_match(members.artifact, index[analysed.dataset_index], analysed.clusterings, label)
    return Verification(label, str(members.spec), len(members.artifact), Standing.of(original.of(label)),
                        Standing.of(after), match[0], match[1], str(store))
