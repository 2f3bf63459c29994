"""Shared by the analysis processors: boundary checks of arrays and labels (every failure names the offending
parameter; the scalar checks live in spray._checks and are re-exported here), seeds, thread limits, numba's
cache for library kernels."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from numbers import Integral
from typing import Any

import numpy as np

from spray._checks import check_choice, check_int, check_real
from spray.errors import BadInputError

__all__ = ["cache_numba_kernels", "check_choice", "check_int", "check_labels", "check_matrix", "check_real",
           "held_threads", "limited_threads", "pinned_threads", "rng_from", "seed_from"]


def check_matrix(x: Any, name: str, *, min_rows: int = 1, dtype: Any = np.float64) -> np.ndarray:
    """A finite 2-D array with at least ``min_rows`` rows, as ``dtype``; messages name ``name`` and rows."""
    try:
        arr = np.asarray(x, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise BadInputError(f"{name} must be a numeric 2-D array: {exc}") from None
    if arr.ndim != 2:
        raise BadInputError(f"{name} must be 2-D (n_samples, n_features), got shape {arr.shape}")
    if arr.shape[0] < min_rows:
        raise BadInputError(f"{name} needs at least {min_rows} rows, got {arr.shape[0]}")
    if arr.shape[1] < 1:
        raise BadInputError(f"{name} needs at least one column, got shape {arr.shape}")
    # In row blocks: a whole-matrix isfinite() would be an n x d boolean temporary (1 GB at 1M x 1024).
    step = max(1, 2**24 // arr.shape[1])
    bad = np.concatenate([~np.isfinite(arr[a : a + step]).all(axis=1) for a in range(0, arr.shape[0], step)])
    if bad.any():
        rows = np.flatnonzero(bad)
        raise BadInputError(
            f"{name} has non-finite values in {rows.size} row(s), e.g. rows {rows[:10].tolist()}"
        )
    return arr


def check_labels(labels: Any, n: int, name: str = "labels") -> np.ndarray:
    """Integer cluster labels of length ``n`` (noise is ``-1``)."""
    arr = np.asarray(labels)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise BadInputError(f"{name} must have shape ({n},) to match the embedding, got {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if not (np.issubdtype(arr.dtype, np.floating) and np.all(arr == np.round(arr))):
            raise BadInputError(f"{name} must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if (arr < -1).any():
        raise BadInputError(f"{name} must be >= -1 (-1 marks noise), got {int(arr.min())}")
    return arr


def rng_from(random_state: Any, name: str = "random_state") -> np.random.Generator:
    """A numpy Generator from None, an int seed, a Generator or a legacy RandomState."""
    if random_state is None or isinstance(random_state, np.random.Generator):
        return np.random.default_rng(random_state)
    if isinstance(random_state, np.random.RandomState):
        return np.random.default_rng(random_state.randint(0, 2**31 - 1))
    if isinstance(random_state, Integral) and not isinstance(random_state, bool) and random_state >= 0:
        return np.random.default_rng(int(random_state))
    raise BadInputError(f"{name} must be None, a non-negative int or a numpy Generator, got {random_state!r}")


def seed_from(random_state: Any, name: str = "random_state") -> int | None:
    """An int seed for libraries that want one (sklearn, umap, pynndescent); None stays None."""
    if random_state is None:
        return None
    rng = rng_from(random_state, name)  # validates
    if isinstance(random_state, Integral):
        return int(random_state)
    return int(rng.integers(0, 2**31 - 1))


class _ThreadPin:
    """One BLAS/OpenMP thread count held for a whole computation that runs on several threads.

    threadpoolctl's limits are process-wide: class threads that each set and restore them restore under each
    other's running fits, so a reduction's thread count — and the last digits of its result — would depend on
    timing. The pin is set by the thread that starts the work, joined by the threads that do it (they change
    nothing) and restored by the last holder, which is the thread that set it when it holds around all the
    work (OpenBLAS does not reliably take a count raised from another thread than the one that lowered it).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._holders = 0
        self._limiter: Any = None
        self.threads: int | None = None

    @contextmanager
    def __call__(self, n_threads: int) -> Iterator[None]:
        from threadpoolctl import threadpool_limits

        with self._lock:
            if self._holders == 0:
                self._limiter, self.threads = threadpool_limits(limits=n_threads), n_threads
            self._holders += 1
        try:
            yield
        finally:
            with self._lock:
                self._holders -= 1
                if self._holders == 0:
                    self._limiter.restore_original_limits()
                    self._limiter, self.threads = None, None


_PIN = _ThreadPin()


def held_threads() -> int | None:
    """The BLAS/OpenMP thread count pinned by :func:`pinned_threads` now (None: none is pinned)."""
    return _PIN.threads


@contextmanager
def pinned_threads(n_threads: int) -> Iterator[None]:
    """Hold ``n_threads`` BLAS/OpenMP threads for work spread over threads: enter it in the thread that starts
    the work and around all of it, and in each worker thread; a count already held stays (see :class:`_ThreadPin`).
    While a pin is held, :func:`limited_threads` changes nothing."""
    with _PIN(check_int(n_threads, "n_threads", minimum=1)):
        yield


@contextmanager
def limited_threads(n_threads: int | None) -> Iterator[None]:
    """Cap OpenMP/BLAS threads (threadpoolctl) for the duration; ``None`` leaves the libraries' defaults, and
    so does a count held by :func:`pinned_threads` (an analysis pins one count for all its classes, so that
    results do not depend on which classes ran together).

    Why few threads: scikit-learn's k-means (OpenMP) and ARPACK's small BLAS calls (OpenBLAS) spin-wait at
    barriers. With the cores busy (other workers, parallel per-class analyses) we measured k-means on 10k × 32
    at 2–8 s with 2 threads and 0.1–0.3 s with one, and 32 eigenpairs of a 19.4k-node graph at 13.8 s CPU with
    2 BLAS threads and 1.35 s with one; on an idle machine one thread costs at most the thread count.
    """
    if n_threads is None or held_threads() is not None:
        yield
        return
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=check_int(n_threads, "n_threads", minimum=1)):
        yield


def cache_numba_kernels(kernels: Iterable[Any]) -> None:
    """Turn on numba's on-disk cache (``NUMBA_CACHE_DIR``) for library kernels declared without it.

    Call before they first compile: a later process with the same cache directory, library versions and CPU
    then loads them instead of compiling. An entry that is not a numba dispatcher (a library version without
    that kernel: None) is left as it is.
    """
    for kernel in kernels:
        if hasattr(kernel, "enable_caching"):
            kernel.enable_caching()
