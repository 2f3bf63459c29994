"""Load (issue 7): 8 reader processes (`spray info`, `spray rank`, report generation) on an audit store while
`spray analyze` rewrites its analysis; every read must succeed and see consistent data.

The writer alternates two pipelines that differ in k-means' seed and ``k_max`` and in the FDA permutation count
(A, B, A, ...), so each pass replaces every class's ``kmeans`` and ``fda`` nodes (and its ``status``) while
the readers read, and the two generations' ranking entries differ. Before the run the
same analyses are made on copies of the store: they give, per class, the node keys and the ranking entry of
generation A and of generation B. A read is *consistent* when

- ``info``: for every class, the (kmeans, fda) node keys are both A's or both B's (never one of each);
- ``rank``: every ranked class's entry (z, τ, p, clustering, cluster, size, members) equals A's or B's
  entry of that class; a class whose status is newer than its nodes is reported "analysis unfinished"
  (counted as *transient*, the documented in-between state, not a mix);
- ``report``: the HTML report is written and names every class (it ranks through ``rank_classes``).

Readers are long-lived processes calling the functions behind the CLI commands (so a latency is the read, not
Python's start-up); the writer is the real CLI, ``spray analyze --pipeline``, in a subprocess. Prints per kind:
reads, failures, inconsistent reads, latency median / 95th percentile / max, the CPU time of a read and the
time it slept waiting for locks (the store's only sleeps), and the writer's pass times with and without the
readers.

Run:  python tests/benchmarks/bench_concurrent_readers.py [--classes 10] [--per-class 300] [--passes 6]
      [--readers 8] [--pause 0.05]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

PIPELINE = """
[analysis]
name = "spray"
[preprocess]
grid = 16
[knn]
n_neighbors = 10
[spectral]
n_eigenpairs = 16
[kmeans]
k_min = 2
k_max = {k_max}
n_init = 1
random_state = {seed}
[fda]
n_permutations = {permutations}
"""
# The two pipelines the writer alternates: other k-means seeds, k_max and permutation nulls, so that the
# k-means labels, the FDA scores and the ranking entries of the two generations differ.
GENERATIONS = {"A": {"k_max": 8, "seed": 0, "permutations": 50}, "B": {"k_max": 9, "seed": 1, "permutations": 60}}
KINDS = ("info", "rank", "report")
ENTRY_KEYS = ("score", "tau", "p_value", "clustering", "cluster", "cluster_size", "members")
UNFINISHED = "analysis unfinished"


def _pipeline_file(folder: Path, generation: str) -> Path:
    path = folder / f"pipeline-{generation}.toml"
    path.write_text(PIPELINE.format(**GENERATIONS[generation]))
    return path


WRITER = """
import json, sys, time
waited = [0.0]
sleep = time.sleep
def counted(seconds):  # the store sleeps only while it waits for a lock
    waited[0] += seconds
    sleep(seconds)
time.sleep = counted
from spray.cli import main
code = main(["analyze", sys.argv[1], "--pipeline", sys.argv[2]])
print(json.dumps({"lock_wait": waited[0]}))
sys.exit(code)
"""


def _analyze(store: Path, pipeline: Path) -> tuple[float, float, str | None]:
    """``spray analyze STORE --pipeline FILE`` (the CLI's main) in a subprocess: (wall seconds, seconds it
    slept waiting for locks, its error message if it failed)."""
    tick = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", WRITER, str(store), str(pipeline)], capture_output=True, text=True)
    seconds = time.perf_counter() - tick
    if done.returncode:
        return seconds, float("nan"), (done.stderr.strip().splitlines() or ["?"])[-1]
    return seconds, json.loads(done.stdout.strip().splitlines()[-1])["lock_wait"], None


def _references(base: Path, folder: Path, pipelines: dict[str, Path]) -> dict[str, Any]:
    """Per generation: each class's (kmeans key, fda key) and ranking entry, from an analysed copy."""
    from spray.ranking import rank_classes
    from spray.store import AuditStore

    refs: dict[str, Any] = {"keys": {}, "entries": {}}
    for generation, pipeline in pipelines.items():
        copy = folder / f"reference-{generation}.h5"
        shutil.copy(base, copy)
        _analyze(copy, pipeline)
        with AuditStore(copy) as store:
            nodes = store.info()["analyses"]
            entries = rank_classes(store, "spray").to_json()  # compared as `spray rank --json` prints it
        refs["keys"][generation] = {
            str(e["class"]): [nodes[f"analyses/spray/{e['class']}/{n}"]["attrs"]["key"] for n in ("kmeans", "fda")]
            for e in entries
        }
        refs["entries"][generation] = {str(e["class"]): [e[k] for k in ENTRY_KEYS] for e in entries}
    return refs


def _check(kind: str, result: Any, refs: dict[str, Any]) -> tuple[bool, int, list[str]]:
    """(consistent, transient classes, generations seen) of one read's result."""
    generations = refs["keys"].keys()
    seen, transient = [], 0
    if kind == "info":
        nodes = result["analyses"]
        for label, pairs in refs["keys"]["A"].items():
            pair = [nodes[f"analyses/spray/{label}/{n}"]["attrs"]["key"] for n in ("kmeans", "fda")]
            match = [g for g in generations if refs["keys"][g][label] == pair]
            if not match:
                return False, 0, seen
            seen.append(match[0])
        return True, 0, seen
    if kind == "rank":
        for entry in result:
            label = str(entry["class"])
            if entry["skipped"] is not None and entry["skipped"].startswith(UNFINISHED):
                transient += 1
                continue
            values = json.loads(json.dumps([entry[k] for k in ENTRY_KEYS]))
            match = [g for g in generations if refs["entries"][g][label] == values]
            if len(match) > 1:
                match = ["A=B"]  # this class ranks the same in both generations
            if not match:
                return False, transient, seen
            seen.append(match[0])
        return len(result) == len(refs["entries"]["A"]), transient, seen
    html = result
    return all(f"class {label}" in html for label in refs["entries"]["A"]), 0, seen


def _reader(kind: str, store: str, refs: dict[str, Any], stop: str, out: str, pause: float) -> None:
    """Read ``kind`` in a loop until the file ``stop`` exists; write the log of reads to ``out`` (JSON)."""
    from spray.ranking import rank_classes
    from spray.report import build_report
    from spray.store import AuditStore

    report = Path(out).with_suffix(".html")
    log = []
    waited = [0.0]
    sleep = time.sleep

    def counted_sleep(seconds: float) -> None:  # the store sleeps only while it waits for a lock
        waited[0] += seconds
        sleep(seconds)

    time.sleep = counted_sleep
    pause_event = threading.Event()
    while not os.path.exists(stop):
        tick, cpu, waited[0] = time.perf_counter(), time.process_time(), 0.0
        try:
            if kind == "info":
                with AuditStore(store) as audit:
                    result: Any = audit.info()
            elif kind == "rank":
                with AuditStore(store) as audit:
                    result = rank_classes(audit, "spray").to_json()
            else:
                build_report(store, report)
                result = report.read_text(encoding="utf-8")
            seconds, cpu, lock_wait = time.perf_counter() - tick, time.process_time() - cpu, waited[0]
            consistent, transient, seen = _check(kind, result, refs)
            log.append({"ok": True, "seconds": seconds, "cpu": cpu, "lock_wait": lock_wait,
                        "consistent": consistent, "transient": transient,
                        "seen": sorted(set(seen)), "mixed_store": len(set(seen) - {"A=B"}) > 1})
        except Exception:  # noqa: BLE001 - a failed read is what this benchmark counts
            log.append({"ok": False, "seconds": time.perf_counter() - tick, "error": traceback.format_exc()})
        pause_event.wait(pause)
    Path(out).write_text(json.dumps(log))


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--per-class", type=int, default=300)
    parser.add_argument("--passes", type=int, default=6, help="analyze passes while the readers read")
    parser.add_argument("--readers", type=int, default=8)
    parser.add_argument("--pause", type=float, default=0.05, help="seconds each reader waits between reads")
    args = parser.parse_args()

    from spray.testing import make_heatmaps, write_store

    folder = Path(tempfile.mkdtemp(prefix="spray-readers-"))
    base = write_store(folder / "base.h5", make_heatmaps(n_per_class=args.per_class, n_classes=args.classes,
                                                         size=32, seed=11))
    pipelines = {g: _pipeline_file(folder, g) for g in GENERATIONS}
    refs = _references(base, folder, pipelines)
    differ = sum(refs["entries"]["A"][c] != refs["entries"]["B"][c] for c in refs["entries"]["A"])
    store = folder / "audit.h5"
    shutil.copy(base, store)
    alone = [_analyze(store, pipelines["A"])[0]]  # the readers start on a complete analysis A
    order = ["B", "A"] * args.passes
    alone += [_analyze(store, pipelines[g])[0] for g in order[:2]]  # pass times without readers
    print(f"store: {args.classes} classes x {args.per_class} heatmaps 32x32, {store.stat().st_size / 1e6:.1f} MB; "
          f"writer alone: first pass {alone[0]:.1f} s, re-analysis passes {alone[1]:.1f} s, {alone[2]:.1f} s; "
          f"ranking entries of generations A and B differ in {differ} of {args.classes} classes")

    stop = folder / "stop"
    kinds = [KINDS[i % len(KINDS)] for i in range(args.readers)]
    ctx = mp.get_context("spawn")
    readers = [ctx.Process(target=_reader, args=(k, str(store), refs, str(stop), str(folder / f"reader{i}.json"),
                                                 args.pause)) for i, k in enumerate(kinds)]
    for proc in readers:
        proc.start()
    time.sleep(5.0)  # let the readers import spray and start reading
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    tick = time.perf_counter()
    passes = []
    try:
        for generation in order[: args.passes]:
            passes.append(_analyze(store, pipelines[generation]))
            if passes[-1][2] is not None:
                break  # the writer failed: report it
    finally:
        busy = time.perf_counter() - tick
        stop.touch()
        for proc in readers:
            proc.join()
    used = resource.getrusage(resource.RUSAGE_CHILDREN)

    logs = {i: json.loads((folder / f"reader{i}.json").read_text()) for i in range(len(kinds))}
    print(f"writer with {args.readers} readers: {len(passes)} passes in {busy:.1f} s "
          f"({', '.join(f'{p:.1f}' for p, _, _ in passes)} s), waiting for locks "
          f"{', '.join(f'{w:.2f}' for _, w, _ in passes)} s; load average {os.getloadavg()[0]:.1f}; "
          f"CPU of writer passes and readers {used.ru_utime + used.ru_stime - before.ru_utime - before.ru_stime:.0f} s")
    for _, _, error in passes:
        if error:
            print(f"WRITER FAILED: {error}")
    print(f"{'kind':8} {'readers':>7} {'reads':>6} {'failed':>6} {'inconsistent':>12} {'transient':>9} "
          f"{'mixed A/B':>9} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} {'CPU p50':>8} {'lock wait p50/p95':>18}")
    errors = []
    for kind in KINDS:
        entries = [e for i, k in enumerate(kinds) if k == kind for e in logs[i]]
        ok = [e for e in entries if e["ok"]]
        errors += [e["error"] for e in entries if not e["ok"]]
        ms = [1e3 * e["seconds"] for e in ok]
        print(f"{kind:8} {kinds.count(kind):7d} {len(entries):6d} {len(entries) - len(ok):6d} "
              f"{sum(not e['consistent'] for e in ok):12d} {sum(e['transient'] > 0 for e in ok):9d} "
              f"{sum(e['mixed_store'] for e in ok):9d} {_percentile(ms, 50):8.0f} {_percentile(ms, 95):8.0f} "
              f"{max(ms, default=float('nan')):8.0f} {_percentile([1e3 * e['cpu'] for e in ok], 50):8.0f} "
              f"{_percentile([1e3 * e['lock_wait'] for e in ok], 50):9.0f}/"
              f"{_percentile([1e3 * e['lock_wait'] for e in ok], 95):.0f}")
    for error in errors[:3]:
        print(error)
    shutil.rmtree(folder)


if __name__ == "__main__":
    main()
