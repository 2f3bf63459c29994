"""Where work runs: dask.distributed, in this process (threads), on a LocalCluster, or on a remote cluster.

``scheduler`` strings (CLI ``--scheduler``, pipeline files):

- ``None``: an in-process dask.distributed client on threads (no network, no extra processes);
- ``"local:N"``: a LocalCluster of N worker processes bound to 127.0.0.1, started and stopped here;
- anything else: the address of a running scheduler, e.g. ``tcp://10.0.0.5:8786``. Its workers must be
  able to import spray and the user's model/dataset factories.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Iterator
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

    Results are yielded in completion order, so the
    caller can store each result as soon as it exists. A task whose worker dies is retried.
    """
    from distributed import as_completed
    from tqdm import tqdm

    items = list(items)
    if not items:
        return
    with dask_client(scheduler) as client:
        futures = [
            client.submit(fn, *_scatter_large(client, arguments(item)), pure=False, retries=RETRIES)
            for item in items
        ]
        owner = {future.key: item for future, item in zip(futures, items)}
        with tqdm(total=len(items), desc=desc, disable=not progress) as bar:
            for future in as_completed(futures):
                result = future.result()
                bar.update()
                yield owner[future.key], result


_SCATTER_BYTES = 2**20


def _scatter_large(client: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """``args`` with every array of at least 1 MB replaced by a future of it (``client.scatter``).

    An array passed to ``submit`` directly is embedded in the task graph, which dask serialises whole
    ("Sending large graph" warnings; a transient copy of a class's features). Scattered, it goes to a worker
    once — and with the default in-process client it is not copied at all.
    """
    import numpy as np

    return tuple(
        client.scatter(a, hash=False) if isinstance(a, np.ndarray) and a.nbytes >= _SCATTER_BYTES else a
        for a in args
    )
