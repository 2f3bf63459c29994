"""Decoding image files vs explaining them (issue 16 #6): JPEGs of mixed sizes around 500 px, resized to 224.

Writes the largest ``--n`` of JPEGs (sides uniform in [400, 600), random noise, quality 90: the costliest
kind of JPEG to decode) into ``--dir`` once, then, with ``--threads`` torch threads in the explaining process
(DataLoader workers run with one, as torch sets them):

1. CPU seconds per sample, in this process, on the first ``--probe`` files: Pillow's decode (the decoding
   rule, spray/data/images.py), resize + crop (``--resize 256 --crop 224``), to float + normalise
   (``imagenet``), the sha256 the store records, and ResNet-18 LRP (``epsilon_plus_flat``, batch
   ``--batch-size``; tracing and first-call costs excluded);
2. for every n of ``--n``, in a fresh subprocess each, ``attribute_dataset`` of the first n files, named in
   a label table (``csv:`` source; a ``folder:`` reads the same files the same way) with ``--workers``
   decoding processes, explained by ``--model`` (ResNet-18, or ``tiny`` to measure the data path alone): the
   wall time (opening the source, which reads every header and hashes every file, included; and of it, the
   seconds explaining and writing the store, as ``attribute_dataset`` counts them), CPU seconds of the
   process and of its workers, and memory: the process's RSS after every tenth of the samples and its peak
   (``VmHWM``: ``ru_maxrss`` would keep the RSS of this script at the fork), and the largest worker's peak
   (``ru_maxrss``, which counts the pages a worker shares with the process it was forked from), so memory
   against n shows whether anything but the paths grows with n;
3. for every n of ``--baseline``, the same run over the same inputs pre-decoded (decoded and preprocessed
   here once, written to a raw float32 file and read back one sample at a time, so the baseline holds no
   more in memory than the decoding run), and the overhead (wall with decoding - wall pre-decoded) / wall
   with decoding, of wall time and of CPU time.

Each measurement is one JSON line, appended to ``--log`` as it ends (a long run can be read while it runs),
with the load average at its start and end.

    python tests/benchmarks/bench_decoding.py --n 64 --baseline 64                  # a few minutes
    python tests/benchmarks/bench_decoding.py --n 1000,3000,10000 --baseline 1000,10000   # issue 16 #6 (hours)
    python tests/benchmarks/bench_decoding.py --n 1000,3000,10000 --baseline "" --model tiny  # memory against n
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import Dataset

from spray.attribution import AttributionRun, attribute_dataset
from spray.attribution.methods import get_method
from spray.data import ImageTransform, open_source
from spray.data.images import _as_tensor, decode, file_sha256
from spray.data.transforms import IMAGENET
from spray.zoo.resnet import resnet18

SPEC = ImageTransform(resize=256, crop=224, mean=IMAGENET[0], std=IMAGENET[1])
SHAPE = (3, 224, 224)


def write_images(root: Path, n: int) -> list[tuple[str, int]]:
    """``n`` JPEGs under ``root`` (made once, reused), as (path relative to ``root``, label) in sample order."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        name = f"{'ab'[i % 2]}/{i:05d}.jpg"
        width, height = (int(v) for v in rng.integers(400, 600, 2))
        path = root / name
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(path, quality=90)
        rows.append((name, i % 2))
    return rows


def write_table(root: Path, rows: list[tuple[str, int]], n: int) -> str:
    """A label table of the first ``n`` files; the ``csv:`` source that reads it."""
    table = root / f"first-{n}.csv"
    with open(table, "w", newline="") as f:
        csv.writer(f).writerows([("path", "label"), *rows[:n]])
    return f"csv:{table}"


class Predecoded(Dataset):
    """The inputs a source yields, decoded once into a raw float32 file of (n, *SHAPE), read back one sample
    at a time (never all in memory, like the image source itself)."""

    def __init__(self, path: Path, labels: list[int]) -> None:
        self.path, self.labels = path, labels
        self.count = int(np.prod(SHAPE))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = np.fromfile(self.path, np.float32, count=self.count, offset=i * self.count * 4)
        return torch.from_numpy(x).reshape(SHAPE), self.labels[i]


def predecode(source: str, path: Path) -> None:
    """Write the inputs of ``source`` to ``path`` (reused if its size fits)."""
    dataset = open_source(source, SPEC)
    if path.exists() and path.stat().st_size == len(dataset) * int(np.prod(SHAPE)) * 4:
        return
    with open(path, "wb") as f:
        for i in range(len(dataset)):
            f.write(dataset[i][0].numpy().tobytes())


def build_model(name: str) -> nn.Module:
    """ResNet-18 (2 outputs), or ``tiny``, a model whose LRP costs next to nothing (one 7 × 7 convolution of
    stride 4, 8 channels, average pool, linear), for measuring the data path's memory at large n."""
    torch.manual_seed(0)
    if name == "resnet18":
        return resnet18(2).eval()
    return nn.Sequential(nn.Conv2d(3, 8, 7, stride=4, padding=3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 2)).eval()


def probe(root: Path, rows: list[tuple[str, int]], batch_size: int, threads: int) -> dict[str, float]:
    """CPU seconds per sample of each step (module docstring, 1.) on the files ``rows`` name: the decoding
    steps with one torch thread, as in a DataLoader worker, LRP with ``threads``."""
    paths = [root / name for name, _ in rows]
    steps: dict[str, float] = {}
    torch.set_num_threads(1)

    def timed(name: str, fn, items):
        tick = time.process_time()
        out = [fn(item) for item in items]
        steps[name] = (time.process_time() - tick) / len(items)
        return out

    images = timed("decode", decode, paths)
    cropped = timed("resize + crop", SPEC.geometry, images)
    inputs = timed("to float + normalise", lambda image: SPEC.normalise(_as_tensor(image, 3)), cropped)
    timed("sha256", file_sha256, paths)
    torch.set_num_threads(threads)
    model = build_model("resnet18")
    method = get_method("epsilon_plus_flat")
    batch = torch.stack(inputs[:batch_size])
    method.attribute(model, batch[:2], torch.zeros(2, dtype=torch.long))  # tracing, first-call costs
    tick = time.process_time()
    method.attribute(model, batch, torch.zeros(len(batch), dtype=torch.long))
    steps["ResNet-18 LRP"] = (time.process_time() - tick) / len(batch)
    return steps


def rss_mb(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process from /proc/self/status, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError(f"/proc/self/status has no {field}")


def measure(kind: str, source: str, decoded: Path | None, workers: int, batch_size: int, model_name: str,
            store: Path) -> dict:
    """One run of ``attribute_dataset`` (this process is a fresh subprocess): its walls, CPU and peak RSS."""
    load = os.getloadavg()[0]
    tick, cpu = time.perf_counter(), time.process_time()
    if kind == "pre-decoded":  # the labels from the table: opening the source would read every file's header
        with open(source.removeprefix("csv:"), newline="") as f:
            dataset = Predecoded(decoded, [int(row["label"]) for row in csv.DictReader(f)])
        workers = 0
    else:
        dataset = open_source(source, SPEC)
    opened = time.perf_counter() - tick
    model = build_model(model_name)
    store.unlink(missing_ok=True)
    tenth, rss = max(len(dataset) // 10, 1), []

    def on_batch(start: int, end: int) -> None:
        if end // tenth > start // tenth or end == len(dataset):
            rss.append([end, rss_mb("VmRSS")])

    summary = attribute_dataset(store, model, dataset, AttributionRun(
        get_method("epsilon_plus_flat"), model_hash="bench", model_name=model_name, dataset_name="bench",
        batch_size=batch_size, progress=False, workers=workers, on_batch=on_batch))
    wall = time.perf_counter() - tick
    store.unlink()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "kind": kind, "model": model_name, "n": len(dataset), "workers": workers,
        "threads": torch.get_num_threads(),
        "wall_s": round(wall, 2), "open_s": round(opened, 2), "explain_s": summary["attribute_seconds"],
        "write_s": summary["write_seconds"], "cpu_s": round(time.process_time() - cpu, 2),
        "worker_cpu_s": round(children.ru_utime + children.ru_stime, 2),
        "peak_rss_mb": rss_mb("VmHWM"), "rss_mb_by_samples": rss,
        "worker_peak_rss_mb": round(children.ru_maxrss / 1024, 1) if workers else None,
        "load_start": round(load, 2), "load_end": round(os.getloadavg()[0], 2),
    }


def run_child(args: argparse.Namespace, kind: str, n: int, source: str, decoded: Path | None) -> dict:
    command = [sys.executable, __file__, "--child", kind, "--source", source, "--threads", str(args.threads),
               "--workers", str(args.workers), "--batch-size", str(args.batch_size), "--dir", str(args.dir),
               "--model", args.model]
    if decoded is not None:
        command += ["--decoded", str(decoded)]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    with open(args.log, "a") as f:
        f.write(json.dumps(result) + "\n")
    print(json.dumps(result), flush=True)
    return result


def numbers(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=numbers, default=[64], help="sample counts of the decoding runs")
    parser.add_argument("--baseline", type=numbers, default=[64], help="sample counts of pre-decoded runs")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "spray-bench-jpegs")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the explaining process")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--probe", type=int, default=64, help="files the per-step CPU probe decodes")
    parser.add_argument("--model", choices=("resnet18", "tiny"), default="resnet18",
                        help="the model explained in the runs (2., 3.); the probe always times ResNet-18")
    parser.add_argument("--log", type=Path, default=Path("bench_decoding.jsonl"))
    parser.add_argument("--child", choices=("decoding", "pre-decoded"), help=argparse.SUPPRESS)
    parser.add_argument("--source", help=argparse.SUPPRESS)
    parser.add_argument("--decoded", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    store = args.dir / f"bench-{os.getpid()}.h5"
    if args.child:
        print(json.dumps(measure(args.child, args.source, args.decoded, args.workers, args.batch_size, args.model,
                                 store)))
        return

    root = args.dir / "jpegs"
    rows = write_images(root, max(args.n + args.baseline + [args.probe]))
    steps = probe(root, rows[: args.probe], args.batch_size, args.threads)
    print(f"CPU s per sample ({args.probe} files; LRP with {args.threads} torch threads; load average "
          f"{os.getloadavg()[0]:.1f}): " + ", ".join(f"{name} {value:.5f}" for name, value in steps.items()))
    decoding = sum(steps[name] for name in ("decode", "resize + crop", "to float + normalise"))
    print(f"decode + preprocess / LRP: {decoding / steps['ResNet-18 LRP']:.1%}")
    with open(args.log, "a") as f:
        f.write(json.dumps({"kind": "probe", "files": args.probe, "threads": args.threads, **steps}) + "\n")
    for n in sorted(set(args.n) | set(args.baseline)):
        source = write_table(root, rows, n)
        with_decoding = run_child(args, "decoding", n, source, None) if n in args.n else None
        if n not in args.baseline:
            continue
        decoded = args.dir / f"decoded-{n}.f32"
        predecode(source, decoded)
        baseline = run_child(args, "pre-decoded", n, source, decoded)
        decoded.unlink()
        if with_decoding is not None:
            for what in ("wall_s", "cpu_s"):
                full = with_decoding[what] + (with_decoding["worker_cpu_s"] if what == "cpu_s" else 0)
                print(f"n {n}: overhead of decoding, {what[:-2]}: {(full - baseline[what]) / full:.1%}")


if __name__ == "__main__":
    main()
