"""Damaged text in an audit store: do the readers hang? (issue 7; docs/bad-input.md, "Fuzzing").

Builds the fuzz base store of tests/test_store_fuzz.py twice: as this spray writes it (fixed-length text)
and with its text rewritten as variable-length strings, as spray wrote stores before (their text lies in
HDF5 global heap collections, signature ``GCOL``). Counts the heap collections of each, then writes
``--n`` copies of each with 1-4 bit flips aimed at the bytes that hold text (the heap collections of the
old form; the attribute values and text datasets of the new one) and runs every reader of the fuzz test
(``spray info``, ``info --json``, ``rank --json``, the AuditStore API) over them in child processes with a
per-file timeout. Prints, per form: files read cleanly or with a spray error, other exceptions, crashes,
hangs.

    python tests/benchmarks/bench_heap_damage.py --n 300 --seed 0
    python tests/benchmarks/bench_heap_damage.py --n 500 --old-store OLD.h5   # the base an earlier spray wrote

To build OLD.h5 with an earlier spray: ``git archive <commit> spray tests/test_store_fuzz.py | tar -x -C DIR``
and run ``build_base`` of DIR/tests/test_store_fuzz.py with ``PYTHONPATH=DIR``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from spray.store import rewrite_text_variable_length  # noqa: E402
from tests.test_store_fuzz import FILE_TIMEOUT, build_base  # noqa: E402

FUZZ_CHILD = ROOT / "tests" / "test_store_fuzz.py"


def heap_ranges(data: bytes) -> list[tuple[int, int]]:
    """Byte ranges of the global heap collections: "GCOL", version, 3 reserved bytes, 8-byte size."""
    ranges, at = [], data.find(b"GCOL")
    while at >= 0:
        size = int.from_bytes(data[at + 8 : at + 16], "little")
        ranges.append((at, min(len(data), at + max(16, size))))
        at = data.find(b"GCOL", at + 4)
    return ranges


def text_ranges(path: Path, data: bytes) -> list[tuple[int, int]]:
    """Byte ranges where the file holds the bytes of its fixed-length text values (attributes, datasets)."""
    values: list[bytes] = []
    with h5py.File(path, "r") as f:
        def visit(name: str, obj) -> None:
            for key in obj.attrs:
                string = h5py.check_string_dtype(obj.attrs.get_id(key).dtype)
                if string is not None and string.length is not None:
                    values.append(bytes(obj.attrs[key]))
            if isinstance(obj, h5py.Dataset) and h5py.check_string_dtype(obj.dtype) is not None:
                values.extend(bytes(v) for v in np.ravel(obj[()]))

        visit("/", f)
        f.visititems(visit)
    ranges = []
    for value in {v for v in values if len(v) >= 4}:
        at = data.find(value)
        while at >= 0:
            ranges.append((at, at + len(value)))
            at = data.find(value, at + 1)
    return ranges


def corrupt_copies(data: bytes, ranges: list[tuple[int, int]], n: int, directory: Path, seed: int) -> list[Path]:
    """``n`` copies of ``data``, each with 1-4 bit flips at positions drawn from ``ranges``."""
    rng = np.random.default_rng(seed)
    positions = np.concatenate([np.arange(lo, hi) for lo, hi in ranges])
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        copy = bytearray(data)
        for position in rng.choice(positions, size=int(rng.integers(1, 5))):
            copy[position] ^= 1 << int(rng.integers(0, 8))
        path = directory / f"{i}.h5"
        path.write_bytes(copy)
        paths.append(path)
    return paths


def read_all(paths: list[Path]) -> dict[str, list[str]]:
    """Run the fuzz readers over ``paths`` in children; files by outcome (a dead child restarts after the
    file it died on)."""
    outcome: dict[str, list[str]] = {"clean or spray error": [], "other exception": [], "crash": [], "hang": []}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    queue = [[str(p) for p in paths]]
    while queue:
        files = queue.pop()
        if not files:
            continue
        result = subprocess.run([sys.executable, str(FUZZ_CHILD), *files], capture_output=True, text=True, env=env)
        if result.returncode == 0:
            for path, problems in json.loads(result.stdout.splitlines()[-1]).items():
                outcome["other exception" if problems else "clean or spray error"].append(path)
            continue
        last = [line.split(" ", 1)[1] for line in result.stderr.splitlines() if line.startswith("FILE ")][-1]
        outcome["hang" if "Timeout" in result.stderr else "crash"].append(last)
        at = files.index(last)
        queue += [files[:at], files[at + 1 :]]  # the files before it are read again: their results were lost
    return outcome


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=300, help="corrupted copies per form")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the corrupted files (printed directory)")
    parser.add_argument("--old-store", type=Path, help="the old form: this store (e.g. the fuzz base built by an "
                        "earlier spray) instead of this spray's base with its text rewritten")
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="heap-damage-"))
    print(f"load average at start: {os.getloadavg()}; per-file timeout {FILE_TIMEOUT} s", flush=True)
    base = build_base(directory)
    old = directory / "old.h5"
    shutil.copyfile(args.old_store or base.path, old)
    if args.old_store is None:
        rewrite_text_variable_length(old)
    for form, path in (("fixed-length text (this spray)", base.path), ("variable-length text (before)", old)):
        data = path.read_bytes()
        heaps = heap_ranges(data)
        targets = heaps or text_ranges(path, data)
        aimed = "heap collections" if heaps else "text values"
        print(f"\n{form}: {len(data)} bytes, {len(heaps)} global heap collections (GCOL), "
              f"flips aimed at {aimed} ({sum(hi - lo for lo, hi in targets)} bytes)", flush=True)
        start, cpu = time.monotonic(), resource.getrusage(resource.RUSAGE_CHILDREN)
        outcome = read_all(corrupt_copies(data, targets, args.n, directory / path.stem, args.seed))
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        for what, files in outcome.items():
            names = f"  e.g. {', '.join(Path(f).name for f in files[:5])}" if files and what != "clean or spray error" else ""
            print(f"  {what:22s} {len(files):4d}{names}")
        print(f"  {time.monotonic() - start:.0f} s wall, "
              f"{after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime:.0f} s CPU", flush=True)
    print(f"\nload average at end: {os.getloadavg()}")
    if args.keep:
        print(f"files kept in {directory}")
    else:
        shutil.rmtree(directory)


if __name__ == "__main__":
    main()
