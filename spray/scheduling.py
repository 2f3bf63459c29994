"""Where work runs: dask.distributed, in this process (threads), on a LocalCluster, or on a remote cluster.

``scheduler`` strings (CLI ``--scheduler``, pipeline files):

- ``None``: :func:`dask_map` runs on a pool of threads in this process, without dask: no sockets at all
  (dask's in-process client would serve a dashboard on loopback, and its in-process transport names
  itself by a UDP ``connect`` to 8.8.8.8); :func:`dask_client` gives an in-process client on threads;
- ``"local:N"``: a LocalCluster of N worker processes bound to 127.0.0.1, started and stopped here;
- anything else: the address of a running scheduler, e.g. ``tcp://10.0.0.5:8786``. Its workers must be
  able to import spray and the user's model/dataset factories.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from contextlib import contextmanager
from itertools import islice
from typing import Any, TypeVar

from spray._checks import check_int
from spray.errors import BadInputError, SprayError

T = TypeVar("T")

# dask's scheduler always serves HTTP (the dashboard, health checks); without an address it listens on
# port 8787 of every interface. spray binds every server it starts to a random loopback port instead.
_LOOPBACK = {"dashboard_address": "127.0.0.1:0", "worker_dashboard_address": "127.0.0.1:0"}

# dask starts worker processes with MALLOC_TRIM_THRESHOLD_=65536 (to hand freed memory back to the OS).
# Setting it also pins glibc's mmap threshold at 128 KiB, so every larger tensor torch allocates is
# mmap'ed and page-faulted anew: +35 % CPU for LRP on the demo CNN. With a 32 MiB mmap threshold such
# tensors come from the heap again (docs/benchmarks.md, "dask.distributed"). For the clusters spray starts.
_MMAP_THRESHOLD = "distributed.nanny.pre-spawn-environ.MALLOC_MMAP_THRESHOLD_"

RETRIES = 3
"""How often a task that raised is run again (the result does not depend on the attempt). A task whose
worker died is rescheduled by dask itself, up to ``distributed.scheduler.allowed-failures`` times (3)."""

CONNECT_TIMEOUT = "20s"
"""How long to try to reach a scheduler address before giving up with a :class:`BadInputError`."""


def local_workers(scheduler: str | None) -> int | None:
    """N for ``"local:N"``, None for None or an address; a malformed value is a :class:`BadInputError`.

    Cheap (no connection): callers check their ``scheduler`` with it before any work.
    """
    if scheduler is None:
        return None
    if not isinstance(scheduler, str) or not scheduler.strip():
        raise BadInputError(f"scheduler must be a dask scheduler's address or local:N, got {scheduler!r}")
    local = re.fullmatch(r"local:(\d+)", scheduler)
    if local is None:
        return None
    n = int(local.group(1))
    if n < 1:
        raise BadInputError(f"--scheduler local:N needs N >= 1 worker processes, got {scheduler!r}")
    return n


@contextmanager
def dask_client(scheduler: str | None) -> Iterator[Any]:
    """A dask.distributed Client for ``scheduler`` (see module docstring), closed on exit."""
    from distributed import Client, LocalCluster

    n = local_workers(scheduler)
    if scheduler is None:
        with Client(processes=False, n_workers=1, threads_per_worker=os.cpu_count() or 1, **_LOOPBACK) as client:
            yield client
        return
    if n is not None:
        import dask

        tuning = {} if dask.config.get(_MMAP_THRESHOLD, None) is not None else {_MMAP_THRESHOLD: 32 * 2**20}
        with _environ_restored(), dask.config.set(tuning):
            with _environ_restored():  # once the workers run, and again after any restart (outer block)
                cluster = LocalCluster(
                    n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1", **_LOOPBACK
                )
            with cluster, Client(cluster) as client:
                yield client
        return
    try:
        client = Client(scheduler, timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError, ValueError) as exc:
        raise BadInputError(f"cannot reach the dask scheduler at {scheduler!r}: {exc}") from None
    with client:
        yield client


@contextmanager
def _environ_restored() -> Iterator[None]:
    """Undo, on exit, what the block does to ``os.environ``.

    A nanny writes its workers' environment (``OMP_NUM_THREADS=1``, ``MALLOC_TRIM_THRESHOLD_``, ...) into
    this process's ``os.environ`` before each spawn (a restart too), and never takes it back: every process
    this one starts later would run single-threaded, with other floating-point reductions than before.
    """
    saved = dict(os.environ)
    try:
        yield
    finally:
        for key in set(os.environ) - set(saved):
            del os.environ[key]
        os.environ.update(saved)


def dask_map(
    fn: Callable[..., Any],
    items: Iterable[T],
    arguments: Callable[[T], tuple[Any, ...]],
    *,
    scheduler: str | None = None,
    progress: bool = True,
    desc: str = "tasks",
) -> Iterator[tuple[T, Any]]:
    """Run ``fn(*arguments(item))`` for every item as dask tasks; yield ``(item, result)`` as each ends.

    Results are yielded in completion order, so the caller can store each result as soon as it exists.
    A task that raises is retried on dask (:data:`RETRIES`); one whose worker dies is rescheduled by dask.
    Without a ``scheduler`` the tasks run on a pool of local threads, without dask (and without a socket).
    At most :func:`task_window` tasks are submitted at a time, so their inputs and results stay bounded in
    memory.
    """
    items = list(items)
    if not items:
        return
    if scheduler is None:
        yield from _map_on_threads(fn, items, arguments, progress=progress, desc=desc)
        return
    with dask_client(scheduler) as client:
        yield from map_on(client, fn, items, arguments, window=task_window(client), progress=progress, desc=desc)


def _map_on_threads(
    fn: Callable[..., Any], items: Sequence[T], arguments: Callable[[T], tuple[Any, ...]], *, progress: bool,
    desc: str,
) -> Iterator[tuple[T, Any]]:
    """:func:`dask_map` on a local thread pool, with two tasks per thread submitted at a time."""
    from tqdm import tqdm

    threads = os.cpu_count() or 1
    todo = iter(items)
    with ThreadPoolExecutor(max_workers=threads) as pool, tqdm(
        total=len(items), desc=desc, disable=not progress
    ) as bar:
        running = {pool.submit(fn, *arguments(item)): item for item in islice(todo, 2 * threads)}
        while running:
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                item = running.pop(future)
                result = future.result()
                for following in islice(todo, 1):
                    running[pool.submit(fn, *arguments(following))] = following
                bar.update()
                yield item, result


def task_window(client: Any) -> int:
    """Tasks to keep submitted on ``client``'s cluster: two per worker thread (one running, one ready)."""
    return 2 * max(1, sum(client.nthreads().values()))


def map_on(
    client: Any,
    fn: Callable[..., Any],
    items: Sequence[T],
    arguments: Callable[[T], tuple[Any, ...]],
    *,
    window: int | None = None,
    progress: bool = True,
    desc: str = "tasks",
) -> Iterator[tuple[T, Any]]:
    """:func:`dask_map` on an open ``client``, with at most ``window`` tasks submitted at a time.

    The window bounds the finished results that wait on the workers for the caller (None: submit all at
    once); the next task is submitted whenever the caller takes a result. A task that dask forgot because a
    dying worker took the only copy of its data along is submitted again (``arguments`` called anew), up to
    :data:`RETRIES` times.
    """
    from concurrent.futures import CancelledError

    from distributed import KilledWorker, as_completed
    from tqdm import tqdm

    if window is not None:
        check_int(window, "window", minimum=1)
    todo = iter(items)
    owner: dict[str, tuple[T, int]] = {}

    def submit(item: T, lost: int = 0) -> Any:
        future = client.submit(fn, *_scatter_large(client, arguments(item)), pure=False, retries=RETRIES)
        owner[future.key] = (item, lost)
        return future

    running = as_completed([submit(item) for item in islice(todo, window)])
    with tqdm(total=len(items), desc=desc, disable=not progress) as bar:
        for future in running:
            item, lost = owner.pop(future.key)
            try:
                result = future.result()
            except CancelledError as exc:
                # A worker died holding the only copy of data the task needs (a scattered argument, which dask
                # cannot recompute) or its finished result: the scheduler forgets the task. Submitting it
                # again calls ``arguments`` again, which sends the data anew.
                if lost < RETRIES:
                    running.add(submit(item, lost + 1))
                    continue
                raise _workers_died(exc) from None
            except KilledWorker as exc:  # the task's own runs killed its workers
                raise _workers_died(exc) from None
            for next_item in islice(todo, 1):
                running.add(submit(next_item))
            bar.update()
            yield item, result


def _workers_died(exc: BaseException) -> SprayError:
    return SprayError(
        f"dask workers kept dying while running tasks ({type(exc).__name__}: {exc}); is a task too large for a "
        "worker's memory, or does the model or data code crash the process? Work already stored is kept: fix "
        "the cause (e.g. a smaller --batch-size) and run again to resume"
    )


_SCATTER_BYTES = 2**20


def _scatter_large(client: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """``args`` with every array of at least 1 MB replaced by a future of it (``client.scatter``).

    An array passed to ``submit`` directly is embedded in the task graph, which dask serialises whole
    ("Sending large graph" warnings; a transient copy of a class's features). Scattered, it goes to a worker
    once.
    """
    import numpy as np

    return tuple(
        client.scatter(a, hash=False) if isinstance(a, np.ndarray) and a.nbytes >= _SCATTER_BYTES else a
        for a in args
    )
