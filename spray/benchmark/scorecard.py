"""The scorecard: scored cases aggregated over seeds, as typed rows, JSON, a text table and an HTML page.

One :class:`Row` per split × artifact × prevalence × architecture; rates carry a Wilson interval, means a
Student-t interval over the seeds (docs/benchmark.md, "Metrics"). One :class:`Detection` per split ×
architecture × ranking summarises detection over every case where the model uses its artifact.
"""

from __future__ import annotations

import datetime
import os
import platform
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from itertools import groupby
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined

from spray import __version__
from spray.benchmark.baseline import BASELINES
from spray.benchmark import metrics
from spray.benchmark.faithfulness import ORDERINGS
from spray.benchmark.metrics import (mean_interval, meets_cav_target, meets_f1_target, meets_targets,
                                     shortcut_target_met, wilson)
from spray.benchmark.run import STAGES, CaseResult
from spray.clarc.cluster import ClusterSpec
from spray.outputs import active


@dataclass(frozen=True)
class Rate:
    """``k`` of ``n`` with its 95 % Wilson interval [low, high]."""

    k: int
    n: int
    low: float
    high: float

    @classmethod
    def of(cls, k: int, n: int) -> Rate:
        return cls(k, n, *wilson(k, n))

    def __str__(self) -> str:
        return f"{self.k}/{self.n} [{self.low:.2f}, {self.high:.2f}]" if self.n else "-"


@dataclass(frozen=True)
class Estimate:
    """The mean of ``n`` per-seed values with its 95 % Student-t interval [low, high]."""

    mean: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float | None]) -> Estimate | None:
        found = mean_interval(values)
        return cls(*found) if found else None

    def __str__(self) -> str:
        return f"{self.mean:.2f} [{self.low:.2f}, {self.high:.2f}]"


@dataclass(frozen=True)
class BaselineRow:
    """One baseline over a row's seeds: the poisoned class's rank, how often it ranked first, its group's F1."""

    rank: Estimate | None
    first: Rate
    f1: Estimate | None


@dataclass(frozen=True)
class CorrectionRow:
    """One correction method over a row's seeds: accuracy with the artifact everywhere, clean accuracy,
    (the two-class set) worst-group and balanced accuracy, (a local artifact) the relevance density inside the
    true masks, and the corrected class's TCAV score and mean |directional derivative|, original and corrected;
    what the correction cost (``seconds``, its training); how many seeds it refused, how many it corrected a
    class no test flagged (``--cluster top`` with no class flagged), and ``met``: of the seeds whose model uses
    its artifact, how many it corrected to the accuracy targets (:func:`spray.benchmark.metrics.meets_targets`,
    the two-class set's by its balanced accuracy; a refusal is a miss); ``fixed``: of those seeds whose original
    model misses the targets, how many it corrected to them on the poisoned class (:func:`_fixed`); ``cleared``: of
    the seeds that corrected the poisoned class while it was flagged, how many lost the flag when audited again
    (:func:`_cleared`); ``by_contender``: of those cleared, how many by one of auto's later contenders
    (:func:`_by_contender`)."""

    everywhere_before: Estimate | None
    everywhere_after: Estimate | None
    clean_before: Estimate | None
    clean_after: Estimate | None
    worst_group_before: Estimate | None
    worst_group_after: Estimate | None
    balanced_before: Estimate | None
    balanced_after: Estimate | None
    density_before: Estimate | None
    density_after: Estimate | None
    tcav_before: Estimate | None
    tcav_after: Estimate | None
    tcav_magnitude_before: Estimate | None
    tcav_magnitude_after: Estimate | None
    seconds: Estimate | None
    refused: int
    unflagged: int
    met: Rate
    fixed: Rate
    cleared: Rate
    by_contender: Rate


@dataclass(frozen=True)
class Row:
    """One cell of the grid over its seeds (docs/benchmark.md defines each field)."""

    split: str
    artifact: str
    prevalence: float
    architecture: str
    seeds: int
    clean_accuracy: Estimate | None
    worst_group_accuracy: Estimate | None
    balanced_accuracy: Estimate | None
    uses: Rate
    rank: Estimate | None
    first: Rate
    flagged: Rate
    precision: Estimate | None
    recall: Estimate | None
    f1: Estimate | None
    cav_auroc: Estimate | None
    clean_flags: Rate
    relevance_density: Estimate | None
    iou: Estimate | None
    baselines: dict[str, BaselineRow] = field(default_factory=dict)
    corrections: dict[str, CorrectionRow] = field(default_factory=dict)
    aopc: dict[str, Estimate | None] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    peak_rss_mib: dict[str, float] = field(default_factory=dict)


def _baseline(planted: list[CaseResult], name: str) -> BaselineRow:
    found = [r.baselines[name] for r in planted if name in r.baselines]
    return BaselineRow(Estimate.of([b["rank"] for b in found]), Rate.of(sum(b["rank"] == 1 for b in found), len(found)),
                       Estimate.of([b["f1"] for b in found]))


def _correction(results: list[CaseResult], method: str) -> CorrectionRow:
    found = [r.corrections[method] for r in results if method in r.corrections]

    def pair(key: str, i: int) -> Estimate | None:
        return Estimate.of([c[key][i] for c in found if c[key] is not None])

    return CorrectionRow(pair("everywhere", 0), pair("everywhere", 1), pair("clean", 0), pair("clean", 1),
                         pair("worst_group", 0), pair("worst_group", 1), pair("balanced", 0), pair("balanced", 1),
                         pair("density", 0), pair("density", 1), pair("tcav", 0), pair("tcav", 1),
                         pair("tcav_magnitude", 0), pair("tcav_magnitude", 1),
                         Estimate.of([c["training_seconds"] for c in found]),
                         sum(c["error"] is not None for c in found), sum(c["flagged"] is False for c in found),
                         _count(results, method, _met), _count(results, method, _fixed),
                         _count(results, method, _cleared), _count(results, method, _by_contender))


def _count(results: list[CaseResult], method: str, judge: Callable[[CaseResult, str], bool | None]) -> Rate:
    """How many of ``results`` ``judge`` (:func:`_met`, :func:`_fixed`) holds for ``method``, of those it applies
    to."""
    judged = [j for j in (judge(r, method) for r in results) if j is not None]
    return Rate.of(sum(judged), len(judged))


def _met(result: CaseResult, method: str) -> bool | None:
    """Whether ``method``'s correction of ``result`` meets the accuracy targets (a refusal does not; the two-class
    set's by its balanced accuracy); None where they do not apply: no artifact the model uses, the method not
    run."""
    correction = result.corrections.get(method)
    if not result.uses_artifact or correction is None:
        return None
    return correction["error"] is None and meets_targets(correction["clean"], correction["everywhere"],
                                                         correction["balanced"])


def _fixed(result: CaseResult, method: str) -> bool | None:
    """Whether ``method`` corrected ``result`` to the accuracy targets (:func:`_met`) by correcting a cluster of
    the poisoned class; None where :func:`_met` is, and where the original model already meets the targets'
    shortcut half (:func:`~spray.benchmark.metrics.shortcut_target_met`: a two-class set balanced before). A
    "met" that is not "fixed" is nominal: nothing needed correcting, or another class was corrected."""
    met = _met(result, method)
    if met is None or shortcut_target_met(result.clean_accuracy, result.everywhere_accuracy,
                                          result.balanced_accuracy):
        return None
    cluster = result.corrections[method]["cluster"]
    return met and ClusterSpec.parse(cluster).label == result.case.poisoned_class


def _cleared(result: CaseResult, method: str) -> bool | None:
    """Whether ``method``'s correction of ``result`` cleared the poisoned class's flag: the class, flagged in the
    original audit, is not flagged when audited again with the corrected model (spray.clarc.verify, issue 18's
    closed loop); None where the poisoned class was not the one corrected while flagged (a refusal, an unflagged
    class, a clean class corrected: its flag is a false one, and clearing it says nothing of the shortcut)."""
    correction = result.corrections.get(method)
    verification = None if correction is None else correction.get("verification")
    if verification is None or verification["verdict"] == "not flagged" or \
            ClusterSpec.parse(correction["cluster"]).label != result.case.poisoned_class:
        return None
    return verification["verdict"] == "cleared"


def _by_contender(result: CaseResult, method: str) -> bool | None:
    """Whether the flag :func:`_cleared` found cleared was cleared by a refit other than the first, one of auto's
    later contenders (spray.clarc.auto, rule step 7); None where it was not cleared."""
    if not _cleared(result, method):
        return None
    return result.corrections[method]["verification"]["refits"] > 1


def _row(results: list[CaseResult], methods: list[str]) -> Row:
    case = results[0].case
    planted = [r for r in results if not r.case.is_control]

    def mean_cost(costs: str) -> dict[str, float]:
        return {s: sum(getattr(r, costs).get(s, 0.0) for r in results) / len(results) for s in STAGES}

    return Row(
        split=case.split, artifact=case.artifact, prevalence=case.prevalence, architecture=case.architecture,
        seeds=len(results), clean_accuracy=Estimate.of([r.clean_accuracy for r in results]),
        worst_group_accuracy=Estimate.of([r.worst_group_accuracy for r in results]),
        balanced_accuracy=Estimate.of([r.balanced_accuracy for r in results]),
        uses=Rate.of(sum(bool(r.uses_artifact) for r in planted), len(planted)),
        rank=Estimate.of([r.rank for r in planted]),
        first=Rate.of(sum(r.rank == 1 for r in planted), len(planted)),
        flagged=Rate.of(sum(r.flagged for r in planted), len(planted)),
        precision=Estimate.of([r.precision for r in planted]), recall=Estimate.of([r.recall for r in planted]),
        f1=Estimate.of([r.f1 for r in planted]), cav_auroc=Estimate.of([r.cav_auroc for r in planted]),
        clean_flags=Rate.of(sum(r.clean_flags for r in results), sum(r.clean_classes for r in results)),
        relevance_density=Estimate.of([r.relevance_density for r in planted]),
        iou=Estimate.of([r.iou for r in planted]),
        baselines={name: _baseline(planted, name) for name in BASELINES},
        corrections={method: _correction(results, method) for method in methods},
        aopc={o: Estimate.of([r.aopc[o] for r in results if r.aopc]) for o in ORDERINGS},
        seconds=mean_cost("seconds"), cpu_seconds=mean_cost("cpu_seconds"),
        peak_rss_mib={s: max(r.peak_rss_mib.get(s, 0.0) for r in results) for s in STAGES},
    )


RANKINGS = ("combined", "pixel", "concept", "activation_max")
"""The rankings a case is scored on: the ranked analyses together (the result's own detection fields,
spray.benchmark.run.RANKED), each analysis alone."""


@dataclass(frozen=True)
class Detection:
    """One ranking's detection over the cases of a split and an architecture, every artifact, prevalence and seed
    pooled: ``cases`` where the model uses its artifact (the targets), how many of them rank the poisoned
    class first and flag it, the mean F1 of the named group with its Student-t interval over those cases, how
    many meet issue 17's F1 target (``f1_target``: of the local artifacts' cases, flagged and named with
    :func:`~spray.benchmark.metrics.meets_f1_target`'s F1) and its CAV retrieval target (``cav_target``, every
    case: :func:`~spray.benchmark.metrics.meets_cav_target`), and the flags on clean classes over every case of
    the split (the controls and the cases without a used artifact included)."""

    split: str
    architecture: str
    ranking: str
    cases: int
    first: Rate
    flagged: Rate
    f1: Estimate | None
    f1_target: Rate
    cav_target: Rate
    clean_flags: Rate
    prevalence: float | None = None
    """The prevalence of the cases pooled (:attr:`Scorecard.detection_by_prevalence`); None: every prevalence."""


@dataclass(frozen=True)
class CorrectionSummary:
    """One correction method over the cases of a split and an architecture, every artifact, prevalence and seed
    pooled: ``met``, of the cases whose model uses its artifact, how many the method corrected to the accuracy
    targets (:func:`_met`); ``fixed``, of those whose original model misses them, how many it corrected to them on
    the poisoned class (:func:`_fixed`); ``cleared``, of the cases (any case) that corrected the poisoned class
    while it was flagged, how many lost the flag when audited again with the corrected model (:func:`_cleared`);
    ``by_contender``, of those, how many by one of auto's later contenders (:func:`_by_contender`)."""

    split: str
    architecture: str
    method: str
    met: Rate
    fixed: Rate
    cleared: Rate
    by_contender: Rate
    prevalence: float | None = None
    """As :attr:`Detection.prevalence`."""


def _scores(result: CaseResult, ranking: str) -> dict[str, Any] | None:
    """A case's detection fields under ``ranking`` (:data:`RANKINGS`); None where the case was not scored on it."""
    if ranking == "combined":
        return {"rank": result.rank, "flagged": result.flagged, "f1": result.f1, "cav_auroc": result.cav_auroc,
                "clean_flags": result.clean_flags, "clean_classes": result.clean_classes}
    return getattr(result, ranking)


def _detection(results: list[CaseResult], ranking: str, prevalence: float | None = None) -> Detection | None:
    scored = [_scores(r, ranking) for r in results]
    if any(s is None for s in scored):
        return None
    used = [(s, r.case) for s, r in zip(scored, results) if r.uses_artifact]
    local = [meets_f1_target(s["f1"], s["flagged"], case.prevalence) for s, case in used if not case.is_global]
    case = results[0].case
    return Detection(case.split, case.architecture, ranking, len(used),
                     Rate.of(sum(s["rank"] == 1 for s, _ in used), len(used)),
                     Rate.of(sum(bool(s["flagged"]) for s, _ in used), len(used)),
                     Estimate.of([s["f1"] for s, _ in used]), Rate.of(sum(local), len(local)),
                     Rate.of(sum(meets_cav_target(s["cav_auroc"], c.is_global) for s, c in used), len(used)),
                     Rate.of(sum(s["clean_flags"] for s in scored), sum(s["clean_classes"] for s in scored)),
                     prevalence)


def _correction_summary(results: list[CaseResult], method: str,
                        prevalence: float | None = None) -> CorrectionSummary:
    """``method``'s :class:`CorrectionSummary` over ``results`` (one split and architecture; one ``prevalence``
    or, None, every one)."""
    case = results[0].case
    return CorrectionSummary(case.split, case.architecture, method, _count(results, method, _met),
                             _count(results, method, _fixed), _count(results, method, _cleared),
                             _count(results, method, _by_contender), prevalence)


def _group_key(result: CaseResult) -> tuple:
    case = result.case
    return case.split, case.artifact, case.prevalence, case.architecture


def machine() -> str:
    """The CPU's model name (/proc/cpuinfo) and the number of CPUs this process may use."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
    except OSError:
        pass
    return f"{name}, {len(os.sched_getaffinity(0))} CPUs"


@dataclass
class Scorecard:
    """The scored cases and their rows (development split first), with how they were made (``meta``)."""

    results: list[CaseResult]
    meta: dict[str, Any]
    rows: list[Row] = field(init=False)
    detection: list[Detection] = field(init=False)
    """Per split × architecture, one entry per ranking the cases were scored on (:data:`RANKINGS`)."""
    corrections: list[str] = field(init=False)
    """The correction methods of the results, in the order they first appear: one column each."""
    correction_summary: list[CorrectionSummary] = field(init=False)
    """Per split × architecture, one entry per correction method."""
    detection_by_prevalence: list[Detection] = field(init=False)
    """Per split × architecture × prevalence of the planted cases (the controls apart), the combined ranking's
    entry: issue 17's targets differ by prevalence, and a pooled rate hides where they are missed."""
    correction_by_prevalence: list[CorrectionSummary] = field(init=False)
    """The same groups' entries, one per correction method."""

    def __post_init__(self) -> None:
        self.corrections = list(dict.fromkeys(m for r in self.results for m in r.corrections))
        ordered = sorted(self.results, key=lambda r: (r.case.split != "dev", *_group_key(r)))
        self.rows = [_row(list(group), self.corrections) for _, group in groupby(ordered, key=_group_key)]
        model = sorted(ordered, key=lambda r: (r.case.split != "dev", r.case.architecture))  # stable: rows' order
        by_model = [list(g) for _, g in groupby(model, key=lambda r: (r.case.split, r.case.architecture))]
        self.detection = [d for group in by_model for d in (_detection(group, k) for k in RANKINGS) if d]
        self.correction_summary = [_correction_summary(group, method)
                                   for group in by_model for method in self.corrections]
        planted = sorted((r for r in model if not r.case.is_control),
                         key=lambda r: (r.case.split != "dev", r.case.architecture, r.case.prevalence))
        by_prevalence = [list(g) for _, g in groupby(planted, key=lambda r: (r.case.split, r.case.architecture,
                                                                             r.case.prevalence))]
        self.detection_by_prevalence = [d for group in by_prevalence
                                        for d in [_detection(group, "combined", group[0].case.prevalence)] if d]
        self.correction_by_prevalence = [_correction_summary(group, method, group[0].case.prevalence)
                                         for group in by_prevalence for method in self.corrections]

    @classmethod
    def made(cls, results: list[CaseResult], **meta: Any) -> Scorecard:
        """A scorecard whose ``meta`` adds the spray version, the machine and the UTC time to ``meta``."""
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        return cls(results, {"spray": __version__, "machine": machine(), "date": now, **meta})

    def to_dict(self) -> dict[str, Any]:
        """``spray benchmark --json``: ``meta``, ``rows`` (aggregates), ``detection``, ``correction_summary`` and
        their per-prevalence entries, ``detection_by_prevalence`` and ``correction_by_prevalence`` (the summaries),
        and ``cases`` (each scored case)."""
        return {"meta": self.meta, "rows": [asdict(r) for r in self.rows],
                "detection": [asdict(d) for d in self.detection],
                "correction_summary": [asdict(c) for c in self.correction_summary],
                "detection_by_prevalence": [asdict(d) for d in self.detection_by_prevalence],
                "correction_by_prevalence": [asdict(c) for c in self.correction_by_prevalence],
                "cases": [r.to_dict() for r in self.results]}

    def table(self) -> str:
        """The rows as aligned text, one block per split."""
        header = ["split", "artifact", "prev", "arch", "seeds", "clean acc", "worst group", "uses", "rank",
                  "ranked first", "flagged", "F1", "CAV AUROC", "clean-class flags", "density", "IoU",
                  *(f"{b} {what}" for b in BASELINES for what in ("rank", "F1")),
                  *(f"{m} everywhere before -> after" for m in self.corrections), "AOPC LRP", "AOPC GxI",
                  "AOPC rand", "s/case", "CPU s/case", "peak RSS MiB"]
        return _aligned([header] + [_cells(row, self.corrections) for row in self.rows])

    def summary(self) -> str:
        """:attr:`detection` as aligned text: per split, architecture and ranking, over the cases where the model
        uses its artifact, rank 1 and flagged as k/n with their Wilson interval, the named group's mean F1 with its
        Student-t interval; flags on the clean classes of every case; then the combined ranking's per prevalence
        (:attr:`detection_by_prevalence`). Then, where corrections ran, :attr:`correction_summary`: the targets met
        per split, architecture and method, and per prevalence (:attr:`correction_by_prevalence`)."""
        tables = [[SUMMARY_HEADER, *map(_detection_cells, self.detection)]]
        if self.detection_by_prevalence:
            tables.append([PREVALENCE_SUMMARY_HEADER, *map(_detection_cells, self.detection_by_prevalence)])
        if self.correction_summary:
            tables.append([CORRECTION_HEADER, *map(_correction_cells, self.correction_summary)])
            tables.append([PREVALENCE_CORRECTION_HEADER, *map(_correction_cells, self.correction_by_prevalence)])
        return "\n\n".join(_aligned([list(line) for line in table]) for table in tables)

    def html(self) -> str:
        """The scorecard as one self-contained HTML page in the report's style."""
        environment = Environment(loader=PackageLoader("spray.benchmark", "templates"), autoescape=True,
                                  undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
        return environment.get_template("scorecard.html").render(
            meta=self.meta, header=_html_header(self.corrections),
            rows=[(r, _cells(r, self.corrections)) for r in self.rows],
            summary_header=SUMMARY_HEADER, summary=[_detection_cells(d) for d in self.detection],
            prevalence_header=PREVALENCE_SUMMARY_HEADER,
            prevalence_summary=[_detection_cells(d) for d in self.detection_by_prevalence],
            correction_header=CORRECTION_HEADER,
            corrections=[_correction_cells(c) for c in self.correction_summary],
            prevalence_correction_header=PREVALENCE_CORRECTION_HEADER,
            prevalence_corrections=[_correction_cells(c) for c in self.correction_by_prevalence],
            spray_version=__version__, targets=metrics, percent=lambda share: f"{share:.0%}".replace("%", " %"),
            points=lambda share: f"{share * 100:.0f}",
        )

    def write_html(self, path: str | Path) -> Path:
        """Write :meth:`html` to ``path`` through the active output guard (a page spray wrote is replaced)."""
        text = self.html()
        return active().write(path, "benchmark scorecard", lambda tmp: tmp.write_text(text, encoding="utf-8"),
                              report=True)


SUMMARY_HEADER = ("split", "arch", "ranking", "cases", "ranked first", "flagged", "F1 of the named group",
                  "F1 target met (local)", "CAV AUROC target met", "flags on clean classes")


PREVALENCE_SUMMARY_HEADER = ("split", "arch", "prevalence (combined ranking)", *SUMMARY_HEADER[3:])


CORRECTION_HEADER = ("split", "arch", "correction", "runs (the model uses its artifact)", "targets met",
                     "runs the original misses", "fixed on the poisoned class",
                     "runs on the flagged poisoned class", "flag cleared on re-audit", "of these by a later contender")


PREVALENCE_CORRECTION_HEADER = ("split", "arch", "prevalence", *CORRECTION_HEADER[2:])


def _correction_cells(c: CorrectionSummary) -> list[str]:
    where = [] if c.prevalence is None else [f"{c.prevalence:.0%}"]
    return [c.split, c.architecture, *where, c.method, str(c.met.n), str(c.met), str(c.fixed.n), str(c.fixed),
            str(c.cleared.n), str(c.cleared), str(c.by_contender)]


def _detection_cells(d: Detection) -> list[str]:
    return [d.split, d.architecture, d.ranking if d.prevalence is None else f"{d.prevalence:.0%}", str(d.cases),
            str(d.first), str(d.flagged), "-" if d.f1 is None else str(d.f1), str(d.f1_target), str(d.cav_target),
            str(d.clean_flags)]


def _aligned(lines: list[list[str]]) -> str:
    """Rows of cells as text, each column padded to its widest cell."""
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)


def _html_header(corrections: list[str]) -> list[str]:
    return ["split", "artifact", "prevalence", "architecture", "seeds", "clean accuracy", "worst-group accuracy",
            "uses the artifact", "rank", "ranked first", "flagged", "F1", "CAV AUROC", "flags on clean classes",
            "relevance density", "artifact mask IoU",
            *(f"{b} baseline {what}" for b in BASELINES for what in ("rank", "F1")),
            *(f"{m}: everywhere accuracy, before → after" for m in corrections), "AOPC LRP",
            "AOPC gradient × input", "AOPC random", "seconds per case", "CPU seconds per case", "peak RSS, MiB"]


def _cells(row: Row, corrections: list[str]) -> list[str]:
    def est(value: Estimate | None) -> str:
        return "-" if value is None else str(value)

    def correction(c: CorrectionRow) -> str:
        cell = "-" if c.everywhere_before is None else f"{est(c.everywhere_before)} -> {est(c.everywhere_after)}"
        if c.worst_group_before is not None:
            cell += (f" (worst group {est(c.worst_group_before)} -> {est(c.worst_group_after)}, balanced "
                     f"{est(c.balanced_before)} -> {est(c.balanced_after)})")
        if c.density_before is not None:
            cell += f" (density {est(c.density_before)} -> {est(c.density_after)})"
        if c.tcav_before is not None:
            cell += (f" (TCAV {est(c.tcav_before)} -> {est(c.tcav_after)}, |dd| {est(c.tcav_magnitude_before)} -> "
                     f"{est(c.tcav_magnitude_after)})")
        if c.seconds is not None:
            cell += f" ({c.seconds.mean:.0f} s)"
        if c.met.n:
            cell += f" (targets met {c.met.k}/{c.met.n}, fixed {c.fixed.k}/{c.fixed.n})"
        if c.cleared.n:
            cell += f" (flag cleared {c.cleared.k}/{c.cleared.n}"
            cell += f", {c.by_contender.k} by a later contender)" if c.by_contender.k else ")"
        return (cell + (f" ({c.refused} refused)" if c.refused else "")
                + (f" ({c.unflagged} of an unflagged class)" if c.unflagged else ""))

    return [row.split, row.artifact, f"{row.prevalence:.0%}", row.architecture, str(row.seeds),
            est(row.clean_accuracy), est(row.worst_group_accuracy), str(row.uses), est(row.rank), str(row.first),
            str(row.flagged), est(row.f1), est(row.cav_auroc), str(row.clean_flags), est(row.relevance_density),
            est(row.iou),
            *(cell for b in BASELINES for cell in (est(row.baselines[b].rank), est(row.baselines[b].f1))),
            *(correction(row.corrections[m]) for m in corrections), *(est(row.aopc[o]) for o in ORDERINGS),
            f"{sum(row.seconds.values()):.0f}", f"{sum(row.cpu_seconds.values()):.0f}",
            f"{max(row.peak_rss_mib.values()):.0f}"]
