"""Where work runs: dask clients that listen on loopback only, results as tasks finish."""

from __future__ import annotations

import os

import numpy as np
import psutil
import pytest

from spray import scheduling
from spray.errors import BadInputError
from spray.scheduling import dask_client, dask_map, local_workers, map_on


def _square(x: int) -> int:
    return x * x


def _total_dying_once(signals: str, values: np.ndarray) -> float:
    """The sum of ``values``; the first call (the one that claims the file ``signals/kill``) kills its worker."""
    try:
        os.unlink(os.path.join(signals, "kill"))
    except FileNotFoundError:
        return float(values.sum())
    os._exit(1)


def _listening() -> list[str]:
    return [c.laddr.ip for c in psutil.Process(os.getpid()).net_connections() if c.status == "LISTEN"]


def test_in_process_client_listens_on_loopback_only():
    with dask_client(None):
        addresses = _listening()
    assert addresses and set(addresses) == {"127.0.0.1"}


def test_dask_map_yields_every_item_with_its_result():
    results = dict(dask_map(_square, [1, 2, 3], lambda x: (x,), progress=False))
    assert results == {1: 1, 2: 4, 3: 9}


def test_local_cluster_of_worker_processes_gives_the_same_results_and_leaves_the_environment_alone():
    environ = dict(os.environ)
    with dask_client("local:2") as client:
        assert dict(os.environ) == environ  # dask's nanny sets OMP_NUM_THREADS=1 etc. here to spawn workers
        results = dict(map_on(client, _square, range(5), lambda x: (x,), progress=False))
    assert dict(os.environ) == environ
    assert results == {x: x * x for x in range(5)}


def test_map_on_keeps_at_most_window_tasks_submitted():
    with dask_client(None) as client:
        seen = []
        for item, result in map_on(client, _square, range(6), lambda x: (x,), window=2, progress=False):
            seen.append((item, result, len(client.futures)))
    assert sorted((i, r) for i, r, _ in seen) == [(x, x * x) for x in range(6)]
    # Held while the caller has a result: the one it holds and at most `window` submitted after it.
    assert max(held for _, _, held in seen) <= 3


def test_a_task_whose_scattered_data_died_with_its_worker_is_submitted_again(tmp_path):
    (tmp_path / "kill").touch()
    values = np.ones(2**18)  # 2 MiB: scattered, so its only copy is on the one worker, which the task kills
    with dask_client("local:1") as client:
        results = list(map_on(client, _total_dying_once, ["a"], lambda _: (str(tmp_path), values), progress=False))
    assert not (tmp_path / "kill").exists()
    assert results == [("a", 2.0**18)]


def test_bad_scheduler_values_are_bad_input(monkeypatch):
    monkeypatch.setattr(scheduling, "CONNECT_TIMEOUT", "1s")
    with pytest.raises(BadInputError, match="local:N needs N >= 1"):
        with dask_client("local:0"):
            pass
    with pytest.raises(BadInputError, match="scheduler must be a dask scheduler's address or local:N, got 2"):
        with dask_client(2):
            pass
    with pytest.raises(BadInputError, match="cannot reach the dask scheduler"):
        with dask_client("tcp://127.0.0.1:1"):
            pass


def test_local_workers_reads_local_n_and_leaves_addresses_alone():
    assert local_workers(None) is None
    assert local_workers("local:3") == 3
    assert local_workers("tcp://127.0.0.1:8786") is None
    with pytest.raises(BadInputError, match="got ''"):
        local_workers("")


def test_local_workers_keep_torch_tensors_off_mmap(dask_cluster):
    from distributed import Client

    address, _ = dask_cluster
    with Client(address) as client:
        # a lambda runs the worker's os.environ.get; os.environ.get itself would pickle this process's environ
        values = client.run(lambda: os.environ.get("MALLOC_MMAP_THRESHOLD_"))
    assert values and set(values.values()) == {str(32 * 2**20)}
