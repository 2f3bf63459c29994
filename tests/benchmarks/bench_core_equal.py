"""The SpRAy core on bench_spray.py's features, per stage, and whether two code versions give the same results.

One class of n (default 20k) synthetic 32 x 32 heatmaps (bench_spray.SyntheticHeatmapSource, seed 0), as the
CoRelAy comparison's spray side runs it: KNNGraph(10) -> SpectralEmbedding(32) -> KMeansRange(k = 2 ... 31, one
fit per core). Prints wall and CPU seconds per stage and the load; ``--save FILE.npz`` keeps every result (kNN
indices and distances, eigenvalues, embedding, labels and inertia for every k); ``--against FILE.npz`` compares
them with another run's: kNN indices and distances, embedding, labels and inertia bitwise, eigenvalues' max
difference. A performance change that must not change results runs this on the old tree with --save, then on
the new one with --against (each tree through PYTHONPATH), alternately, so that both see the same load.

Run:  NUMBA_CACHE_DIR=/tmp/numba PYTHONPATH=<old tree> python tests/benchmarks/bench_core_equal.py --save old.npz
      NUMBA_CACHE_DIR=/tmp/numba PYTHONPATH=<new tree> python tests/benchmarks/bench_core_equal.py --against old.npz
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_spray import _features  # noqa: E402


def run_core(X: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, tuple[float, float]]]:
    """The core's results and (wall, CPU) seconds per stage."""
    from spray.analysis import KMeansRange, KNNGraph, SpectralEmbedding

    times: dict[str, tuple[float, float]] = {}
    clock = [time.perf_counter(), time.process_time()]

    def stage(name: str) -> None:
        now = [time.perf_counter(), time.process_time()]
        times[name] = (now[0] - clock[0], now[1] - clock[1])
        clock[:] = now

    knn = KNNGraph(n_neighbors=10, random_state=0).fit(X)
    stage("knn")
    spec = SpectralEmbedding(n_eigenpairs=32, random_state=0).fit(knn.adjacency_)
    stage("spectral")
    km = KMeansRange(k_min=2, k_max=31, random_state=0, n_jobs=os.cpu_count() or 1).fit(spec.embedding_)
    stage("kmeans")
    results = {"indices": knn.indices_, "distances": knn.distances_, "eigenvalues": spec.eigenvalues_,
               "embedding": spec.embedding_}
    results.update({f"labels_{k}": v for k, v in km.labels_.items()})
    results.update({f"inertia_{k}": np.float64(v) for k, v in km.inertia_.items()})
    return results, times


def compare(new: dict[str, np.ndarray], old: dict[str, np.ndarray]) -> str:
    """One line: what is bitwise equal, the eigenvalues' max difference, the keys that differ."""
    ks = sorted(int(key[7:]) for key in old if key.startswith("labels_"))
    differ = [key for key in old if key != "eigenvalues" and not np.array_equal(old[key], new.get(key))]
    return (f"kNN indices equal {np.array_equal(old['indices'], new['indices'])}, distances bitwise "
            f"{np.array_equal(old['distances'], new['distances'])}; eigenvalues max |diff| "
            f"{np.max(np.abs(old['eigenvalues'] - new['eigenvalues'])):.1e}, embedding bitwise "
            f"{np.array_equal(old['embedding'], new['embedding'])}; k-means labels equal at "
            f"{sum(np.array_equal(old[f'labels_{k}'], new[f'labels_{k}']) for k in ks)} of {len(ks)} k, inertia "
            f"bitwise at {sum(np.array_equal(old[f'inertia_{k}'], new[f'inertia_{k}']) for k in ks)}; differing: "
            f"{differ or 'none'}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=20000)
    p.add_argument("--save", help="write the results to this .npz")
    p.add_argument("--against", help="compare the results with this .npz (from --save)")
    args = p.parse_args()
    import spray
    import torch  # noqa: F401  imported before the clock starts, as bench_spray.py does

    X, *_ = _features(args.n, 0)
    load = os.getloadavg()[0]
    results, times = run_core(X)
    total = tuple(sum(t[i] for t in times.values()) for i in (0, 1))
    print(f"{Path(spray.__file__).parents[1]}, n = {args.n}, load {load:.1f} -> {os.getloadavg()[0]:.1f}: " +
          "; ".join(f"{name} {w:.2f} s wall {c:.2f} s CPU" for name, (w, c) in times.items()) +
          f"; core {total[0]:.2f} s wall {total[1]:.2f} s CPU")
    if args.save:
        np.savez(args.save, **results)
    if args.against:
        with np.load(args.against) as old:
            print(compare(results, dict(old)))


if __name__ == "__main__":
    main()
