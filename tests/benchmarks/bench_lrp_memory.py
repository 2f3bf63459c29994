"""Does an attribution run's memory grow with the samples explained? (issue 16: ResNet-18's RSS rose during
a 512-image run in docs/benchmarks.md, "Real data sets in"). ``attribute_dataset`` with EpsilonPlusFlat on the
zoo's ResNet-18 (random weights, drawn BatchNorm statistics) over ``--n`` random 3 × 224 × 224 inputs held in
memory (no decoding: the data path is measured by bench_decoding.py), in batches of ``--batch``, into a fresh
store; after every committed batch the process's RSS and its peak (``VmRSS``, ``VmHWM``) are printed. The
in-memory inputs themselves take n × 602 KB of the RSS from the start.

Run: python tests/benchmarks/bench_lrp_memory.py [--n 640] [--batch 16] [--store PATH]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from spray import zoo
from spray.attribution import AttributionRun, attribute_dataset
from spray.attribution.methods import get_method
from spray.data import model_hash


def memory_mib() -> tuple[int, int]:
    """(RSS, peak RSS) of this process in MiB."""
    values = {line.split(":")[0]: int(line.split()[1]) // 1024 for line in Path("/proc/self/status").open()
              if line.startswith(("VmRSS", "VmHWM"))}
    return values["VmRSS"], values["VmHWM"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=640)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--store", default=None, help="store path (default: a temporary directory's)")
    args = parser.parse_args()
    if args.n < 2 * args.batch:
        parser.error("--n must hold at least two batches: the first sets the peak, later ones show growth")
    torch.manual_seed(0)
    model = zoo.randomize_batch_norms(zoo.resnet18(num_classes=10)).eval()
    data = TensorDataset(torch.rand(args.n, 3, 224, 224), torch.randint(0, 10, (args.n,)))
    start = time.perf_counter()
    rows: list[tuple[int, int, int]] = []

    def report(_start: int, stop: int) -> None:
        rss, peak = memory_mib()
        rows.append((stop, rss, peak))
        print(f"{stop:6d} samples  {time.perf_counter() - start:7.1f} s  RSS {rss:6d} MiB  peak {peak:6d} MiB",
              flush=True)

    with tempfile.TemporaryDirectory() as folder:
        store = args.store or str(Path(folder) / "memory.h5")
        attribute_dataset(store, model, data, AttributionRun(
            get_method("epsilon_plus_flat"), model_hash=model_hash(model), model_name="zoo resnet18",
            dataset_name="random 224", batch_size=args.batch, progress=False, overwrite=True, on_batch=report))
    first, last = rows[0], rows[-1]
    later = [rss for _, rss, _ in rows[1:]]
    print(f"peak after the first batch {first[2]} MiB, at the end {last[2]} MiB; RSS after later batches "
          f"{min(later)}-{max(later)} MiB")


if __name__ == "__main__":
    main()
