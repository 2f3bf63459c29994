"""Soak (issue 12): 8 reader processes (``spray info``, ``spray rank --json``, ``spray report``), each at one call
per second, for the whole of an ``attribute`` + ``analyze`` + ``clarc`` chain, against the same chain alone.

The chain is the real CLI, one process per step, on the demo's poisoned digits (``spray.demo:train_dataset``,
1257 images of 28 × 28, 10 classes) with the demo CNN at its seeded initial weights (no training: the chain's
store traffic is what is measured, not the audit's findings):

1. ``spray attribute`` (EpsilonPlusFlat, batches of ``--batch-size``): one write transaction per batch;
2. ``spray analyze`` (the built-in pipeline): one transaction per class;
3. ``spray clarc --cluster top --method aclarc --epochs E``: reads the store, fine-tunes, writes its result.

Every reader is a thread that starts a CLI process (``python -m spray.cli``: start-up included, as for a user)
once a second, or at once when the last call took longer; readers start with the chain, before the store
exists, and stop when it ends. A read fails when its exit code is not 0; failures are counted by kind, exit
code and the first line of stderr (pids, times and the run's folder replaced by placeholders).

The writer's lock waits are the store's own accounting (``AuditStore.lock_wait_s``: wall time spent in the
writers-first gate and in the retries on the file's lock), printed by each writing step on stderr with
``SPRAY_LOCK_STATS=1`` (docs/store.md, "Concurrency"). Target: < 10 % of the chain's wall time with readers.

Run:  python tests/benchmarks/bench_soak.py [--readers 8] [--period 1.0] [--batch-size 64] [--epochs 1]
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

KINDS = ("info", "rank", "report")
LOCK_STATS = re.compile(r"^spray: the writer of audit store .* waited ([0-9.]+) s for locks \(([0-9]+) waits\)$")
SPRAY = [sys.executable, "-m", "spray.cli"]


def _chain(folder: Path, batch_size: int, epochs: int) -> list[tuple[str, list[str]]]:
    store = str(folder / "audit.h5")
    model, data = "spray.demo:build_model", "spray.demo:train_dataset"
    return [
        ("attribute", ["attribute", "--model", model, "--data", data, "--store", store,
                       "--batch-size", str(batch_size)]),
        ("analyze", ["analyze", store]),
        ("clarc", ["clarc", store, "--cluster", "top", "--method", "aclarc", "--epochs", str(epochs),
                   "--model", model, "--data", data, "--out", str(folder / "clarc")]),
    ]


def _run_chain(steps: list[tuple[str, list[str]]]) -> list[dict[str, Any]]:
    """Each step as a CLI process: wall seconds, exit code, and the lock waits its writers reported."""
    env = {**os.environ, "SPRAY_LOCK_STATS": "1"}
    results = []
    for name, argv in steps:
        tick = time.perf_counter()
        done = subprocess.run([*SPRAY, *argv], capture_output=True, text=True, env=env)
        seconds = time.perf_counter() - tick
        stats = [LOCK_STATS.match(line) for line in done.stderr.splitlines()]
        stats = [m for m in stats if m]
        results.append({
            "step": name, "seconds": seconds, "rc": done.returncode,
            "lock_wait": sum(float(m[1]) for m in stats), "waits": sum(int(m[2]) for m in stats),
            "stores": len(stats),
            "error": None if done.returncode == 0 else (done.stderr.strip().splitlines() or ["?"])[-1],
        })
        if done.returncode:
            break
    return results


def _message(stderr: str, folder: Path) -> str:
    """The first line of stderr, with the run's folder, pids and times replaced by placeholders."""
    line = (stderr.strip().splitlines() or [""])[0]
    line = line.replace(str(folder), "DIR")
    line = re.sub(r"pid [0-9]+", "pid N", line)
    return re.sub(r"\(since [^)]*\)", "(since T)", line)


def _reader(kind: str, folder: Path, index: int, period: float, stop: threading.Event, log: list) -> None:
    store = str(folder / "audit.h5")
    argv = {"info": ["info", store], "rank": ["rank", store, "--json"],
            "report": ["report", store, "-o", str(folder / f"report-{index}.html")]}[kind]
    while not stop.is_set():
        tick = time.perf_counter()
        try:
            done = subprocess.run([*SPRAY, *argv], capture_output=True, text=True, timeout=300)
            rc, message = done.returncode, _message(done.stderr, folder) if done.returncode else ""
        except subprocess.TimeoutExpired:
            rc, message = None, "(no answer within 300 s)"
        log.append({"kind": kind, "seconds": time.perf_counter() - tick, "rc": rc, "message": message})
        stop.wait(max(0.0, period - (time.perf_counter() - tick)))


def _cpu() -> str:
    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (no lscpu)"
    model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("Model name")), "?")
    return f"{model}, {os.cpu_count()} logical CPUs visible"


def _chain_table(title: str, steps: list[dict[str, Any]]) -> None:
    print(f"\n{title}")
    print(f"  {'step':<10} {'wall s':>8} {'lock wait s':>12} {'waits':>6}  exit")
    for s in steps:
        print(f"  {s['step']:<10} {s['seconds']:8.1f} {s['lock_wait']:12.3f} {s['waits']:6d}  {s['rc']}"
              + (f"  {s['error']}" if s["error"] else ""))
    print(f"  {'chain':<10} {sum(s['seconds'] for s in steps):8.1f} {sum(s['lock_wait'] for s in steps):12.3f}"
          f" {sum(s['waits'] for s in steps):6d}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readers", type=int, default=8, help="reader threads, kinds in turn: info, rank, report")
    parser.add_argument("--period", type=float, default=1.0, help="seconds between one reader's calls")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()

    print(f"CPU: {_cpu()}; load average at start {os.getloadavg()[0]:.2f}")
    kinds = list(itertools.islice(itertools.cycle(KINDS), args.readers))
    with tempfile.TemporaryDirectory(prefix="spray-soak-") as tmp:
        alone_dir, soak_dir = Path(tmp, "alone"), Path(tmp, "soak")
        alone_dir.mkdir()
        soak_dir.mkdir()
        alone = _run_chain(_chain(alone_dir, args.batch_size, args.epochs))
        stop, log = threading.Event(), []
        threads = [threading.Thread(target=_reader, args=(kind, soak_dir, i, args.period, stop, log))
                   for i, kind in enumerate(kinds)]
        for thread in threads:
            thread.start()
        soak = _run_chain(_chain(soak_dir, args.batch_size, args.epochs))
        stop.set()
        for thread in threads:
            thread.join()
    print(f"load average at end {os.getloadavg()[0]:.2f}")

    _chain_table("writer alone", alone)
    _chain_table(f"writer with {args.readers} readers ({Counter(kinds)}), one call per {args.period:g} s each",
                 soak)
    wall_alone, wall = sum(s["seconds"] for s in alone), sum(s["seconds"] for s in soak)
    lock_wait = sum(s["lock_wait"] for s in soak)
    per_step = ", ".join(f"{a['step']} {s['seconds'] / a['seconds']:.2f}x" for a, s in zip(alone, soak))
    print(f"\nslowdown (chain wall with / without readers): {wall / wall_alone:.2f}x ({per_step})")
    print(f"writer's lock wait: {lock_wait:.3f} s = {100 * lock_wait / wall:.2f} % of its wall time "
          f"(target < 10 %: {'met' if lock_wait < 0.1 * wall else 'MISSED'})")

    print(f"\nreads: {len(log)} in {wall:.0f} s")
    print(f"  {'kind':<7} {'reads':>6} {'failed':>7} {'median s':>9} {'p95 s':>7} {'max s':>7}")
    for kind in KINDS:
        rows = [r for r in log if r["kind"] == kind]
        seconds = [r["seconds"] for r in rows] or [float("nan")]
        print(f"  {kind:<7} {len(rows):6d} {sum(r['rc'] != 0 for r in rows):7d} {np.median(seconds):9.2f}"
              f" {np.percentile(seconds, 95):7.2f} {max(seconds):7.2f}")
    failures = Counter((r["kind"], r["rc"], r["message"]) for r in log if r["rc"] != 0)
    print("\nfailures by message (kind, exit code, first line of stderr):")
    for (kind, rc, message), count in sorted(failures.items(), key=lambda item: (-item[1], item[0][0])):
        print(f"  {count:5d}  {kind:<7} exit {rc}  {message}")
    if not failures:
        print("  none")
    if any(s["rc"] for s in alone + soak):
        sys.exit(1)


if __name__ == "__main__":
    main()
