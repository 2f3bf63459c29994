"""The whole benchmark as ``spray benchmark`` runs it: choose the grid, run its cases, write the scorecard."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from spray.benchmark.cases import (ARTIFACTS, CONTROL, MIN_PLANTED, PREVALENCES, SPLITS, Size, check_splits, grid,
                                    planted_count, size_for)
from spray.benchmark.models import DEFAULT_ARCHITECTURES, check_architectures
from spray.benchmark.run import CLARC, CaseResult, check_corrections, run_benchmark
from spray.benchmark.scorecard import Scorecard
from spray.errors import BadInputError
from spray.outputs import active

QUICK_ARTIFACTS = ("patch_fixed", CONTROL)
QUICK_PREVALENCES = (0.3,)


def parse_prevalences(text: str, size: Size) -> tuple[float, ...]:
    """``--prevalences``: comma-separated shares, each in (0, 1) and planting at least ``MIN_PLANTED`` of the
    poisoned class's ``size.train_per_class`` training images; a BadInputError saying which is not."""
    values = []
    for part in text.split(","):
        try:
            value = float(part)
        except ValueError:
            raise BadInputError(f"--prevalences: {part.strip()!r} is not a number; give shares such as 0.1,0.3") \
                from None
        if not 0 < value < 1:
            raise BadInputError(f"--prevalences: {value:g} is outside (0, 1); a prevalence is the share of the "
                                "poisoned class's training images that carry the artifact")
        count = planted_count(value, size)
        if count < MIN_PLANTED:
            raise BadInputError(
                f"--prevalences: {value:g} plants {count} of the {size.train_per_class} training images of the "
                f"poisoned class at this size, fewer than the {MIN_PLANTED} a case needs; use at least "
                f"{MIN_PLANTED / size.train_per_class:.2f}"
            )
        values.append(value)
    return tuple(dict.fromkeys(values))


def benchmark(*, cases: list[str] | None = None, quick: bool = False, seeds: int = 3, source: str = "mnist",
              prevalences: str | None = None, corrections: tuple[str, ...] = CLARC,
              architectures: tuple[str, ...] = DEFAULT_ARCHITECTURES, splits: tuple[str, ...] = SPLITS,
              cache: str | Path = "storage/benchmark-cache", out: str | Path = "storage/benchmark",
              size: Size | None = None,
              on_case: Callable[[int, int, CaseResult], None] | None = None) -> tuple[Scorecard, Path]:
    """Run the grid of ``cases`` (artifact kinds; default: all, or :data:`QUICK_ARTIFACTS` with ``quick``)
    on each of ``splits`` (default: both) with ``seeds`` seeds each, at ``prevalences`` (``--prevalences`` text,
    checked by :func:`parse_prevalences`; default: those of :data:`PREVALENCES` whose planted count reaches
    ``MIN_PLANTED`` for the size, ``quick``: :data:`QUICK_PREVALENCES`), correcting with each of ``corrections``
    (spray.clarc.CORRECTIONS), on each of ``architectures`` (spray.benchmark.models); write ``scorecard.html``
    and ``scorecard.json`` into ``out``. ``size``: the case size (default: spray.benchmark.cases.size_for the data
    and the grid). ``on_case(i, total, result)`` after each case. Returns the scorecard and the HTML page's path."""
    kinds = list(cases) if cases is not None else list(QUICK_ARTIFACTS if quick else ARTIFACTS)
    size = size or size_for(source, quick)
    chosen_prevalences = parse_prevalences(prevalences, size) if prevalences is not None else tuple(
        p for p in (QUICK_PREVALENCES if quick else PREVALENCES) if planted_count(p, size) >= MIN_PLANTED)
    corrections = check_corrections(corrections)
    architectures = check_architectures(list(architectures))
    splits = check_splits(list(splits))
    chosen = grid(kinds, chosen_prevalences, seeds, architectures, splits)
    guard = active()
    directory = guard.directory(out, "benchmark output directory")  # refused before hours of work, not after
    results = run_benchmark(chosen, cache, size, source=source, corrections=corrections,
                            on_case=None if on_case is None else lambda i, r: on_case(i, len(chosen), r))
    command = " ".join(["spray benchmark", *(["--quick"] if quick else []),
                        *(["--cases", ",".join(kinds)] if cases is not None else []),
                        *(["--prevalences", prevalences] if prevalences is not None else []),
                        *(["--clarc", ",".join(corrections)] if corrections != CLARC else []),
                        *(["--architectures", ",".join(architectures)]
                          if architectures != DEFAULT_ARCHITECTURES else []),
                        *(["--splits", ",".join(splits)] if splits != SPLITS else []),
                        "--seeds", str(seeds), "--data", source])
    card = Scorecard.made(results, command=command, size=str(size),
                          prevalences=", ".join(f"{p:.0%}" for p in chosen_prevalences))
    text = json.dumps(card.to_dict(), indent=2) + "\n"
    guard.write(directory / "scorecard.json", "benchmark scorecard (JSON)",
                lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return card, card.write_html(directory / "scorecard.html")
