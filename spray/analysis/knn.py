"""The k-nearest-neighbour affinity graph SpRAy's spectral analysis runs on (Euclidean distance).

Built directly as a sparse graph: exact blockwise top-k for moderate n (O(n² d) flops, O(block · n) memory),
approximate NN-descent (pynndescent) for large n. CoRelAy's dense n × n distance matrix is never formed.
"""

from __future__ import annotations

import functools
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import numpy as np
import scipy.sparse as sp

from spray.analysis._common import cache_numba_kernels, check_choice, check_int, check_matrix, rng_from, seed_from
from spray.errors import BadInputError

_BLOCK_ROWS = 4096  # query rows per block of the exact search for given queries: a 4096 x 4096 float32 tile is 64 MB
_LEAF_ROWS = 128  # most rows per leaf of the pruned all-rows search (see _pruned_all_neighbors)
_GROUP_LEAVES = 4  # leaves whose distances to each other bound their rows' neighbour distances
_SHARE_GROUPS = 8  # groups of leaves on which the pruned search estimates the share of pairs it compares
_PRUNED_MAX_SHARE = 0.3  # above this share of pairs the one-way pruned search loses to the symmetric one
_BOUND_DIMS = 32  # principal directions of the pruned search's lower bound
_RECALL_PAIRS = 2 * 10**8  # query-row pairs the recall estimate may search exactly (see recall_query_count)
_PROJECT_ROWS = 65536  # rows projected at once by _principal_scores (a 256 MB centred block at d = 1024)


def _centred_block(X: np.ndarray, rows: Any, mean: Any) -> tuple[Any, Any]:
    """Rows of ``X`` minus ``mean`` as a float32 torch tensor, and their squared norms."""
    import torch

    block = torch.from_numpy(np.ascontiguousarray(X[rows], dtype=np.float32)) - mean
    return block, torch.einsum("ij,ij->i", block, block)


def _merge(best: tuple[Any, Any], values: Any, columns: Any, k: int) -> tuple[Any, Any]:
    """Running top-k (smallest): merge a tile of ``values`` (rows, cols) whose columns are rows ``columns``."""
    import torch

    vals, idx = torch.topk(values, min(k, values.shape[1]), dim=1, largest=False, sorted=False)
    vals, idx = torch.cat([best[0], vals], 1), torch.cat([best[1], columns[idx]], 1)
    top = torch.topk(vals, k, dim=1, largest=False, sorted=False).indices
    return torch.gather(vals, 1, top), torch.gather(idx, 1, top)


def _bound_basis(Xc: Any, dims: int) -> Any:
    """(d, p) float32 matrix, orthonormal columns spanning ≈ the top principal directions of ``Xc``.

    Any orthonormal P gives ``‖Pᵀ(x − y)‖ ≤ ‖x − y‖``; the principal directions make the bound tight. A range
    finder on ≤ 2048 evenly spaced rows (two power iterations, float64, QR): with the projection of all
    rows ≈ 0.12 s CPU at 20k × 1024. Orthonormalised in float64, rounded to float32 (relative error ≈ 1e-7,
    far inside the search's slack).
    """
    import torch

    n, d = Xc.shape
    sample = Xc[:: max(1, n // 2048)].double()
    width = min(d, len(sample), 2 * dims)
    Q = torch.linalg.qr(sample[:width].T)[0]  # the span of some rows, refined by power iterations
    for _ in range(2):
        Q = torch.linalg.qr(sample.T @ (sample @ Q))[0]
    # Rotate the range into principal directions and keep the leading ``dims``.
    _, _, vh = torch.linalg.svd(sample @ Q, full_matrices=False)
    P = torch.linalg.qr(Q @ vh.T[:, :dims])[0]
    return P.float()


def _principal_scores(X: np.ndarray, p: int) -> np.ndarray:
    """The rows of ``X`` centred and projected on ≈ their top ``p`` principal directions: (n, p) float32.

    The directions are :func:`_bound_basis`'s (a range finder on ≤ 2048 evenly spaced rows); the rows are
    projected by blocks, so the only n-sized allocation is the result.
    """
    import torch

    n = X.shape[0]
    mean = torch.from_numpy(X.mean(axis=0, dtype=np.float64).astype(np.float32))
    with torch.no_grad():
        sample = torch.from_numpy(np.ascontiguousarray(X[:: max(1, n // 2048)], dtype=np.float32)) - mean
        P = _bound_basis(sample, p)
        scores = np.empty((n, P.shape[1]), dtype=np.float32)
        for a in range(0, n, _PROJECT_ROWS):
            block = torch.from_numpy(np.ascontiguousarray(X[a : a + _PROJECT_ROWS], dtype=np.float32))
            torch.mm(block - mean, P, out=torch.from_numpy(scores[a : a + _PROJECT_ROWS]))
    return scores


def _tree_leaves(Z: Any, leaf: int) -> list[Any]:
    """Row positions of ``Z`` (torch, n × p) split into leaves of at most ``leaf`` rows that are compact.

    A principal-axis tree: each node splits its rows at the median of their projection on their own
    leading principal direction, until a node has at most ``leaf`` rows. Leaves come out depth first, so
    consecutive leaves are close in space too.
    """
    import torch

    leaves, todo = [], [torch.arange(len(Z))]
    while todo:
        rows = todo.pop()
        if len(rows) <= leaf:
            leaves.append(rows)
            continue
        sub = Z[rows].double()
        sub -= sub.mean(0)
        proj = sub @ torch.linalg.eigh(sub.T @ sub)[1][:, -1]
        half = torch.argsort(proj)
        todo += [rows[half[len(rows) // 2 :]], rows[half[: len(rows) // 2]]]
    return leaves


@contextmanager
def _one_torch_thread() -> Iterator[int]:
    """torch's intra-op threads set to one on the calling thread for the duration; yields the count before."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield before
    finally:
        torch.set_num_threads(before)


def _on_threads(work: Callable[[Any], None], items: Sequence[Any], workers: int) -> None:
    """``work(item)`` for every item, spread over ``workers`` threads of one torch thread each.

    The pruned search and the re-ranking are many small torch operations (top-k of 128-row tiles, gathers,
    masks, small matmuls): on torch's own threads each operation is split over the cores, which spin-wait at
    its end — at 20k × 1024 on 2 cores that doubled the search's CPU time on an idle machine and multiplied
    it under load (docs/benchmarks.md). Independent items on threads of one torch thread each keep the cores
    busy without those barriers. ``work`` must write disjoint outputs for different items; each item is
    computed on one torch thread whatever ``workers`` is.
    """
    import torch

    workers = min(workers, len(items))
    if workers <= 1:
        for item in items:
            work(item)
        return
    with ThreadPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(1,)) as pool:
        for _ in pool.map(work, items):  # re-raises a worker's exception here
            pass


def _tile(buffer: Any, rows: int, cols: int) -> Any:
    """A contiguous (rows, cols) view of the start of a flat preallocated ``buffer``."""
    return buffer[: rows * cols].view(rows, cols)


def _pruned_all_neighbors(X: np.ndarray, m: int, mean: Any, workers: int = 1) -> tuple[Any, Any] | None:
    """The m smallest float32 squared distances of every row of ``X`` to the others, and their row numbers.

    Exact, with pruning by a lower bound: rows are centred and projected on ``_BOUND_DIMS`` principal
    directions P (orthonormal, so ``‖Pᵀ(x − y)‖ ≤ ‖x − y‖``) and split into leaves of nearby rows
    (:func:`_tree_leaves`). For each group of ``_GROUP_LEAVES`` consecutive leaves, the full distances within
    the group (one float32 matmul) give every row an upper bound on its m-th best distance; then for each
    leaf, only the rows whose projected distance to some row of the leaf is below that row's bound (plus a
    float32 rounding slack) are gathered and compared in full dimension (a second matmul). A row whose full
    distance could enter the m best is never skipped, so the result is the full search's.

    Each leaf's rows are compared with their candidates one way (no symmetric reuse), so pruning pays only
    when the candidates are a small share of the rows: that share is first estimated on up to
    ``_SHARE_GROUPS`` groups spread over the data, and above ``_PRUNED_MAX_SHARE`` the function returns
    None (the caller runs the symmetric search). Clustered heatmaps with isotropic pixel noise (the bench's
    synthetic ones) prune to ≈ 12 % of the pairs; the benchmark's real, preprocessed LRP heatmaps barely prune.
    The groups are searched on ``workers`` threads (:func:`_on_threads`); call it on one torch thread.
    Memory: one centred n × d float32 copy of ``X`` in leaf order, O(n · leaves) for the bounds, and per
    worker ≈ 20 MB of tiles.
    """
    import torch

    n = X.shape[0]
    Xc = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32)) - mean
    Z = Xc @ _bound_basis(Xc, _BOUND_DIMS)
    leaves = _tree_leaves(Z, _LEAF_ROWS)
    order = torch.cat(leaves)
    Xc, Z = Xc[order], Z[order]
    bounds = np.cumsum([0] + [len(rows) for rows in leaves])
    sq, sz = torch.einsum("ij,ij->i", Xc, Xc), torch.einsum("ij,ij->i", Z, Z)
    # float32 rounding of a squared distance by the expansion ‖x‖² + ‖y‖² − 2 x·y stays far below 1e-4 of
    # ‖x‖² + ‖y‖²: the slack covers it for the projected and the full distance alike.
    slack = 1e-4 * (sq + sq.max())
    leaf_of = torch.repeat_interleave(torch.arange(len(leaves)), torch.tensor([len(rows) for rows in leaves]))
    to_centre = torch.cdist(Z, torch.stack([Z[a:b].mean(0) for a, b in zip(bounds[:-1], bounds[1:])]))
    radii = torch.zeros(len(leaves)).scatter_reduce_(0, leaf_of, to_centre[torch.arange(n), leaf_of], "amax")
    best_d, best_i = torch.empty((n, m)), torch.empty((n, m), dtype=torch.int64)
    # Tiles go to preallocated buffers, one set per thread: fresh tensors per tile cost more in page faults
    # than their arithmetic.
    local = threading.local()

    def buffers() -> Any:
        if not hasattr(local, "low"):
            local.low, local.d2 = torch.empty(_LEAF_ROWS * _BLOCK_ROWS), torch.empty(_LEAF_ROWS * _BLOCK_ROWS)
            local.y = torch.empty((min(n, _BLOCK_ROWS), Xc.shape[1]))
        return local

    def group_best(first: int) -> range:
        """Best m within the group of leaves from ``first`` into best_d/best_i; the group's leaves."""
        group = slice(int(bounds[first]), int(bounds[min(first + _GROUP_LEAVES, len(leaves))]))
        d2 = torch.addmm(sq[group][None, :], Xc[group], Xc[group].T, alpha=-2.0).add_(sq[group][:, None])
        d2.fill_diagonal_(float("inf"))
        # A group smaller than m + 1 leaves infinite bounds: then every other row is a candidate.
        vals, idx = torch.topk(d2, min(m, d2.shape[1]), dim=1, largest=False, sorted=False)
        best_d[group] = torch.nn.functional.pad(vals, (0, m - vals.shape[1]), value=float("inf"))
        best_i[group] = torch.nn.functional.pad(idx + group.start, (0, m - vals.shape[1]))
        return range(first, min(first + _GROUP_LEAVES, len(leaves)))

    def candidates(leaf: int, own: range) -> Iterator[tuple[slice, Any]]:
        """Blocks of rows outside the leaf's group that some row of the leaf may have among its m best."""
        rows = slice(int(bounds[leaf]), int(bounds[leaf + 1]))
        bound = best_d[rows].max(1).values + slack[rows]
        # Leaves within reach by the ball bound ‖z − z'‖ ≥ ‖z − c‖ − r (centre c, radius r of the leaf
        # of z'), then rows within reach by the projected distance itself.
        reach = ((to_centre[rows] - radii).clamp_(min=0).square_() < bound[:, None]).any(0)
        reach[own.start : own.stop] = False  # compared by group_best already
        for cols in torch.nonzero(reach[leaf_of]).ravel().split(_BLOCK_ROWS):
            low = torch.addmm(sz[cols][None, :], Z[rows], Z[cols].T, alpha=-2.0,
                              out=_tile(buffers().low, rows.stop - rows.start, len(cols)))
            cols = cols[(low.add_(sz[rows][:, None]) < bound[:, None]).any(0)]
            if len(cols):
                yield rows, cols

    firsts = range(0, len(leaves), _GROUP_LEAVES)
    sample = firsts[:: max(1, len(firsts) // _SHARE_GROUPS)]
    pairs = sum(len(cols) * (rows.stop - rows.start) for first in sample
                for leaf in group_best(first) for rows, cols in candidates(leaf, range(first, first + _GROUP_LEAVES)))
    sampled = sum(int(bounds[min(f + _GROUP_LEAVES, len(leaves))] - bounds[f]) for f in sample)
    if pairs > _PRUNED_MAX_SHARE * sampled * n:
        return None

    def search_group(first: int) -> None:
        """The m best of every row of the group of leaves from ``first``, into best_d/best_i."""
        own, buf = group_best(first), buffers()
        for leaf in own:
            for rows, cols in candidates(leaf, own):
                Y = torch.index_select(Xc, 0, cols, out=buf.y[: len(cols)])
                d2 = torch.addmm(sq[cols][None, :], Xc[rows], Y.T, alpha=-2.0,
                                 out=_tile(buf.d2, rows.stop - rows.start, len(cols)))
                best_d[rows], best_i[rows] = _merge((best_d[rows], best_i[rows]), d2.add_(sq[rows][:, None]), cols, m)

    _on_threads(search_group, firsts, workers)  # groups write disjoint rows
    back = torch.argsort(order)  # leaf order -> row order
    return best_d[back], order[best_i[back]]


def _transpose_into(out: Any, tile: Any, block: int = 256) -> None:
    """``out[:] = tile.T`` by square blocks that stay in cache: 20 ms for a 4096² float32 tile, 44 ms in one go."""
    rows, cols = tile.shape
    for i in range(0, rows, block):
        for j in range(0, cols, block):
            out[j : j + block, i : i + block].copy_(tile[i : i + block, j : j + block].T)


def _symmetric_all_neighbors(X: np.ndarray, m: int, mean: Any) -> tuple[Any, Any]:
    """The m smallest float32 squared distances of every row of ``X`` to the others, and their row numbers.

    Every pair of ``_BLOCK_ROWS`` row blocks is multiplied once (one float32 matmul) and its tile serves both
    blocks' rows (half the flops of a one-way search), with a running top-m per row: memory
    O(block · d + block²), no n × d copy of ``X``.
    """
    import torch

    n = X.shape[0]
    starts = range(0, n, _BLOCK_ROWS)
    best = torch.full((n, m), float("inf")), torch.zeros((n, m), dtype=torch.int64)
    size = min(n, _BLOCK_ROWS)
    # Tiles are written into two preallocated buffers: fresh 64 MB tensors per tile cost more in page
    # faults than the arithmetic on them.
    tile, tile_t = torch.empty(size, size), torch.empty(size, size)
    for i, a in enumerate(starts):
        A, sq_a = _centred_block(X, slice(a, a + size), mean)
        for b in starts[i:]:
            B, sq_b = (A, sq_a) if b == a else _centred_block(X, slice(b, b + size), mean)
            d2 = tile[: len(A), : len(B)]
            torch.addmm(sq_b[None, :], A, B.T, alpha=-2.0, out=d2)
            d2.add_(sq_a[:, None])  # squared distances of the block pair
            if b == a:
                d2.fill_diagonal_(float("inf"))
            ra, rb = slice(a, a + len(A)), slice(b, b + len(B))
            best[0][ra], best[1][ra] = _merge((best[0][ra], best[1][ra]), d2, torch.arange(b, b + len(B)), m)
            if b != a:
                d2_t = tile_t[: len(B), : len(A)]
                _transpose_into(d2_t, d2)
                best[0][rb], best[1][rb] = _merge((best[0][rb], best[1][rb]), d2_t, torch.arange(a, a + len(A)), m)
    return best


def _exact_neighbors(
    X: np.ndarray, k: int, queries: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest rows of ``X`` for each query row (default: every row), self excluded.

    ``queries`` are row positions into ``X``. Candidates are ranked by ``‖x‖² + ‖y‖² − 2 x·y`` in float32 on
    mean-centred rows (centring limits cancellation), computed tile by tile — blocks of ``_BLOCK_ROWS`` query
    rows against blocks of as many database rows, one float32 matmul each — with a running top-k per query,
    so memory is O(block · d + block²) and no n × d copy of ``X`` is made. Without ``queries`` the pruned
    search (:func:`_pruned_all_neighbors`, same candidates, fewer pairs; one centred copy of ``X``) runs
    where its estimate says it compares few pairs, else the symmetric one (:func:`_symmetric_all_neighbors`).
    The best ``k + max(5, k // 2)`` float32 candidates are then re-ranked by distances recomputed directly in
    float64 and the best k kept, so float32 rounding (≈ 1e-6 of the squared norms) cannot swap a neighbour
    with a non-neighbour unless more candidates than that tie within the rounding.
    Returns ``(indices int64 (q, k), distances float64 (q, k))``, Euclidean (not squared), ascending.
    """
    import torch

    n = X.shape[0]
    m = min(n - 1, k + max(5, k // 2))  # float32 candidates, re-ranked in float64 below
    mean = torch.from_numpy(X.mean(axis=0, dtype=np.float64).astype(np.float32))
    starts = range(0, n, _BLOCK_ROWS)
    with torch.no_grad():
        if queries is None:
            q_idx = np.arange(n)
            # The pruned search's setup runs on one torch thread, its groups on as many threads as torch had;
            # the symmetric search's large tiles use torch's threads as they are.
            with _one_torch_thread() as workers:
                best = _pruned_all_neighbors(X, m, mean, workers)
            best = best or _symmetric_all_neighbors(X, m, mean)
        else:
            q_idx = np.asarray(queries, dtype=np.int64)
            Q, sq_q = _centred_block(X, q_idx, mean)
            q_pos = torch.from_numpy(q_idx)
            best = torch.full((len(q_idx), m), float("inf")), torch.zeros((len(q_idx), m), dtype=torch.int64)
            for b in starts:
                B, sq_b = _centred_block(X, slice(b, b + _BLOCK_ROWS), mean)
                d2 = torch.addmm(sq_b[None, :], Q, B.T, alpha=-2.0).add_(sq_q[:, None])
                own = torch.nonzero((q_pos >= b) & (q_pos < b + len(B))).ravel()
                d2[own, q_pos[own] - b] = float("inf")  # a query is not its own neighbour
                best = _merge(best, d2, torch.arange(b, b + len(B)), m)
    indices = best[1].numpy()
    distances = _pair_distances(X, q_idx, indices)
    order = np.argsort(distances, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(indices, order, 1), np.take_along_axis(distances, order, 1)


def _pair_distances(X: np.ndarray, rows: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Float64 Euclidean distances ``‖X[rows[i]] − X[indices[i, j]]‖``, in blocks of bounded memory.

    In torch by blocks of ≈ 4 MB of float64 differences, small enough to stay in cache, spread over torch's
    thread count of threads of one torch thread each (:func:`_on_threads`): 0.4 s for 20k × 15 pairs at
    d = 1024 where numpy took 1.0 s (≈ 0.75 s CPU on one Zen 3 core). Each thread gathers and widens into its
    own preallocated buffers: fresh ≈ 6 MB tensors per block cost about as much in page faults as the
    arithmetic (20k × 15 pairs, d = 1024, load 10: 1.22 → 0.68 s CPU on one thread, 1.40 → 0.93 s on two;
    the same values, bitwise).
    """
    import torch

    q, k = indices.shape
    Xt = torch.from_numpy(np.ascontiguousarray(X))
    rows_t, ind_t = torch.from_numpy(np.asarray(rows, np.int64)), torch.from_numpy(np.asarray(indices, np.int64))
    out = torch.empty((q, k), dtype=torch.float64)
    step = max(1, (4 * 2**20) // (8 * max(1, k * X.shape[1])))
    local = threading.local()

    def distances(start: int) -> None:
        block = slice(start, start + step)
        pairs = ind_t[block].reshape(-1)
        if not hasattr(local, "gathered"):
            size = min(step, q) * k  # a few queries (the recall estimate's) need no 4 MB
            local.gathered = torch.empty((size, X.shape[1]), dtype=Xt.dtype)
            local.diff = torch.empty((size, X.shape[1]), dtype=torch.float64)
        gathered = torch.index_select(Xt, 0, pairs, out=local.gathered[: len(pairs)])
        diff = local.diff[: len(pairs)].copy_(gathered).view(-1, k, X.shape[1])
        diff.sub_(Xt[rows_t[block]].double()[:, None, :])
        out[block] = torch.linalg.vector_norm(diff, dim=2)

    with torch.no_grad(), _one_torch_thread() as workers:
        _on_threads(distances, range(0, q, step), workers)
    return out.numpy()


# NN-descent's kernels that pynndescent (0.7.0) declares without numba's cache (or with cache=False), all reached
# through its pynndescent_ module. Not nn_descent and nn_descent_internal themselves: numba cannot cache them
# ("uses dynamic globals"), so they compile in every process.
_NNDESCENT_UNCACHED_KERNELS = (
    "deheap_sort", "build_candidates_owner", "generate_graph_update_array", "sort_updates_by_block",
    "apply_sorted_graph_update_array", "generate_graph_update_array_batched", "generate_leaf_updates",
    "init_rp_tree", "init_random", "process_candidates",
)


@functools.cache
def _cache_nndescent_kernels() -> None:
    """numba's on-disk cache for :data:`_NNDESCENT_UNCACHED_KERNELS` (once per process, before they compile).

    NN-descent of 3000 × 64 points in a fresh process whose ``NUMBA_CACHE_DIR`` an earlier one filled (load
    10–13, docs/benchmarks.md): 42.7 s CPU with pynndescent's own caching, 20–22 s with these kernels cached;
    the same neighbours.
    """
    from pynndescent import pynndescent_

    cache_numba_kernels(getattr(pynndescent_, name, None) for name in _NNDESCENT_UNCACHED_KERNELS)


def _approximate_neighbors(
    X: np.ndarray, k: int, search: int, random_state: Any
) -> tuple[np.ndarray, np.ndarray]:
    """k approximate nearest neighbours by NN-descent keeping ``search`` per point, self excluded, ascending.

    Distances are NN-descent's (computed in float32), returned as float64.
    """
    from pynndescent import NNDescent  # lazy: numba compiles on first use

    _cache_nndescent_kernels()
    n = X.shape[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numba/pynndescent chatter about threading layers and seeds
        index = NNDescent(
            np.ascontiguousarray(X, dtype=np.float32),
            metric="euclidean",
            n_neighbors=min(n, search),
            random_state=seed_from(random_state),
            low_memory=True,
            compressed=True,
        )
        ind, dist = index.neighbor_graph
    ind, dist = np.asarray(ind, dtype=np.int64), np.asarray(dist, dtype=np.float64)
    # Drop each row's self (with duplicate rows it need not come first) and missing entries (-1): both get
    # an infinite distance and sort last.
    dist = np.where((ind < 0) | (ind == np.arange(n)[:, None]), np.inf, dist)
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    ind, dist = np.take_along_axis(ind, order, 1), np.take_along_axis(dist, order, 1)
    missing = ~np.isfinite(dist).all(axis=1)
    if missing.any():  # rare: NN-descent left a row short; fill those rows exactly
        rows = np.flatnonzero(missing)
        ind[rows], dist[rows] = _exact_neighbors(X, k, queries=rows)
    # NN-descent's own (float32) distances are kept: recomputing all n·k of them in float64 would cost ~45 s
    # CPU at n = 1M (a gather of n·k rows of X) for digits that an approximate graph does not need.
    return ind, dist


def recall_query_count(n: int, n_queries: int) -> int:
    """Query rows the recall estimate uses: ``n_queries``, capped so that queries × n ≤ ``_RECALL_PAIRS``.

    Each query costs an exact search over all n rows; the cap keeps the estimate at ≈ 0.4 TFLOP (d = 1024)
    whatever n is: 1000 queries up to n = 200k, 200 at n = 1M (2000 neighbour checks, standard error of a
    recall near 0.99 about 0.002). Never fewer than ``min(n, n_queries, 100)``.
    """
    return min(n, n_queries, max(100, _RECALL_PAIRS // n))


def estimate_recall(X: np.ndarray, indices: np.ndarray, n_queries: int, random_state: Any) -> float:
    """Recall@k of ``indices`` against exact neighbours, on ``n_queries`` random query rows (at most n).

    A returned neighbour counts as correct when its distance is within the exact k-th neighbour distance
    (plus 1e-6 relative slack), so ties and duplicate rows are not counted as misses.
    """
    n, k = indices.shape
    rows = np.sort(rng_from(random_state).choice(n, size=min(n, n_queries), replace=False))
    _, exact_d = _exact_neighbors(X, k, queries=rows)
    got_d = _pair_distances(X, rows, indices[rows])
    radius = exact_d[:, -1:] * (1 + 1e-6) + 1e-12
    return float(np.mean(got_d <= radius))


class KNNGraph:
    """Symmetric k-nearest-neighbour affinity graph of the rows of ``X`` (Euclidean distance).

    ``B[i, j] = 1`` when j is one of the ``n_neighbors`` nearest neighbours of i (i itself excluded);
    ``symmetrize="or"`` gives the binary ``A = max(B, Bᵀ)``, ``"mean"`` gives ``(B + Bᵀ)/2`` (entries 1 for
    mutual neighbours, 1/2 for one-sided ones, as CoRelAy's SparseKNN). The diagonal is 0.

    ``method="auto"`` uses the exact search for ``n <= exact_max_n``, NN-descent otherwise. NN-descent keeps
    ``search_neighbors`` candidates per point (default ``3k + 1``, self included) and returns the best k: its
    recall grows with that degree — recall@10 on 10k well separated Gaussian blobs in d = 1024 (a hard case):
    0.87 / 0.96 / 0.99 at 21 / 31 / 41 candidates, for 1.5 / 3.9 / 6.0 s.

    ``pca_components=p`` (fewer than the features) runs either search on the rows' scores on ≈ their top p
    principal directions instead of the features, as single-cell tools build their graphs on the top
    principal components: a cheaper search, and neighbours of the denoised rows. It is an approximation of the
    graph of the features whatever the method, so ``recall_`` is then always estimated against the exact
    neighbours *in the features*, and ``distances_`` are distances between the scores.

    Fitted attributes: ``adjacency_`` (scipy.sparse CSR, float64, symmetric), ``indices_`` (n, k) int64 and
    ``distances_`` (n, k) float64 Euclidean distances (exact: recomputed in float64; approximate: NN-descent's
    float32 values), ascending, self excluded; ``method_`` ("exact" or
    "approximate"); ``search_dims_``: the dimension searched (p, or the number of features); ``recall_``: 1.0
    for the exact search of the features, otherwise recall@k estimated against exact neighbours on
    ``recall_queries_`` random rows (NaN when ``recall_queries=0``): ``recall_queries``, capped at large n so
    that the estimate's exact search stays cheap (:func:`recall_query_count`: 200 queries at n = 1M).
    """

    def __init__(
        self,
        n_neighbors: int = 10,
        method: str = "auto",
        symmetrize: str = "or",
        random_state: Any = None,
        exact_max_n: int = 20000,
        recall_queries: int = 1000,
        search_neighbors: int | None = None,
        pca_components: int | None = None,
    ) -> None:
        self.n_neighbors = n_neighbors
        self.method = method
        self.symmetrize = symmetrize
        self.random_state = random_state
        self.exact_max_n = exact_max_n
        self.recall_queries = recall_queries
        self.search_neighbors = search_neighbors
        self.pca_components = pca_components

    def fit(self, X: Any, y: Any = None) -> KNNGraph:
        k = check_int(self.n_neighbors, "n_neighbors", minimum=1)
        check_choice(self.method, "method", ("auto", "exact", "approximate"))
        check_choice(self.symmetrize, "symmetrize", ("or", "mean"))
        check_int(self.exact_max_n, "exact_max_n", minimum=0)
        check_int(self.recall_queries, "recall_queries", minimum=0)
        search = 3 * k + 1 if self.search_neighbors is None else self.search_neighbors
        search = check_int(search, "search_neighbors", minimum=k + 1)
        if self.pca_components is not None:
            check_int(self.pca_components, "pca_components", minimum=1)
        rng = rng_from(self.random_state)
        X = check_matrix(X, "X", dtype=np.float32)
        n, d = X.shape
        if k >= n:
            raise BadInputError(
                f"n_neighbors={k} must be smaller than the number of samples n={n}; lower n_neighbors"
            )
        method = self.method
        if method == "auto":
            method = "exact" if n <= self.exact_max_n else "approximate"

        projected = self.pca_components is not None and self.pca_components < d
        searched = _principal_scores(X, self.pca_components) if projected else X
        if method == "exact":
            self.indices_, self.distances_ = _exact_neighbors(searched, k)
        else:
            self.indices_, self.distances_ = _approximate_neighbors(searched, k, search, rng)
        if method == "exact" and not projected:
            self.recall_, self.recall_queries_ = 1.0, 0
        else:
            self.recall_queries_ = recall_query_count(n, self.recall_queries)
            self.recall_ = (
                estimate_recall(X, self.indices_, self.recall_queries_, rng) if self.recall_queries_ else np.nan
            )
        self.method_ = method
        self.search_dims_ = searched.shape[1]
        self.adjacency_ = knn_adjacency(self.indices_, self.symmetrize)
        self.n_samples_ = n
        return self


def knn_adjacency(indices: np.ndarray, symmetrize: str = "or") -> sp.csr_matrix:
    """Symmetric sparse adjacency from neighbour lists ``indices`` (n, k) (self excluded); see KNNGraph."""
    check_choice(symmetrize, "symmetrize", ("or", "mean"))
    n, k = indices.shape
    B = sp.csr_matrix(
        (np.ones(n * k), (np.repeat(np.arange(n), k), indices.ravel())), shape=(n, n), dtype=np.float64
    )
    B.sum_duplicates()
    B.data[:] = 1.0
    A = B.maximum(B.T) if symmetrize == "or" else (B + B.T) * 0.5
    A = sp.csr_matrix(A)
    A.setdiag(0)
    A.eliminate_zeros()
    A.sort_indices()
    return A
