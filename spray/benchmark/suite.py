"""The whole benchmark as ``spray benchmark`` runs it: choose the grid, run its cases, write the scorecard."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from spray.benchmark.cases import ARTIFACTS, CONTROL, MIN_PLANTED, PREVALENCES, grid, planted_count, size_for
from spray.benchmark.run import CaseResult, run_benchmark
from spray.benchmark.scorecard import Scorecard
from spray.outputs import active

QUICK_ARTIFACTS = ("patch_fixed", CONTROL)
QUICK_PREVALENCES = (0.3,)


def benchmark(*, cases: list[str] | None = None, quick: bool = False, seeds: int = 3, source: str = "mnist",
              cache: str | Path = "storage/benchmark-cache", out: str | Path = "storage/benchmark",
              on_case: Callable[[int, int, CaseResult], None] | None = None) -> tuple[Scorecard, Path]:
    """Run the grid of ``cases`` (artifact kinds; default: all, or :data:`QUICK_ARTIFACTS` with ``quick``)
    on both splits with ``seeds`` seeds each, at the prevalences whose planted count reaches
    ``MIN_PLANTED`` for the size (``quick``: :data:`QUICK_PREVALENCES`); write ``scorecard.html`` and
    ``scorecard.json`` into ``out``. ``on_case(i, total, result)`` after each case. Returns the scorecard
    and the HTML page's path."""
    kinds = list(cases) if cases is not None else list(QUICK_ARTIFACTS if quick else ARTIFACTS)
    size = size_for(source, quick)
    prevalences = tuple(p for p in (QUICK_PREVALENCES if quick else PREVALENCES)
                        if planted_count(p, size) >= MIN_PLANTED)
    chosen = grid(kinds, prevalences, seeds)
    guard = active()
    directory = guard.directory(out, "benchmark output directory")  # refused before hours of work, not after
    results = run_benchmark(chosen, cache, size, source=source,
                            on_case=None if on_case is None else lambda i, r: on_case(i, len(chosen), r))
    command = " ".join(["spray benchmark", *(["--quick"] if quick else []),
                        *(["--cases", ",".join(kinds)] if cases is not None else []),
                        "--seeds", str(seeds), "--data", source])
    card = Scorecard.made(results, command=command, size=str(size),
                          prevalences=", ".join(f"{p:.0%}" for p in prevalences))
    text = json.dumps(card.to_dict(), indent=2) + "\n"
    guard.write(directory / "scorecard.json", "benchmark scorecard (JSON)",
                lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return card, card.write_html(directory / "scorecard.html")
