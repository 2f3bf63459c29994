"""``spray benchmark``: planted shortcuts with ground truth, scored through spray's whole chain.

cases.py (the grid: :class:`Case`, artifact parameters per split, the poisoned data and its ground truth)
-> artifacts.py (the artifacts and their per-pixel masks) and backgrounds.py (the Waterbirds-like two-class set)
on data.py (digits that ship in wheels) -> models.py (architectures) -> run.py (train, attribute, analyse, rank,
the corrections, score, baseline.py's baselines; cached, resumable)
-> metrics.py (the definitions) -> scorecard.py (aggregates over seeds: JSON, table, HTML). docs/benchmark.md.
"""

from __future__ import annotations

from spray.benchmark.cases import ARTIFACTS, CONTROL, PREVALENCES, Case, CaseData, Size, grid, make_case, size_for
from spray.benchmark.run import CaseResult, run_benchmark, run_case
from spray.benchmark.scorecard import Row, Scorecard

__all__ = [
    "ARTIFACTS",
    "CONTROL",
    "PREVALENCES",
    "Case",
    "CaseData",
    "CaseResult",
    "Row",
    "Scorecard",
    "Size",
    "grid",
    "make_case",
    "run_benchmark",
    "run_case",
    "size_for",
]
