"""Detection benchmark: the benchmark's cached quick cases ranked again with this tree's ranking and flags.

`spray benchmark` caches every case's trained model and analysed audit store (docs/benchmark.md). A change
to the ranking or the flags (spray/ranking.py) changes no model, no attribution and no analysis node, so its
detection scores can be measured in seconds per case from those caches, without the ClArC corrections,
baselines and faithfulness scores a new scoring version of the benchmark would recompute. Per case: the model
(for whether it *uses* the artifact: accuracy with the artifact in every clean test image at least 5 points
under clean accuracy, as the scorecard decides), then ``rank_analyses(store, RANKED)`` (spray.benchmark.run
.RANKED: pixel-level, concept-level and the first feature map's max-pooled activations, ``activation_max``), the
two relevance analyses ranked without ``activation_max`` (``relevance``: the benchmark's ranking before it
joined) and each analysis alone, scored by the benchmark's own detection scoring (spray.benchmark.run): the
poisoned class's rank, its flag, the F1 and CAV AUROC of its named cluster, and the flags raised on clean
classes (every class of the control).

Prints one row per case, then per split and ranking: cases, ranked first and flagged among the cases whose
model uses the artifact, mean F1 there, false flags on clean classes (with a Wilson 95 % interval) and on
the controls. ``--seeds`` restricts the cases to some seeds, e.g. to report seeds never used while choosing
a rule apart from the ones that were.

Run:  python tests/benchmarks/bench_detection.py CACHE [CACHE ...] [--seeds 1,101] [--json OUT]
(a case found in several caches is taken from the first; cases whose store lacks an analysis are skipped
with the reason).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from spray.benchmark.cases import FULL, QUICK, Case, CaseData, Size, make_case
from spray.benchmark.data import load_images
from spray.benchmark.metrics import MIN_F1_SMALL
from spray.benchmark.models import build
from spray.benchmark.run import (ACTIVATION_MAX, ACTIVATION_MAX_PIPELINE, CONCEPT_PIPELINE, PIPELINE, RANKED,
                                 USES_MARGIN, _detect, case_directory, cav_features)
from spray.errors import BadInputError, StoreError
from spray.ranking import rank_analyses, rank_classes
from spray.store import AuditStore
from spray.training import accuracy

CASE_DIRECTORY = re.compile(r"(\w+)-p(\d\d)-(\w+)-s(\d+)-(dev|heldout)-[0-9a-f]{10}")
RANKINGS = ("combined", "relevance", "pixel", "concept", ACTIVATION_MAX)
PIPELINES = {"spray": PIPELINE, "concept": CONCEPT_PIPELINE, ACTIVATION_MAX: ACTIVATION_MAX_PIPELINE}
"""The pipeline text of each analysis of RANKED, as the benchmark analyses its stores."""


def cases(caches: list[Path], seeds: set[int] | None, size: Size = QUICK) -> list[tuple[Case, Path]]:
    """The cases of ``size`` (the quick grid's by default) with a model and a store in ``caches`` (first cache
    first), restricted to ``seeds``."""
    found: dict[str, tuple[Case, Path]] = {}
    for cache in caches:
        for directory in sorted(cache.iterdir()):
            match = CASE_DIRECTORY.fullmatch(directory.name)
            if not match or not (directory / "audit.h5").is_file() or not (directory / "model.pt").is_file():
                continue
            artifact, percent, architecture, seed, split = match.groups()
            case = Case(artifact, int(percent) / 100, architecture, int(seed), split)
            if (seeds is None or case.seed in seeds) and case.name not in found \
                    and case_directory(cache, case, size, "mnist") == directory:
                found[case.name] = (case, directory)
    return list(found.values())


def trained_model(case: Case, directory: Path, data: CaseData) -> torch.nn.Module:
    """The cached case's trained weights (``directory``/model.pt) in its architecture, in eval mode."""
    model = build(case.architecture, case.seed, len(data.label_names), data.train[0].shape[1])
    model.load_state_dict(torch.load(directory / "model.pt", map_location="cpu"))
    return model.eval()


def cached_model(case: Case, directory: Path, images: object,
                 size: Size = QUICK) -> tuple[CaseData, torch.nn.Module, bool | None]:
    """A cached case's data, its trained model (in eval mode) and whether the model *uses* its artifact
    (accuracy with the artifact in every clean test image at least USES_MARGIN under clean accuracy, as the
    scorecard decides; None on the control)."""
    data = make_case(case, images, size)
    model = trained_model(case, directory, data)
    if data.everywhere_test is None:
        return data, model, None
    clean = accuracy(model, data.dataset(data.clean_test))
    return data, model, clean - accuracy(model, data.dataset(data.everywhere_test)) >= USES_MARGIN


def detection_row(case: Case, data: CaseData, model: torch.nn.Module, uses: bool | None, rankings: dict) -> dict:
    """A case's row: its name, artifact, split, seed, ``uses``, and per ranking of ``rankings`` ({name: ranking})
    the benchmark's detection scoring of it (rank, flag, F1, CAV AUROC, clean-class flags)."""
    features = cav_features(model, data)
    return {"case": case.name, "artifact": case.artifact, "split": case.split, "seed": case.seed, "uses": uses,
            **{name: _detect(data, r, features)[1] for name, r in rankings.items()}}


def score(case: Case, directory: Path, images: object) -> dict:
    data, model, uses = cached_model(case, directory, images)
    with AuditStore(directory / "audit.h5", mode="r") as store:
        rankings = {"combined": rank_analyses(store, RANKED), "relevance": rank_analyses(store, ["spray", "concept"]),
                    "pixel": rank_classes(store, "spray"), "concept": rank_classes(store, "concept"),
                    ACTIVATION_MAX: rank_classes(store, ACTIVATION_MAX)}
    return detection_row(case, data, model, uses, rankings)


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson's 95 % interval of a proportion k / n."""
    if n == 0:
        return 0.0, 1.0
    p, d = k / n, 1 + z * z / n
    centre, half = (p + z * z / (2 * n)) / d, z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, centre - half), min(1.0, centre + half)


def summary(rows: list[dict], rankings: tuple[str, ...] | list[str] = RANKINGS) -> str:
    """Per split and ranking (``rankings``: keys of each row's scores): ranked first, flagged and mean F1 where
    the model uses its artifact, false flags on clean classes with their Wilson interval, and on controls."""
    lines = ["| split | ranking | cases | ranked first (uses) | flagged (uses) | mean F1 (uses) | "
             "false flags, clean classes [95 %] | controls |", "|---|---|---|---|---|---|---|---|"]
    for split in ("dev", "heldout"):
        here = [r for r in rows if r["split"] == split]
        if not here:
            continue
        used = [r for r in here if r["uses"]]
        for name in rankings:
            f1 = [r[name]["f1"] for r in used if r[name]["f1"] is not None]
            false = sum(r[name]["clean_flags"] for r in here)
            total = sum(r[name]["clean_classes"] for r in here)
            low, high = wilson(false, total)
            control = [r[name] for r in here if r["artifact"] == "control"]
            lines.append(
                f"| {split} | {name} | {len(here)} | {sum(r[name]['rank'] == 1 for r in used)}/{len(used)} | "
                f"{sum(r[name]['flagged'] for r in used)}/{len(used)} | "
                f"{sum(f1) / len(f1) if f1 else math.nan:.2f} | "
                f"{false}/{total} [{100 * low:.1f}, {100 * high:.1f} %] | "
                f"{sum(c['clean_flags'] for c in control)}/{sum(c['clean_classes'] for c in control)} |")
    return "\n".join(lines)


def setting_line(row: dict, settings: list[str] | tuple[str, ...]) -> str:
    """A case's row scored under each of ``settings`` as one line: its name, whether the model uses its artifact,
    and per setting the poisoned class's rank (``*``: flagged), F1 and the clean classes flagged."""
    return f"{row['case']} {'uses' if row['uses'] else '-'} " + " ".join(
        f"{s}: {row[s]['rank']}{'*' if row[s]['flagged'] else ''} F1 {_rounded(row[s]['f1'])} "
        f"({row[s]['clean_flags']} clean flagged)" for s in settings)


def setting_table(rows: list[dict], settings: list[str] | tuple[str, ...], heading: str,
                  extra: tuple[str, Callable[[list[dict], str], str]] | None = None) -> str:
    """Per split and setting (``settings``: keys of each row's scores, ``heading`` their column's name): ranked
    first, ranked first with F1 at least MIN_F1_SMALL, flagged and mean F1 where the model uses its artifact, false
    flags on clean classes with their Wilson interval, and an ``extra`` column (title, its cell from the split's
    rows and the setting)."""
    title, cell = extra if extra is not None else ("", None)
    lines = [f"| split | {heading} | ranked first (uses) | first, F1 >= {MIN_F1_SMALL} | flagged | mean F1 | "
             f"false flags [95 %] |{f' {title} |' if cell else ''}",
             "|---|---|---|---|---|---|---|" + "---|" * bool(cell)]
    for split in ("dev", "heldout"):
        here = [r for r in rows if r["split"] == split]
        used = [r for r in here if r["uses"]]
        for s in settings if here else ():
            first = [r for r in used if r[s]["rank"] == 1]
            false, total = (sum(r[s][k] for r in here) for k in ("clean_flags", "clean_classes"))
            low, high = wilson(false, total)
            lines.append(f"| {split} | {s} | {len(first)}/{len(used)} | "
                         f"{sum((r[s]['f1'] or 0) >= MIN_F1_SMALL for r in first)}/{len(used)} | "
                         f"{sum(r[s]['flagged'] for r in used)}/{len(used)} | "
                         f"{sum(r[s]['f1'] or 0 for r in used) / len(used) if used else math.nan:.2f} | "
                         f"{false}/{total} [{100 * low:.1f}, {100 * high:.1f} %] |"
                         + (f" {cell(here, s)} |" if cell else ""))
    return "\n".join(lines)


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def cached_case_arguments(description: str, options: dict[str, str] | None = None,
                          flags: dict[str, str] | None = None) -> tuple[argparse.Namespace, set[int] | None]:
    """The command line of the scripts that score cached cases again: the cache directories, ``--seeds`` (as a
    set; None: all), ``--json``, a script's own text ``options`` and on/off ``flags`` ({flag: help})."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("caches", nargs="+", type=Path, help="benchmark cache directories (spray benchmark --cache)")
    parser.add_argument("--seeds", help="comma-separated seeds to keep (default: all)")
    parser.add_argument("--json", type=Path, help="also write the per-case rows here")
    for flag, text in (options or {}).items():
        parser.add_argument(flag, help=text)
    for flag, text in (flags or {}).items():
        parser.add_argument(flag, action="store_true", help=text)
    args = parser.parse_args()
    return args, None if args.seeds is None else {int(s) for s in args.seeds.split(",")}


def sized_case_arguments(description: str, options: dict[str, str] | None = None
                         ) -> tuple[argparse.Namespace, set[int] | None, Size]:
    """:func:`cached_case_arguments` with ``--full`` (the caches hold full-size cases), and the size it names."""
    args, seeds = cached_case_arguments(description, options, {"--full": "the caches hold full-size cases"})
    return args, seeds, FULL if args.full else QUICK


def scored(caches: list[Path], seeds: set[int] | None, score: Callable[..., dict],
           size: Size = QUICK) -> Iterator[tuple[Case, dict]]:
    """``(case, score(case, directory, images))`` for every cached case of ``size`` (:func:`cases`); a case whose
    store is unfinished or older is skipped with the reason printed, and the others go on."""
    images = load_images("mnist")
    for case, directory in cases(caches, seeds, size):
        try:
            row = score(case, directory, images)
        except (BadInputError, StoreError) as exc:
            print(f"skipped {case.name}: {type(exc).__name__}: {exc}", flush=True)
            continue
        yield case, row


def work_copy(directory: Path, work: Path) -> Path:
    """The cached case ``directory``'s copy in ``work`` (its audit store and model), made once: scripts that write
    analyses into a store leave the cache as it is."""
    here = work / directory.name
    if not (here / "model.pt").exists():  # copied last: a store without it may be a torn copy
        here.mkdir(parents=True, exist_ok=True)
        for name in ("audit.h5", "model.pt"):
            shutil.copy(directory / name, here / name)
    return here


def print_rankings(rows: Iterator[tuple[Case, dict]], json_path: Path | None) -> None:
    """Print each scored case of ``rows`` (:func:`scored`, each row's rankings its dict-valued keys) as a line, then
    :func:`summary` over those rankings, and write the rows to ``json_path`` (None: not written)."""
    kept = []
    for case, row in rows:
        kept.append(row)
        print(f"{case.name}: uses {row['uses']}, " + ", ".join(
            f"{key} rank {row[key]['rank']}{' flagged' if row[key]['flagged'] else ''} F1 "
            f"{_rounded(row[key]['f1'])} clean flags {row[key]['clean_flags']}"
            for key in row if isinstance(row[key], dict)), flush=True)
    print(summary(kept, [key for key in kept[0] if isinstance(kept[0][key], dict)] if kept else []))
    if json_path:
        json_path.write_text(json.dumps(kept, indent=1) + "\n", encoding="utf-8")


def main() -> None:
    args, seeds = cached_case_arguments(__doc__.split("\n\n")[0])
    print_rankings(scored(args.caches, seeds, score), args.json)


if __name__ == "__main__":
    main()
