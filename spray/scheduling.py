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
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import as_completed as futures_completed
from contextlib import contextmanager
from typing import Any, TypeVar

from spray.errors import BadInputError

T = TypeVar("T")

# dask's scheduler always serves HTTP (the dashboard, health checks); without an address it listens on
# port 8787 of every interface. spray binds every server it starts to a random loopback port instead.
_LOOPBACK = {"dashboard_address": "127.0.0.1:0", "worker_dashboard_address": "127.0.0.1:0"}

RETRIES = 3
"""How often a task is retried when its worker dies (the result does not depend on the attempt)."""


@contextmanager
def dask_client(scheduler: str | None) -> Iterator[Any]:
    """A dask.distributed Client for ``scheduler`` (see module docstring), closed on exit."""
    from distributed import Client, LocalCluster

    if scheduler is None:
        with Client(processes=False, n_workers=1, threads_per_worker=os.cpu_count() or 1, **_LOOPBACK) as client:
            yield client
        return
    local = re.fullmatch(r"local:(\d+)", scheduler)
    if local:
        n = int(local.group(1))
        if n < 1:
            raise BadInputError(f"--scheduler local:N needs N >= 1 worker processes, got {scheduler!r}")
        with LocalCluster(
            n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1", **_LOOPBACK
        ) as cluster, Client(cluster) as client:
            yield client
        return
    try:
        client = Client(scheduler, timeout="20s")
    except (OSError, TimeoutError, ValueError) as exc:
        raise BadInputError(f"cannot reach the dask scheduler at {scheduler!r}: {exc}") from None
    with client:
        yield client


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
    A task whose worker dies is retried. Without a ``scheduler`` the tasks run on local threads.
    """
    from tqdm import tqdm

    items = list(items)
    if not items:
        return
    if scheduler is None:
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            running = {pool.submit(fn, *arguments(item)): item for item in items}
            with tqdm(total=len(items), desc=desc, disable=not progress) as bar:
                for future in futures_completed(running):
                    bar.update()
                    yield running[future], future.result()
        return
    from distributed import as_completed

    with dask_client(scheduler) as client:
        futures = [client.submit(fn, *arguments(item), pure=False, retries=RETRIES) for item in items]
        owner = {future.key: item for future, item in zip(futures, items)}
        with tqdm(total=len(items), desc=desc, disable=not progress) as bar:
            for future in as_completed(futures):
                result = future.result()
                bar.update()
                yield owner[future.key], result
