"""How often auto's step 5 decides on a few validation samples: its recorded choices in cached cases.

Issue 18: rule step 5 (spray.clarc.auto) ships the candidate with the best validation worst group, and records
beside it the group's size and the close call (a cheaper candidate the guard kept, beaten by one sample or less of
the smaller worst group). For every cached case scored with ``--clarc auto`` this script reads the auto record of
the corrected cluster (``clarc/auto_*/result.json``; no model is loaded) and prints the candidates in listed order
with their worst groups and guard p, the chosen one, the close call and the verification's verdict; then how many
records chose each method, how many chose on a worst group under ``--small`` samples, and how many were close calls.

Run:  python tests/benchmarks/bench_auto_choices.py CACHE [CACHE ...] [--small 10] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from spray.clarc.auto import ALPHA
from spray.clarc.groups import WorstGroup
from spray.clarc.run import run_name


def records(cache: Path) -> list[tuple[str, dict, dict]]:
    """``(case directory, scored case, auto record)`` of every case in ``cache`` whose latest ``--clarc auto``
    scorecard entry corrected a cluster."""
    found = []
    for directory in sorted(p for p in cache.iterdir() if p.is_dir()):
        scored = sorted(directory.glob("result-v*-auto.json"), key=lambda p: int(p.name.split("-")[1][1:]))
        if not scored:
            continue
        case = json.loads(scored[-1].read_text(encoding="utf-8"))
        cluster = (case.get("corrections", {}).get("auto") or {}).get("cluster")
        record = directory / "clarc" / run_name("auto", cluster) / "result.json" if cluster else None
        if record is not None and record.is_file():
            found.append((directory.name, case, json.loads(record.read_text(encoding="utf-8"))["params"]["auto"]))
    return found


def candidate_text(name: str, figures: dict, chosen: str) -> str:
    mark = "*" if name == chosen else ""
    if figures.get("skipped"):
        return f"{mark}{name} skipped"
    worst = WorstGroup(figures["worst_group_name"], figures["worst_group_correct"], figures["worst_group_size"])
    return f"{mark}{name} {worst}{'' if figures['p_value'] >= ALPHA else ' (guard)'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("caches", nargs="+", type=Path, help="benchmark cache directories (spray benchmark --cache)")
    parser.add_argument("--small", type=int, default=10, help="a worst group under this many samples is small")
    parser.add_argument("--json", type=Path, help="also write the per-case rows here")
    args = parser.parse_args()
    rows = []
    for cache in args.caches:
        for name, case, auto in records(cache):
            chosen = auto["candidates"][auto["chosen"]]
            row = {"case": name, "uses": case.get("uses_artifact"), "kind": auto["kind"], "chosen": auto["chosen"],
                   "worst_group_size": chosen["worst_group_size"], "close_call": auto["close_call"],
                   "verdict": (case["corrections"]["auto"].get("verification") or {}).get("verdict")}
            rows.append(row)
            print(f"{name}: {auto['kind']}; " + " | ".join(candidate_text(n, auto["candidates"][n], auto["chosen"])
                                                          for n in auto["listed"])
                  + f"; close call {auto['close_call']}; {row['verdict']}", flush=True)
    methods = Counter(r["chosen"].split("/")[0] for r in rows)
    print(f"{len(rows)} auto records: chose " + ", ".join(f"{m} {k}" for m, k in methods.most_common())
          + f"; on a worst group under {args.small} samples {sum(r['worst_group_size'] < args.small for r in rows)}"
          + f"; close calls {sum(r['close_call'] is not None for r in rows)}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
