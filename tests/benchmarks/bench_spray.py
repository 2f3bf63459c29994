"""SpRAy analysis benchmark (issue 3): time and peak memory of one class's analysis, and CoRelAy 1.0.0 for scale.

Part 1 — spray at n = 10k / 100k / 1M synthetic 32x32 heatmaps (d = 1024), one class, each n in a fresh
subprocess: preprocess -> kNN (auto: exact <= 20k, else pynndescent) -> spectral (32 eigenpairs) ->
k-means k = 2..31 (one fit per core) -> UMAP (on the kNN graph); and, timed apart, the default pipeline's
selection null (pipelines/spray.toml's [null], on the same features). Prints seconds per stage, total, the
subprocess's peak RSS, the ARI of the recovered clusters against the planted ones and the UMAP map's neighbour
purity (see map_quality). Targets (issue 19): 1M in <= 5 min wall on 2 cores, <= 8 GB peak, ARI >= 0.99.
Optionally (--pipeline-row N) the memoising pipeline (spray.pipeline.analyze) over a store written by chunks.

Part 2 — against CoRelAy 1.0.0 (--corelay; must be importable), same features at n = 20k: CoRelAy's reference
recipe (SciPyPDist -> SparseKNN(10, symmetric) -> SymmetricNormalLaplacian -> EigenDecomposition(32) ->
KMeans k = 2..30, plus UMAPEmbedding and TSNEEmbedding of the eigenvectors) vs spray's processors (UMAP and
t-SNE on the kNN graph) twice: at spray's defaults (kNN "auto", binary graph) and with CoRelAy's graph
definition (exact kNN, symmetrize="mean"). Each run in its own subprocess (peak RSS), one after the other.
Prints time ratios (core; whole recipe; wall and CPU), load averages, peak memory, eigenvalue agreement, ARIs.
Targets: core >= 20x, whole >= 8x (issue 19), max |Δλ| < 1e-4.

Run:  NUMBA_CACHE_DIR=/work/main/.numba_cache python tests/benchmarks/bench_spray.py [--n 10000,100000]
      [--quick] [--corelay] [--corelay-n 20000] [--pipeline-row 100000] [--umap-seed 0] [--knn-search 31]
      [--knn-pca 128] [--spectral-threads 2] [--umap-fit-samples 100000]
--quick: n = 2k, a smoke test (about a minute, most of it numba compilation).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SIZE = 32  # heatmap side: 32 x 32 = 1024 features
N_CLUSTERS = 10  # planted clusters (the last one a small "Clever Hans" corner patch)
CHUNK = 8192  # rows generated at once (32 MB float32)


# --------------------------------------------------------------------------------------------------------------
# Synthetic heatmaps with planted clusters, generated lazily by chunks
# --------------------------------------------------------------------------------------------------------------


class SyntheticHeatmapSource:
    """A lazy (n, 1, 32, 32) float32 array of heatmaps with ``N_CLUSTERS`` planted clusters.

    Cluster c < N_CLUSTERS − 1 is a Gaussian relevance blob at its own position (a 3 x 3 grid) and width; the last cluster (3 %
    of samples) is a narrow corner patch (a Clever Hans artefact). Per sample: position jitter N(0, 0.03²),
    amplitude U(0.7, 1.3), pixel noise N(0, 0.05²); 2 % of samples mix their blob with another cluster's
    (weight of the own blob U(0.55, 1)), which links the clusters in the kNN graph (one connected
    component, as in real data). ``labels`` is the planted cluster of every sample (the dominant blob).

    Rows are generated on demand by chunks of ``CHUNK`` rows, each from its own seed, so any slice is
    reproducible and only the requested rows are held. ``chunks`` mimics h5py so that HeatmapPreprocessor reads
    whole chunks. ``seconds`` accumulates the time spent generating (to separate it from preprocessing).
    """

    dtype = np.dtype(np.float32)

    def __init__(self, n: int, seed: int = 0) -> None:
        self.n, self.seed = n, seed
        self.shape = (n, 1, SIZE, SIZE)
        self.chunks = (CHUNK, 1, SIZE, SIZE)
        self.seconds = 0.0
        self.cpu_seconds = 0.0
        rng = np.random.default_rng(seed)
        k = N_CLUSTERS
        grid = np.array([(y, x) for y in (0.22, 0.5, 0.78) for x in (0.22, 0.5, 0.78)])  # 3 x 3 positions
        self.centres = np.vstack([grid[rng.permutation(9)[: k - 1]], [[0.06, 0.06]]])
        self.widths = np.append(rng.uniform(0.08, 0.12, size=k - 1), 0.035)
        share = rng.uniform(0.5, 2.0, size=k - 1)
        p = np.append(0.97 * share / share.sum(), 0.03)
        self.labels = rng.choice(k, size=n, p=p).astype(np.int64)
        self.mixed = rng.random(n) < 0.02
        self.partner = (self.labels + rng.integers(1, k, size=n)) % k
        self.axis = (np.arange(SIZE) + 0.5) / SIZE

    def _blobs(self, c: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """(b, 32, 32) separable Gaussian blobs of clusters ``c`` with jittered centres."""
        cy, cx = (self.centres[c] + 0.03 * rng.standard_normal((len(c), 2))).T
        w = self.widths[c][:, None]
        gy = np.exp(-((self.axis[None, :] - cy[:, None]) ** 2) / (2 * w**2)).astype(np.float32)
        gx = np.exp(-((self.axis[None, :] - cx[:, None]) ** 2) / (2 * w**2)).astype(np.float32)
        return gy[:, :, None] * gx[:, None, :]

    def _chunk(self, i: int) -> np.ndarray:
        a, b = i * CHUNK, min(self.n, (i + 1) * CHUNK)
        rng = np.random.default_rng([self.seed, i])
        maps = self._blobs(self.labels[a:b], rng)
        maps *= rng.uniform(0.7, 1.3, size=(b - a, 1, 1)).astype(np.float32)
        mixed = np.flatnonzero(self.mixed[a:b])
        if mixed.size:
            own = rng.uniform(0.55, 1.0, size=(mixed.size, 1, 1)).astype(np.float32)
            maps[mixed] = own * maps[mixed] + (1 - own) * self._blobs(self.partner[a:b][mixed], rng)
        maps += 0.05 * rng.standard_normal((b - a, SIZE, SIZE), dtype=np.float32)
        return maps[:, None]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, key: slice) -> np.ndarray:
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("SyntheticHeatmapSource supports contiguous slices only")
        start, stop, _ = key.indices(self.n)
        t, c = time.perf_counter(), time.process_time()
        parts = [self._chunk(i) for i in range(start // CHUNK, (stop - 1) // CHUNK + 1)] if stop > start else []
        out = np.concatenate(parts)[start - (start // CHUNK) * CHUNK :][: stop - start] if parts else \
            np.empty((0, 1, SIZE, SIZE), np.float32)
        self.seconds += time.perf_counter() - t
        self.cpu_seconds += time.process_time() - c
        return out


# --------------------------------------------------------------------------------------------------------------
# Subprocess workers (one fresh process per measurement, so peak RSS belongs to that analysis alone)
# --------------------------------------------------------------------------------------------------------------


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _features(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, float, float, float]:
    """Preprocessed features, planted labels, wall and CPU seconds of preprocessing, wall s of generating."""
    from spray.analysis import HeatmapPreprocessor

    source = SyntheticHeatmapSource(n, seed)
    t, c = time.perf_counter(), time.process_time()
    X = HeatmapPreprocessor(grid=32, normalization="max_abs").fit_transform(source)
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    return X, source.labels, wall - source.seconds, cpu - source.cpu_seconds, source.seconds


def _ari(a: np.ndarray, b: np.ndarray) -> float:
    from sklearn.metrics import adjusted_rand_score

    return float(adjusted_rand_score(a, b))


def map_quality(Y: np.ndarray, knn_indices: np.ndarray, truth: np.ndarray, n_queries: int = 20000,
                seed: int = 0) -> dict:
    """How well a 2-D map shows the kNN graph, on ``n_queries`` random points (all when fewer).

    ``purity``: the share of each point's k kNN-graph neighbours (feature space) among its k nearest map
    neighbours; ``same_cluster``: the share of those map neighbours in the point's planted cluster.
    """
    from sklearn.neighbors import NearestNeighbors

    n, k = knn_indices.shape
    rows = np.sort(np.random.default_rng(seed).choice(n, size=min(n, n_queries), replace=False))
    near = NearestNeighbors(n_neighbors=k + 1).fit(Y).kneighbors(Y[rows], return_distance=False)
    near = np.array([r[r != i][:k] for r, i in zip(near, rows)])  # self excluded (first unless tied)
    shared = (near[:, :, None] == knn_indices[rows][:, None, :]).any(axis=2)
    return {"purity": float(shared.mean()), "same_cluster": float(np.mean(truth[near] == truth[rows][:, None])),
            "queries": len(rows)}


def _selection_null(X: np.ndarray) -> dict:
    """The ``null`` node of the default pipeline (pipelines/spray.toml) on the features X: its info."""
    from spray.pipeline import read_pipeline
    from spray.pipeline.nodes import NODES

    nodes = read_pipeline(Path(__file__).resolve().parents[2] / "pipelines" / "spray.toml").nodes
    read = {name: params for name, params in nodes.items()
            if name in ("knn", "spectral", "fda") or (name in NODES and NODES[name].kind == "clustering")}
    return NODES["null"].run(nodes["null"], {"features": ({"features": X}, {}), "params": ({}, read)})[1]


def worker_spray(n: int, seed: int, umap_seed: int | None, settings: dict) -> dict:
    """The whole analysis of one class of n heatmaps, processor by processor.

    ``settings``: the command line's processor settings — ``knn_search`` (KNNGraph.search_neighbors),
    ``knn_pca`` (KNNGraph.pca_components), ``spectral_threads`` (SpectralEmbedding.n_threads) and
    ``umap_fit_samples`` (UMAPMap.max_fit_samples); None keeps a processor's default.
    """
    from spray.analysis import KMeansRange, KNNGraph, SpectralEmbedding, UMAPMap, propose_n_clusters

    out: dict = {"n": n, "stages": {}, "cpu": {}, "rss_after": {}, "load": [os.getloadavg()[0]]}
    cpu = [time.process_time()]

    def stage(name: str, seconds: float, cpu_seconds: float | None = None) -> None:
        out["stages"][name] = seconds
        out["cpu"][name] = time.process_time() - cpu[0] if cpu_seconds is None else cpu_seconds
        cpu[0] = time.process_time()
        out["rss_after"][name] = _peak_rss_mb()
        print(f"  [n={n}] {name:<11} {seconds:8.1f} s wall {out['cpu'][name]:8.1f} s CPU   peak RSS so far "
              f"{_peak_rss_mb():7.0f} MB", flush=True)

    X, truth, t_pre, c_pre, t_gen = _features(n, seed)
    out["generate_s"] = t_gen
    stage("preprocess", t_pre, c_pre)
    out["gemm"], out["d"] = gemm_gflops(), X.shape[1]  # between the stages: in no stage's time
    cpu[0] = time.process_time()

    t = time.perf_counter()
    knn = KNNGraph(n_neighbors=10, method="auto", random_state=0, search_neighbors=settings["knn_search"],
                   pca_components=settings["knn_pca"]).fit(X)
    stage("knn", time.perf_counter() - t)
    out["knn_method"], out["recall"], out["recall_queries"] = knn.method_, float(knn.recall_), knn.recall_queries_
    out["search_dims"] = knn.search_dims_

    t = time.perf_counter()
    spec = SpectralEmbedding(n_eigenpairs=32, random_state=0, n_threads=settings["spectral_threads"] or 1)
    spec.fit(knn.adjacency_)
    stage("spectral", time.perf_counter() - t)
    out["n_components"] = spec.n_components_
    out["eigenvalues"] = spec.eigenvalues_[:12].round(6).tolist()

    t = time.perf_counter()
    # One class on the machine: one k-means fit per core (the pipeline's default, 1, suits parallel classes).
    km = KMeansRange(k_min=2, k_max=31, random_state=0, n_jobs=os.cpu_count() or 1).fit(spec.embedding_)
    stage("kmeans", time.perf_counter() - t)
    out["kmeans_fit_samples"] = km.fit_samples_
    k_star = propose_n_clusters(spec.eigenvalues_)
    out["k_eigengap"] = k_star
    out["ari_true_k"] = _ari(truth, km.labels_[N_CLUSTERS])
    out["ari_eigengap_k"] = _ari(truth, km.labels_[k_star]) if k_star in km.labels_ else float("nan")

    # The default pipeline's selection null (docs/spray-method.md §11) on the same features, timed apart.
    t, c = time.perf_counter(), time.process_time()
    null = _selection_null(X)
    out["null"] = {"wall": time.perf_counter() - t, "cpu": time.process_time() - c, "rss_after": _peak_rss_mb(),
                   "p_value": null["p_value"], "n_samples": null["n_samples"]}
    cpu[0] = time.process_time()
    print(f"  [n={n}] null (apart) {out['null']['wall']:8.1f} s wall {out['null']['cpu']:8.1f} s CPU   peak RSS so "
          f"far {_peak_rss_mb():7.0f} MB", flush=True)

    del X  # UMAP reuses the kNN lists; the features are not needed any more
    t = time.perf_counter()
    umap_map = UMAPMap(random_state=umap_seed, max_fit_samples=settings["umap_fit_samples"])
    umap_map.fit(spec.embedding_, knn=knn)
    stage("umap", time.perf_counter() - t)
    out["umap_epochs"], out["umap_negative_samples"] = umap_map.n_epochs_, umap_map.negative_sample_rate_
    out["umap_fit_samples"] = umap_map.fit_samples_
    out["map"] = map_quality(umap_map.embedding_, knn.indices_, truth)
    out["load"].append(os.getloadavg()[0])
    out["total_s"] = sum(out["stages"].values())
    out["total_cpu_s"] = sum(out["cpu"].values())
    out["peak_rss_mb"] = _peak_rss_mb()
    return out


def worker_pipeline(n: int, seed: int) -> dict:
    """The same analysis through the memoising pipeline over an audit store written chunk by chunk."""
    from spray.pipeline import analyze, pipeline_from_text
    from spray.store import AuditStore

    source = SyntheticHeatmapSource(n, seed)
    with tempfile.TemporaryDirectory(dir=os.environ.get("SPRAY_BENCH_TMP")) as tmp:
        path = Path(tmp) / "bench.h5"
        t = time.perf_counter()
        with AuditStore(path, mode="a") as store:
            store.prepare_samples(n, dataset={"name": "synthetic", "size": n}, model={"name": "synthetic",
                                  "hash": "0" * 64}, label_names=["class 0"])
            store.create_attribution("synthetic", input_shape=(1, SIZE, SIZE), n_outputs=1, attrs={
                "method": "synthetic", "params": {}, "model_hash": "0" * 64, "model_name": "synthetic",
                "batch_size": CHUNK, "target": "label"})
            for a in range(0, n, CHUNK):
                b = min(n, a + CHUNK)
                zeros = np.zeros(b - a, np.int64)
                store.write_batch("synthetic", a, relevance=source[a:b], logits=np.ones((b - a, 1), np.float32),
                                  target=zeros, labels=zeros, index=np.arange(a, b))
        t_write = time.perf_counter() - t
        spec = pipeline_from_text("[knn]\n[spectral]\n[kmeans]\n[umap]\n[fda]\n")
        t = time.perf_counter()
        analyze(str(path), spec, progress=False)
        t_first = time.perf_counter() - t
        t = time.perf_counter()
        analyze(str(path), spec, progress=False)  # memoised: every node's key is in the store
        t_again = time.perf_counter() - t
    return {"n": n, "write_store_s": t_write, "analyze_s": t_first, "analyze_again_s": t_again,
            "peak_rss_mb": _peak_rss_mb()}


def gemm_gflops() -> tuple[float, int]:
    """The machine's float32 matmul rate (GFLOP/s, wall) on torch's threads, best of 3 at 4096 x 1024 x 4096; the
    thread count."""
    import torch

    A, B, C = torch.randn(4096, 1024), torch.randn(4096, 1024), torch.empty(4096, 4096)
    torch.mm(A, B.T, out=C)
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        torch.mm(A, B.T, out=C)
        best = min(best, time.perf_counter() - t)
    return 2 * 4096 * 4096 * 1024 / best / 1e9, torch.get_num_threads()


def gemm_line(n: int, d: int, method: str, seconds: float, cpu_seconds: float, gemm: list) -> str:
    """The kNN stage against the machine's float32 GEMM rate ``gemm`` ((GFLOP/s, torch threads) measured in the
    same process as the search).

    The exact search's rate is the full symmetric search's n^2 d flops (n(n-1)/2 pairs x 2d) over its wall time:
    its share of GEMM says how close the search is to the matmul floor (above 100 % when pruning skips pairs).
    NN-descent does no matmuls: only the GEMM rate is printed.
    """
    line = (f"kNN: {seconds:.2f} s wall, {cpu_seconds:.2f} s CPU; float32 GEMM {gemm[0]:.0f} GFLOP/s on {gemm[1]} "
            "torch threads (measured before it)")
    if method != "exact":
        return line + f"; {method} search (NN-descent): no GEMM share"
    rate = n * n * d / seconds / 1e9
    return line + f"; full-search equivalent {rate:.0f} GFLOP/s = {100 * rate / gemm[0]:.0f} % of GEMM"


def worker_compare_spray(n: int, seed: int, out_npz: str, mode: str) -> dict:
    """spray's side of the CoRelAy comparison: the same stages and maps, on the same features.

    ``mode="corelay"``: CoRelAy's graph definition (exact kNN, (A + Aᵀ)/2), for the eigenvalue comparison;
    ``mode="default"``: spray's defaults (kNN method "auto", binary symmetrisation A = max(B, Bᵀ)).
    """
    from spray.analysis import KMeansRange, KNNGraph, SpectralEmbedding, TSNEMap, UMAPMap

    X, truth, *_ = _features(n, seed)
    import openTSNE, torch, umap  # noqa: F401,E401  imported before the clock starts, as CoRelAy's modules are

    rss0, load0 = _peak_rss_mb(), os.getloadavg()[0]
    gemm = gemm_gflops()
    graph = {"method": "exact", "symmetrize": "mean"} if mode == "corelay" else {}
    c0 = time.process_time()
    t0 = time.perf_counter()
    knn = KNNGraph(n_neighbors=10, random_state=0, **graph).fit(X)
    t1, c1 = time.perf_counter(), time.process_time()
    spec = SpectralEmbedding(n_eigenpairs=32, random_state=0).fit(knn.adjacency_)
    t2 = time.perf_counter()
    # One class on an idle machine: one k-means fit per core (the default, 1, suits parallel classes).
    km = KMeansRange(k_min=2, k_max=30, random_state=0, n_jobs=os.cpu_count() or 1).fit(spec.embedding_)
    t3, c3 = time.perf_counter(), time.process_time()
    UMAPMap(random_state=0).fit(spec.embedding_, knn=knn)
    t4 = time.perf_counter()
    TSNEMap(random_state=0).fit(spec.embedding_, knn=knn)
    t5, c5 = time.perf_counter(), time.process_time()
    np.savez(out_npz, eigenvalues=spec.eigenvalues_, labels=km.labels_[N_CLUSTERS], truth=truth)
    return {"stages": {"knn": t1 - t0, "spectral": t2 - t1, "kmeans": t3 - t2, "umap": t4 - t3, "tsne": t5 - t4},
            "core_s": t3 - t0, "whole_s": t5 - t0, "core_cpu_s": c3 - c0, "whole_cpu_s": c5 - c0,
            "peak_rss_mb": _peak_rss_mb(), "rss_features_mb": rss0, "n_components": spec.n_components_,
            "ari": _ari(truth, km.labels_[N_CLUSTERS]), "knn_method": knn.method_, "mode": mode,
            "load": [load0, os.getloadavg()[0]], "gemm": gemm, "knn_cpu_s": c1 - c0, "d": X.shape[1]}


def worker_corelay(n: int, seed: int, out_npz: str) -> dict:
    """CoRelAy 1.0.0's reference recipe on the same features (its defaults; its SpectralClustering pipeline)."""
    from corelay.pipeline.spectral import SpectralClustering
    from corelay.processor.affinity import SparseKNN
    from corelay.processor.clustering import KMeans
    from corelay.processor.distance import SciPyPDist
    from corelay.processor.embedding import EigenDecomposition, TSNEEmbedding, UMAPEmbedding
    from corelay.processor.flow import Parallel
    from corelay.processor.laplacian import SymmetricNormalLaplacian

    X, truth, *_ = _features(n, seed)
    rss0, load0 = _peak_rss_mb(), os.getloadavg()[0]
    ks = list(range(2, 31))
    pipeline = SpectralClustering(
        pairwise_distance=SciPyPDist(metric="euclidean"),
        affinity=SparseKNN(n_neighbors=10, symmetric=True),
        laplacian=SymmetricNormalLaplacian(),
        embedding=EigenDecomposition(n_eigval=32, is_output=True),
        clustering=Parallel([KMeans(n_clusters=k) for k in ks], broadcast=True, is_output=True),
    )
    c0, t0 = time.process_time(), time.perf_counter()
    (eigenvalues, eigenvectors), labels = pipeline(X)
    t1, c1 = time.perf_counter(), time.process_time()
    # The recipe's maps, as a Parallel(broadcast=True) branch next to the k-means would run them: on the
    # (row-normalised) eigenvectors.
    UMAPEmbedding()(eigenvectors)
    t2 = time.perf_counter()
    TSNEEmbedding()(eigenvectors)
    t3, c3 = time.perf_counter(), time.process_time()
    labels = np.asarray(labels[ks.index(N_CLUSTERS)])
    np.savez(out_npz, eigenvalues=np.asarray(eigenvalues), labels=labels, truth=truth)
    return {"stages": {"core": t1 - t0, "umap": t2 - t1, "tsne": t3 - t2}, "core_s": t1 - t0, "whole_s": t3 - t0,
            "core_cpu_s": c1 - c0, "whole_cpu_s": c3 - c0, "peak_rss_mb": _peak_rss_mb(), "rss_features_mb": rss0,
            "ari": _ari(truth, labels), "load": [load0, os.getloadavg()[0]]}


WORKERS = {"spray": worker_spray, "pipeline": worker_pipeline, "compare_spray": worker_compare_spray,
           "corelay": worker_corelay}


def run_worker(kind: str, *args: object) -> dict:
    """Run WORKERS[kind](*args) in a fresh interpreter; its result plus its peak RSS as seen by the parent."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        result_path = f.name
    cmd = [sys.executable, __file__, "--worker", json.dumps([kind, list(args), result_path])]
    proc = subprocess.Popen(cmd)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"worker {kind}{args} failed with exit code {proc.returncode}")
    result = json.loads(Path(result_path).read_text())
    os.unlink(result_path)
    result["peak_rss_mb_parent_view"] = usage.ru_maxrss / 1024
    return result


# --------------------------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------------------------


def machine() -> str:
    import scipy
    import sklearn
    import torch

    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor()
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{cpu}, {os.cpu_count()} CPUs, {mem:.0f} GB RAM, load {os.getloadavg()[0]:.1f}; Python "
            f"{platform.python_version()}, numpy {np.__version__}, scipy {scipy.__version__}, scikit-learn "
            f"{sklearn.__version__}, torch {torch.__version__}")


def report_spray(results: list[dict]) -> None:
    stages = ["preprocess", "knn", "spectral", "kmeans", "umap"]
    print("\nspray, one class (seconds; peak RSS of the analysis subprocess)")
    head = f"{'n':>9} " + " ".join(f"{s:>10}" for s in stages) + f" {'total':>8} {'peak MB':>8} {'ARI@k=10':>9} " \
        f"{'k*':>3} {'ARI@k*':>7} {'kNN':>6} {'recall':>6} {'comp':>4}"
    print(head)
    for r in results:
        print(f"{r['n']:>9} " + " ".join(f"{r['stages'][s]:>10.1f}" for s in stages) +
              f" {r['total_s']:>8.1f} {r['peak_rss_mb_parent_view']:>8.0f} {r['ari_true_k']:>9.3f} "
              f"{r['k_eigengap']:>3} {r['ari_eigengap_k']:>7.3f} {r['knn_method'][:6]:>6} {r['recall']:>6.3f} "
              f"{r['n_components']:>4}")
        print(f"{'':>9} CPU s: " + " ".join(f"{r['cpu'][s]:>10.1f}" for s in stages) + f" {r['total_cpu_s']:>8.1f}")
        print(f"{'':>9} (+ {r['generate_s']:.1f} s generating the synthetic heatmaps, not counted; smallest "
              f"eigenvalues {r['eigenvalues'][:N_CLUSTERS + 1]})")
        print(f"{'':>9} selection null (default pipeline, not in the total): {r['null']['wall']:.1f} s wall "
              f"{r['null']['cpu']:.1f} s CPU on {r['null']['n_samples']} sampled rows, p = {r['null']['p_value']:.3g}")
        print(f"{'':>9} load average {r['load'][0]:.1f} at start, {r['load'][1]:.1f} at end; kNN searched in "
              f"{r['search_dims']} dimensions, recall on {r['recall_queries']} queries; k-means fitted on "
              f"{r['kmeans_fit_samples']} rows; UMAP {r['umap_epochs']} epochs on {r['umap_fit_samples']} points")
        print(f"{'':>9} " + gemm_line(r["n"], r["search_dims"], r["knn_method"], r["stages"]["knn"], r["cpu"]["knn"],
                                      r["gemm"]))
        m = r["map"]
        print(f"{'':>9} UMAP map on {m['queries']} points ({r['umap_negative_samples']} negative per positive sample): "
              f"neighbour purity {m['purity']:.4f} (share of the 10 kNN-graph neighbours among the 10 nearest map "
              f"neighbours), same planted cluster {m['same_cluster']:.4f}")
    big = [r for r in results if r["n"] >= 1_000_000]
    for r in big:
        ok_t, ok_m = r["total_s"] <= 300, r["peak_rss_mb_parent_view"] <= 8192
        ok_a = r["ari_true_k"] >= 0.99
        print(f"target n={r['n']}: {r['total_s'] / 60:.1f} min <= 5 min: {'MET' if ok_t else 'MISSED'} "
              f"({r['total_cpu_s'] / 60:.1f} min CPU; load average {r['load'][0]:.1f} -> {r['load'][1]:.1f}); "
              f"{r['peak_rss_mb_parent_view'] / 1024:.2f} GB <= 8 GB: {'MET' if ok_m else 'MISSED'}; ARI "
              f"{r['ari_true_k']:.3f} >= 0.99: {'MET' if ok_a else 'MISSED'}")


def report_compare(sides: dict[str, dict], c: dict, n: int, eig: dict[str, np.ndarray]) -> None:
    print(f"\nCoRelAy 1.0.0 vs spray, one class, n = {n}, d = 1024 (seconds; peak RSS of each subprocess)")
    print(f"  CoRelAy: " + ", ".join(f"{k} {v:.1f}" for k, v in c["stages"].items()) +
          f"; CPU core {c['core_cpu_s']:.1f}, whole {c['whole_cpu_s']:.1f}; load average {c['load'][0]:.1f} -> "
          f"{c['load'][1]:.1f}; peak RSS {c['peak_rss_mb_parent_view']:.0f} MB; ARI {c['ari']:.3f} (k-means on all "
          f"32 row-normalised eigenvectors)")
    for mode, s in sides.items():
        rc, rw = c["core_s"] / s["core_s"], c["whole_s"] / s["whole_s"]
        rcc, rwc = c["core_cpu_s"] / s["core_cpu_s"], c["whole_cpu_s"] / s["whole_cpu_s"]
        print(f"  spray, {mode} ({s['knn_method']} kNN): " + ", ".join(f"{k} {v:.1f}" for k, v in s["stages"].items()) +
              f"; load average {s['load'][0]:.1f} -> {s['load'][1]:.1f}; peak RSS {s['peak_rss_mb_parent_view']:.0f} MB "
              f"(incl. ~{s['rss_features_mb']:.0f} MB interpreter + features); ARI {s['ari']:.3f} (first k eigenvectors)")
        print("    " + gemm_line(n, s["d"], s["knn_method"], s["stages"]["knn"], s["knn_cpu_s"], s["gemm"]))
        print(f"    core (kNN graph -> Laplacian -> 32 eigenpairs -> k-means 2..30): CoRelAy {c['core_s']:.1f} s / spray "
              f"{s['core_s']:.1f} s = {rc:.1f}x wall (target >= 20x: {'MET' if rc >= 20 else 'MISSED'}); CPU "
              f"{c['core_cpu_s']:.1f} / {s['core_cpu_s']:.1f} s = {rcc:.1f}x")
        print(f"    whole recipe (+ UMAP + t-SNE): CoRelAy {c['whole_s']:.1f} s / spray {s['whole_s']:.1f} s = {rw:.1f}x "
              f"wall (target >= 8x: {'MET' if rw >= 8 else 'MISSED'}); CPU {c['whole_cpu_s']:.1f} / "
              f"{s['whole_cpu_s']:.1f} s = {rwc:.1f}x")
    if "corelay" in eig and "spray_corelay" in eig:
        eig_c, eig_s = eig["corelay"], eig["spray_corelay"]
        below = np.sort(eig_c[eig_c < 1.0])
        spurious = int(np.sum(eig_c >= 1.0))
        m = min(len(below), len(eig_s))
        diff = float(np.max(np.abs(below[:m] - eig_s[:m]))) if m else float("nan")
        print(f"  eigenvalues (spray in exact mode with (A + A^T)/2): CoRelAy reports {len(eig_c)}, {spurious} of them >= 1 "
              f"(spurious, far end of the spectrum); its {m} below 1 vs spray's {m} smallest: max |diff| = {diff:.2e} "
              f"(target < 1e-4: {'MET' if diff < 1e-4 else 'MISSED'})")


# --------------------------------------------------------------------------------------------------------------


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", default="10000,100000", help="comma-separated class sizes (e.g. 10000,100000,1000000)")
    p.add_argument("--quick", action="store_true", help="n = 2000 only: check the script runs")
    p.add_argument("--corelay", action="store_true", help="also compare with CoRelAy 1.0.0 (must be installed)")
    p.add_argument("--corelay-n", type=int, default=20000)
    p.add_argument("--corelay-sides", default="spray_default,spray_corelay,corelay",
                   help="which runs of the comparison to make, in order: spray_default (spray's defaults), "
                        "spray_corelay (CoRelAy's graph: exact kNN, (A + A^T)/2), corelay")
    p.add_argument("--pipeline-row", type=int, default=0, help="also time spray.pipeline.analyze at this n")
    p.add_argument("--umap-seed", default="0", help="UMAP random_state ('none': unseeded, multi-threaded)")
    p.add_argument("--knn-search", type=int, default=None,
                   help="NN-descent's kept candidates per point (KNNGraph.search_neighbors; default 3k + 1 = 31)")
    p.add_argument("--knn-pca", type=int, default=None,
                   help="search the kNN in this many principal directions (KNNGraph.pca_components; default: all)")
    p.add_argument("--spectral-threads", type=int, default=None,
                   help="BLAS threads of the eigensolve (SpectralEmbedding.n_threads; default 1)")
    p.add_argument("--umap-fit-samples", type=int, default=None,
                   help="fit the UMAP map on this many points and place the rest (UMAPMap.max_fit_samples)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.worker:
        kind, wargs, result_path = json.loads(args.worker)
        Path(result_path).write_text(json.dumps(WORKERS[kind](*wargs)))
        return

    os.environ.setdefault("NUMBA_CACHE_DIR", str(Path(__file__).resolve().parents[2] / ".numba_cache"))
    umap_seed = None if args.umap_seed.lower() == "none" else int(args.umap_seed)
    sizes = [2000] if args.quick else [int(v) for v in args.n.split(",") if v]
    print(f"machine: {machine()}")
    settings = {"knn_search": args.knn_search, "knn_pca": args.knn_pca, "spectral_threads": args.spectral_threads,
                "umap_fit_samples": args.umap_fit_samples}
    print(f"NUMBA_CACHE_DIR={os.environ['NUMBA_CACHE_DIR']}; UMAP random_state={umap_seed}; NN-descent candidates "
          f"{args.knn_search or 'default'}; kNN searched in {args.knn_pca or 'all'} dimensions; eigensolve on "
          f"{args.spectral_threads or 1} BLAS thread(s); UMAP fitted on {args.umap_fit_samples or 'every'} points")
    results = []
    for n in sizes:
        print(f"spray, n = {n} ...", flush=True)
        results.append(run_worker("spray", n, args.seed, umap_seed, settings))
    if results:
        report_spray(results)

    if args.pipeline_row:
        print(f"\nspray.pipeline.analyze, n = {args.pipeline_row} ...", flush=True)
        r = run_worker("pipeline", args.pipeline_row, args.seed)
        print(f"pipeline (store written by chunks in {r['write_store_s']:.1f} s; nodes knn, spectral, kmeans, umap, "
              f"fda): analyze {r['analyze_s']:.1f} s, again (memoised) {r['analyze_again_s']:.1f} s, peak RSS "
              f"{r['peak_rss_mb_parent_view']:.0f} MB")

    if args.corelay:
        n = 2000 if args.quick else args.corelay_n
        with tempfile.TemporaryDirectory() as tmp:
            sides = args.corelay_sides.split(",")
            results, eig = {}, {}
            for side in sides:  # spray's two modes, then CoRelAy: one after the other, never overlapping
                print(f"\nCoRelAy comparison, n = {n}: {side} ...", flush=True)
                path = str(Path(tmp) / f"{side}.npz")
                if side == "corelay":
                    results[side] = run_worker("corelay", n, args.seed, path)
                else:
                    results[side] = run_worker("compare_spray", n, args.seed, path, side.removeprefix("spray_"))
                eig[side] = np.load(path)["eigenvalues"]
            if "corelay" in results and len(results) > 1:
                report_compare({k.removeprefix("spray_"): v for k, v in results.items() if k != "corelay"},
                               results["corelay"], n, eig)
            else:
                print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
