"""The scorecard: scored cases aggregated over seeds, as typed rows, JSON, a text table and an HTML page.

One :class:`Row` per split × artifact × prevalence × architecture; rates carry a Wilson interval, means a
Student-t interval over the seeds (docs/benchmark.md, "Metrics").
"""

from __future__ import annotations

import datetime
import os
import platform
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from itertools import groupby
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined

from spray import __version__
from spray.benchmark.faithfulness import ORDERINGS
from spray.benchmark.metrics import mean_interval, wilson
from spray.benchmark.run import STAGES, CaseResult
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
class Row:
    """One cell of the grid over its seeds (docs/benchmark.md defines each field)."""

    split: str
    artifact: str
    prevalence: float
    architecture: str
    seeds: int
    clean_accuracy: Estimate | None
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
    baseline_rank: Estimate | None
    baseline_first: Rate
    baseline_f1: Estimate | None
    clarc_everywhere_before: Estimate | None
    clarc_everywhere_after: Estimate | None
    clarc_clean_before: Estimate | None
    clarc_clean_after: Estimate | None
    clarc_refused: int
    aopc: dict[str, Estimate | None] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def _row(results: list[CaseResult]) -> Row:
    case = results[0].case
    planted = [r for r in results if not r.case.is_control]

    def pair(key: str, i: int) -> Estimate | None:
        return Estimate.of([getattr(r, key)[i] for r in results if getattr(r, key) is not None])

    return Row(
        split=case.split, artifact=case.artifact, prevalence=case.prevalence, architecture=case.architecture,
        seeds=len(results), clean_accuracy=Estimate.of([r.clean_accuracy for r in results]),
        uses=Rate.of(sum(bool(r.uses_artifact) for r in planted), len(planted)),
        rank=Estimate.of([r.rank for r in planted]),
        first=Rate.of(sum(r.rank == 1 for r in planted), len(planted)),
        flagged=Rate.of(sum(r.flagged for r in planted), len(planted)),
        precision=Estimate.of([r.precision for r in planted]), recall=Estimate.of([r.recall for r in planted]),
        f1=Estimate.of([r.f1 for r in planted]), cav_auroc=Estimate.of([r.cav_auroc for r in planted]),
        clean_flags=Rate.of(sum(r.clean_flags for r in results), sum(r.clean_classes for r in results)),
        relevance_density=Estimate.of([r.relevance_density for r in planted]),
        iou=Estimate.of([r.iou for r in planted]),
        baseline_rank=Estimate.of([r.baseline_rank for r in planted]),
        baseline_first=Rate.of(sum(r.baseline_rank == 1 for r in planted), len(planted)),
        baseline_f1=Estimate.of([r.baseline_f1 for r in planted]),
        clarc_everywhere_before=pair("clarc_everywhere", 0), clarc_everywhere_after=pair("clarc_everywhere", 1),
        clarc_clean_before=pair("clarc_clean", 0), clarc_clean_after=pair("clarc_clean", 1),
        clarc_refused=sum(r.clarc_error is not None for r in results),
        aopc={o: Estimate.of([r.aopc[o] for r in results if r.aopc]) for o in ORDERINGS},
        seconds={s: sum(r.seconds.get(s, 0.0) for r in results) / len(results) for s in STAGES},
    )


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

    def __post_init__(self) -> None:
        ordered = sorted(self.results, key=lambda r: (r.case.split != "dev", *_group_key(r)))
        self.rows = [_row(list(group)) for _, group in groupby(ordered, key=_group_key)]

    @classmethod
    def made(cls, results: list[CaseResult], **meta: Any) -> Scorecard:
        """A scorecard whose ``meta`` adds the spray version, the machine and the UTC time to ``meta``."""
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        return cls(results, {"spray": __version__, "machine": machine(), "date": now, **meta})

    def to_dict(self) -> dict[str, Any]:
        """``spray benchmark --json``: ``meta``, ``rows`` (aggregates) and ``cases`` (each scored case)."""
        return {"meta": self.meta, "rows": [asdict(r) for r in self.rows],
                "cases": [r.to_dict() for r in self.results]}

    def table(self) -> str:
        """The rows as aligned text, one block per split."""
        header = ["split", "artifact", "prev", "seeds", "clean acc", "uses", "rank", "ranked first", "flagged",
                  "F1", "CAV AUROC", "clean-class flags", "density", "IoU", "baseline rank", "baseline first",
                  "baseline F1", "ClArC everywhere before -> after", "AOPC LRP", "AOPC GxI", "AOPC rand",
                  "s/case"]
        lines = [header] + [_cells(row) for row in self.rows]
        widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)

    def html(self) -> str:
        """The scorecard as one self-contained HTML page in the report's style."""
        environment = Environment(loader=PackageLoader("spray.benchmark", "templates"), autoescape=True,
                                  undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
        return environment.get_template("scorecard.html").render(
            meta=self.meta, header=_HTML_HEADER, rows=[(r, _cells(r)) for r in self.rows],
            spray_version=__version__,
        )

    def write_html(self, path: str | Path) -> Path:
        """Write :meth:`html` to ``path`` through the active output guard (a page spray wrote is replaced)."""
        text = self.html()
        return active().write(path, "benchmark scorecard", lambda tmp: tmp.write_text(text, encoding="utf-8"),
                              report=True)


_HTML_HEADER = ["split", "artifact", "prevalence", "seeds", "clean accuracy", "uses the artifact", "rank",
                "ranked first", "flagged", "F1", "CAV AUROC", "flags on clean classes", "relevance density",
                "artifact mask IoU", "baseline rank", "baseline ranked first", "baseline F1",
                "ClArC everywhere accuracy, before → after", "AOPC LRP", "AOPC gradient × input", "AOPC random",
                "seconds per case"]


def _cells(row: Row) -> list[str]:
    def est(value: Estimate | None) -> str:
        return "-" if value is None else str(value)

    clarc = "-" if row.clarc_everywhere_before is None else \
        f"{est(row.clarc_everywhere_before)} -> {est(row.clarc_everywhere_after)}"
    if row.clarc_refused:
        clarc += f" ({row.clarc_refused} refused)"
    return [row.split, row.artifact, f"{row.prevalence:.0%}", str(row.seeds), est(row.clean_accuracy),
            str(row.uses), est(row.rank), str(row.first), str(row.flagged), est(row.f1), est(row.cav_auroc),
            str(row.clean_flags), est(row.relevance_density), est(row.iou), est(row.baseline_rank),
            str(row.baseline_first), est(row.baseline_f1), clarc, *(est(row.aopc[o]) for o in ORDERINGS),
            f"{sum(row.seconds.values()):.0f}"]
