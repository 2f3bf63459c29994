"""Distributed benchmark (issue 6): this process (threads) vs a 2-worker LocalCluster on 127.0.0.1.

1. Attribution: the demo CNN (EpsilonPlusFlat LRP, random weights) on n synthetic 1 x 32 x 32 inputs,
   batch 32, shards of 4 batches. Configurations: ``process`` (no dask; torch's intra-op threads, one
   per core), ``process-1`` (the same with one torch thread, as each dask worker has), ``local:2``
   (what ``spray attribute --scheduler local:2`` does: cluster start and stop included), and ``cluster``
   (a running 2-worker cluster whose workers have imported spray: the steady state).
2. Analysis: C classes x M synthetic 16 x 16 heatmaps (``spray.testing.make_heatmaps``) in one store,
   ``pipelines/fast.toml`` without its UMAP table (``--umap`` keeps it). Preprocessing (once over all maps,
   on the client, the same for every configuration) and class 0 run first, untimed; the timed run is the
   per-class tasks and their store writes. Configurations: ``threads`` (the default in-process dask
   client, one thread per core) and ``cluster-N`` (a running N-worker cluster, N from ``--workers``, 2 by
   default).
3. Scheduling overhead: T empty tasks through ``spray.scheduling.map_on`` (all submitted at once), on the
   in-process client and on the running cluster; and the time to start and stop a 2-worker LocalCluster.

Every configuration runs in a fresh subprocess and reports wall seconds and CPU seconds (user + system of
that process and of its worker processes). Numbers depend on the machine's load: print `uptime` with them.

Run:  NUMBA_CACHE_DIR=/work/main/.numba_cache python tests/benchmarks/bench_distributed.py
          [--attribution-n 2000,10000] [--classes 1000] [--per-class 1000] [--workers 1,2,4] [--tasks 2000]
          [--umap] [--quick]
--quick: n = 1000, 20 classes x 200 maps, 200 tasks (a smoke test, about a minute).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
BATCH, SHARD_BATCHES = 32, 4


# --------------------------------------------------------------------------------------------------------------
# Factories the dask workers import (this file's folder is on their path: they inherit the client's sys.path)
# --------------------------------------------------------------------------------------------------------------


def demo_model():
    from spray.demo.model import build_model

    return build_model(10, seed=0).eval()


def synthetic_inputs():
    """``SPRAY_BENCH_N`` random 1 x 32 x 32 inputs with labels 0..9 (seeded)."""
    import torch
    from torch.utils.data import TensorDataset

    n = int(os.environ["SPRAY_BENCH_N"])
    gen = torch.Generator().manual_seed(0)
    return TensorDataset(torch.rand(n, 1, 32, 32, generator=gen), torch.randint(0, 10, (n,), generator=gen))


def _noop(i: int) -> int:
    return i


# --------------------------------------------------------------------------------------------------------------
# Measurement helpers
# --------------------------------------------------------------------------------------------------------------


def cpu_seconds() -> float:
    """User + system seconds of this process, its reaped children and its live descendants."""
    import psutil

    own = resource.getrusage(resource.RUSAGE_SELF)
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    live = 0.0
    for child in psutil.Process().children(recursive=True):
        try:
            times = child.cpu_times()
        except psutil.Error:
            continue
        live += times.user + times.system
    return own.ru_utime + own.ru_stime + reaped.ru_utime + reaped.ru_stime + live


class Timer:
    def __enter__(self) -> Timer:
        self.wall, self.cpu = time.perf_counter(), cpu_seconds()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = cpu_seconds() - self.cpu


def warm(client) -> None:
    """Import what the tasks need on every worker, so that the timed run is the steady state."""

    def imports() -> None:
        import spray.attribution.runner  # noqa: F401
        import spray.demo.model  # noqa: F401
        import spray.lrp  # noqa: F401
        import spray.pipeline.executor  # noqa: F401

    client.run(imports)


# --------------------------------------------------------------------------------------------------------------
# One configuration (runs in a subprocess: --one KIND CONFIG)
# --------------------------------------------------------------------------------------------------------------


def one_attribution(config: str, n: int, out: Path) -> dict:
    from spray.attribution import AttributionRun, WorkerRecipe, attribute_dataset
    from spray.attribution.methods import get_method
    from spray.data import model_hash
    from spray.scheduling import dask_client

    os.environ["SPRAY_BENCH_N"] = str(n)
    if config == "process-1":
        import torch

        torch.set_num_threads(1)
    model, data = demo_model(), synthetic_inputs()
    recipe = WorkerRecipe(model="bench_distributed:demo_model", data="bench_distributed:synthetic_inputs")

    def attribute(scheduler: str | None) -> dict:
        return attribute_dataset(out / f"{config}-{n}.h5", model, data, AttributionRun(
            get_method("epsilon_plus_flat"), model_hash=model_hash(model), model_name=recipe.model,
            dataset_name=recipe.data, batch_size=BATCH, progress=False, scheduler=scheduler, recipe=recipe,
            shard_batches=SHARD_BATCHES,
        ))

    if config == "cluster":
        with dask_client("local:2") as client:
            warm(client)
            with Timer() as t:
                summary = attribute(client.scheduler.address)
    else:
        with Timer() as t:
            summary = attribute(None if config.startswith("process") else config)
    return {"wall": t.wall, "cpu": t.cpu, "attribute_seconds": summary["attribute_seconds"],
            "write_seconds": summary["write_seconds"], "computed": summary["computed"]}


def one_analysis(config: str, store: Path, umap: bool) -> dict:
    from spray.pipeline import analyze, read_pipeline
    from spray.scheduling import dask_client

    spec = read_pipeline(ROOT / "pipelines" / "fast.toml")
    nodes = {k: v for k, v in spec.nodes.items() if umap or k != "umap"}
    spec = dataclasses.replace(spec, name=f"bench_{config}", nodes=nodes)

    def run(scheduler: str | None) -> dict:
        analyze(str(store), spec, classes=[0], scheduler=scheduler, progress=False)  # preprocess, untimed
        with Timer() as t:
            result = analyze(str(store), spec, scheduler=scheduler, progress=False)
        return {"wall": t.wall, "cpu": t.cpu, "classes": len(result.computed)}

    if config.startswith("cluster"):
        with dask_client(f"local:{_workers(config)}") as client:
            warm(client)
            return run(client.scheduler.address)
    return run(None)


def _workers(config: str) -> int:
    """Worker processes of a cluster configuration: ``cluster`` is 2, ``cluster-N`` is N."""
    return int(config.partition("-")[2] or 2)


def one_overhead(config: str, tasks: int) -> dict:
    from spray.scheduling import dask_client, map_on

    if config == "startup":
        with Timer() as t:
            with dask_client("local:2"):
                pass
        return {"wall": t.wall, "cpu": t.cpu}
    with dask_client(None if config == "threads" else "local:2") as client:
        list(map_on(client, _noop, range(50), lambda i: (i,), progress=False))  # warm the connections
        with Timer() as t:
            done = sum(1 for _ in map_on(client, _noop, range(tasks), lambda i: (i,), progress=False))
    return {"wall": t.wall, "cpu": t.cpu, "tasks": done, "ms_per_task": 1000 * t.wall / done}


# --------------------------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------------------------


def in_subprocess(*args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--one", *args],
        capture_output=True, text=True, env=env, cwd=HERE,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{args} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def write_heatmap_store(path: Path, classes: int, per_class: int) -> float:
    """A store of ``classes`` x ``per_class`` 16 x 16 heatmaps, written in chunks of 50 classes; seconds."""
    from spray.store import AuditStore
    from spray.testing import make_heatmaps

    started = time.perf_counter()
    n = classes * per_class
    with AuditStore(path, mode="a") as store:
        store.prepare_samples(n, dataset={"name": "synthetic", "size": n}, model={"name": "synthetic", "hash": "0"},
                              label_names=[f"class {c}" for c in range(classes)])
        store.create_attribution("synthetic", input_shape=(1, 16, 16), n_outputs=classes, attrs={
            "method": "synthetic", "params": {}, "model_hash": "0", "model_name": "synthetic",
            "batch_size": 50 * per_class, "target": "label"})
        for first in range(0, classes, 50):
            count = min(50, classes - first)
            maps = make_heatmaps(n_per_class=per_class, n_classes=count, size=16, poisoned=0, seed=first)
            labels = maps.labels + first
            logits = np.zeros((len(labels), classes), dtype=np.float32)
            logits[np.arange(len(labels)), labels] = 1.0
            start = first * per_class
            store.write_batch("synthetic", start, relevance=maps.relevance, logits=logits, target=labels,
                              labels=labels, index=np.arange(start, start + len(labels)))
    return time.perf_counter() - started


def row(name: str, r: dict) -> str:
    return f"  {name:<10} wall {r['wall']:8.2f} s   cpu {r['cpu']:8.2f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attribution-n", default="2000,10000")
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--per-class", type=int, default=1000)
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--umap", action="store_true", help="keep fast.toml's UMAP table")
    parser.add_argument("--workers", default="2", help="analysis: LocalCluster sizes to measure, e.g. 1,2,4")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: attribution,analysis,overhead")
    parser.add_argument("--one", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.one:
        kind, config, *rest = args.one
        if kind == "attribution":
            result = one_attribution(config, int(rest[0]), Path(rest[1]))
        elif kind == "analysis":
            result = one_analysis(config, Path(rest[0]), rest[1] == "umap")
        else:
            result = one_overhead(config, int(rest[0]))
        print(json.dumps(result))
        return

    if args.quick:
        args.attribution_n, args.classes, args.per_class, args.tasks = "1000", 20, 200, 200
    skip = set(filter(None, args.skip.split(",")))
    print(f"load average at start: {os.getloadavg()}; cores: {os.cpu_count()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if "attribution" not in skip:
            for n in [int(v) for v in args.attribution_n.split(",") if v]:
                print(f"\nattribution: demo CNN, EpsilonPlusFlat, n = {n}, batch {BATCH}", flush=True)
                results = {}
                for config in ("process", "process-1", "local:2", "cluster"):
                    r = results[config] = in_subprocess("attribution", config, str(n), str(tmp))
                    detail = f"explaining {r['attribute_seconds']:.2f} s, writing {r['write_seconds']:.2f} s"
                    print(f"{row(config, r)}   {n / r['wall']:6.0f} samples/s   {detail}", flush=True)
                base = results["process"]["wall"]
                ratios = ", ".join(f"{c} {base / r['wall']:.2f}x" for c, r in results.items() if c != "process")
                print(f"  speed-up vs process: {ratios}")
        if "analysis" not in skip:
            store = tmp / "heatmaps.h5"
            seconds = write_heatmap_store(store, args.classes, args.per_class)
            umap = "umap" if args.umap else "no-umap"
            print(f"\nanalysis: {args.classes} classes x {args.per_class} heatmaps (16 x 16), fast.toml"
                  f"{'' if args.umap else ' without UMAP'}; store written in {seconds:.1f} s", flush=True)
            results = {}
            for config in ("threads", *(f"cluster-{w}" for w in args.workers.split(","))):
                r = results[config] = in_subprocess("analysis", config, str(store), umap)
                per_class = 1000 * r["wall"] / r["classes"]
                print(f"{row(config, r)}   {r['classes']} classes, {per_class:.0f} ms/class   load average "
                      f"{os.getloadavg()[0]:.1f}", flush=True)
            ratios = ", ".join(f"{c} {results['threads']['wall'] / r['wall']:.2f}x" for c, r in results.items()
                               if c != "threads")
            print(f"  speed-up vs threads: {ratios}")
        if "overhead" not in skip:
            print(f"\nscheduling overhead: {args.tasks} empty tasks", flush=True)
            for config in ("threads", "cluster"):
                r = in_subprocess("overhead", config, str(args.tasks))
                print(row(config, r) + f"   {r['ms_per_task']:.2f} ms per task (wall)", flush=True)
            r = in_subprocess("overhead", "startup", "0")
            print(row("start+stop", r) + "   a 2-worker LocalCluster", flush=True)
    print(f"\nload average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
