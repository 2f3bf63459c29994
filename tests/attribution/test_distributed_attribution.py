"""Attribution sharded over a 2-worker LocalCluster: the same store as one process, a dead worker or a
killed client costs only unfinished work, and bad schedulers or worker-side factories are bad input."""

from __future__ import annotations

import collections
import json
import os
import re
import signal
import subprocess
import sys
import textwrap

import dask
import h5py
import pytest
import torch

from spray import scheduling
from spray.attribution import AttributionRun, WorkerRecipe, attribute_dataset
from spray.attribution.distributed import _shards, _Weights
from spray.attribution.methods import get_method
from spray.cli import main
from spray.data import load_model, model_hash, open_source
from spray.errors import BadInputError, SprayError
from spray.store import AuditStore
from tests.attribution.cluster_factories import N

MODEL = "tests.attribution.cluster_factories:model"
DATA = "tests.attribution.cluster_factories:data"
BATCH = 8
# Attributes that differ between any two runs by design; everything else must match.
PER_RUN_ATTRS = {"created", "attribution_id"}


def run(path, *, data: str = DATA, scheduler: str | None = None, **kwargs) -> dict:
    model = load_model(MODEL)
    return attribute_dataset(path, model, open_source(DATA), AttributionRun(
        get_method("epsilon_plus_flat"), model_hash=model_hash(model), model_name=MODEL, dataset_name=data,
        batch_size=BATCH, progress=False, scheduler=scheduler, recipe=WorkerRecipe(model=MODEL, data=data),
        shard_batches=2, **kwargs,
    ))


def contents(path) -> tuple[dict[str, bytes], dict[str, dict]]:
    """Every dataset's dtype, shape and bytes, and every object's attributes except the per-run ones."""
    arrays: dict[str, bytes] = {}
    attrs: dict[str, dict] = {}

    def visit(name, obj):
        attrs[name] = {k: v for k, v in obj.attrs.items() if k not in PER_RUN_ATTRS}
        if isinstance(obj, h5py.Dataset):
            arrays[name] = (obj.dtype.str, obj.shape, obj[()].tobytes())

    with h5py.File(path, "r") as f:
        attrs["/"] = {k: v for k, v in f.attrs.items() if k not in PER_RUN_ATTRS}
        f.visititems(visit)
    return arrays, attrs


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The single-process store."""
    path = tmp_path_factory.mktemp("reference") / "audit.h5"
    run(path)
    return contents(path)


def on_workers(address: str, fn) -> dict:
    from distributed import Client

    with Client(address) as client:
        return client.run(fn)


def worker_pids(address: str) -> set[int]:
    return set(on_workers(address, os.getpid).values())


def _models_held() -> int:
    from spray.attribution import distributed

    return len(distributed._BUILT)


def assert_same_store(path, reference) -> None:
    arrays, attrs = contents(path)
    want_arrays, want_attrs = reference
    assert sorted(arrays) == sorted(want_arrays)
    for name, value in want_arrays.items():
        assert arrays[name] == value, name
    assert attrs == want_attrs


def test_shards_are_runs_of_consecutive_batches_split_at_gaps():
    batches = [[0, 1], [2, 3], [4, 5], [8, 9], [10]]
    assert _shards(batches, 2) == [[[0, 1], [2, 3]], [[4, 5]], [[8, 9], [10]]]
    assert _shards(batches, 5) == [[[0, 1], [2, 3], [4, 5]], [[8, 9], [10]]]
    assert _shards([], 3) == []


def test_sharded_attribution_equals_the_single_process_store_and_builds_once_per_worker(
    dask_cluster, reference, tmp_path
):
    address, signals = dask_cluster
    (signals / "builds").unlink(missing_ok=True)
    path = tmp_path / "audit.h5"
    summary = run(path, scheduler=address)
    assert (summary["computed"], summary["complete"], summary["scheduler"]) == (N, True, address)
    assert_same_store(path, reference)
    builds = collections.Counter((signals / "builds").read_text().split())
    assert 1 <= len(builds) <= 2 and set(builds.values()) == {1}  # 4 shards, at most 2 builds
    assert set(on_workers(address, _models_held).values()) == {0}  # released when the run ended


def test_a_worker_killed_mid_shard_is_replaced_and_the_store_is_complete_and_identical(
    dask_cluster, reference, tmp_path
):
    address, signals = dask_cluster
    before = worker_pids(address)
    (signals / "kill").touch()
    path = tmp_path / "audit.h5"
    summary = run(path, scheduler=address)
    assert not (signals / "kill").exists(), "no worker reached sample DIE_AT"
    assert worker_pids(address) != before  # the worker that died is gone (its nanny starts another)
    assert (summary["computed"], summary["complete"]) == (N, True)
    assert_same_store(path, reference)


def test_the_weights_are_sent_again_once_the_cluster_has_lost_every_copy():
    with scheduling.dask_client("local:1") as client:
        weights = _Weights(client, {"w": torch.arange(3.0)})
        first = weights.future()
        assert weights.future() is first  # held: sent once
        client.restart()  # the workers start afresh, holding nothing
        again = weights.future()
        assert again is not first and first.status != "finished"
        assert client.gather(again)["w"].tolist() == [0.0, 1.0, 2.0]


def test_a_killed_client_resumes_to_the_identical_store(dask_cluster, reference, tmp_path):
    address, _ = dask_cluster
    path = tmp_path / "audit.h5"
    child = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(f"""
            import os, signal
            from tests.attribution.test_distributed_attribution import run
            def die(start, stop):
                if stop > 2 * {BATCH}:
                    os.kill(os.getpid(), signal.SIGKILL)
            run({str(path)!r}, scheduler={address!r}, on_batch=die)
        """)],
        capture_output=True, text=True, timeout=120,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    with AuditStore(path) as store:
        done = store.attribution_info("epsilon_plus_flat")["done"]
    assert 0 < done < N
    summary = run(path, scheduler=address)
    assert (summary["skipped"], summary["computed"], summary["complete"]) == (done, N - done, True)
    assert_same_store(path, reference)


def test_cli_attribute_with_a_scheduler_address_writes_the_reference_store(
    dask_cluster, reference, tmp_path, capsys
):
    address, _ = dask_cluster
    path = tmp_path / "audit.h5"
    code = main(["attribute", "--model", MODEL, "--data", DATA, "--store", str(path), "--batch-size", str(BATCH),
                 "--scheduler", address])
    assert code == 0, capsys.readouterr().err
    assert json.loads(capsys.readouterr().err.strip().splitlines()[-1])["computed"] == N
    assert_same_store(path, reference)


@pytest.mark.parametrize(("scheduler", "message"), [
    ("local:0", "local:N needs N >= 1 worker processes, got 'local:0'"),
    ("tcp://127.0.0.1:1", "cannot reach the dask scheduler at 'tcp://127.0.0.1:1'"),
])
def test_cli_refuses_a_bad_scheduler_before_touching_the_store(scheduler, message, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(scheduling, "CONNECT_TIMEOUT", "1s")
    path = tmp_path / "audit.h5"
    code = main(["attribute", "--model", MODEL, "--data", DATA, "--store", str(path), "--scheduler", scheduler])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not path.exists()


def test_cli_names_a_factory_the_workers_cannot_import(dask_cluster, tmp_path, capsys, monkeypatch):
    address, _ = dask_cluster
    # Importable here (a folder put on this process's path after the workers started), not on the workers.
    (tmp_path / "only_on_client.py").write_text(
        "from tests.attribution.cluster_factories import model as build\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    code = main(["attribute", "--model", "only_on_client:build", "--data", DATA, "--store",
                 str(tmp_path / "audit.h5"), "--scheduler", address])
    err = capsys.readouterr().err
    assert code == 2, err
    assert re.search(
        r"on dask worker tcp://127\.0\.0\.1:\d+: model 'only_on_client:build': module 'only_on_client' cannot "
        r"be imported", err
    ), err


def test_workers_that_see_other_data_are_refused(dask_cluster, tmp_path):
    address, _ = dask_cluster
    data = "tests.attribution.cluster_factories:data_shorter_on_workers"
    message = f"data '{data}' has {N - 1} samples here but {N} on the client; workers must see the same data"
    with pytest.raises(BadInputError, match=re.escape(message)):
        run(tmp_path / "audit.h5", data=data, scheduler=address)


def test_a_bad_sample_on_a_worker_stops_the_run_naming_it_and_keeps_earlier_batches(dask_cluster, tmp_path):
    address, _ = dask_cluster
    path = tmp_path / "audit.h5"
    model = load_model(MODEL)
    data = "tests.attribution.cluster_factories:data_with_nan"
    with pytest.raises(BadInputError, match=r"non-finite relevance or logits for dataset samples 21;"):
        attribute_dataset(path, model, open_source(data), AttributionRun(
            get_method("epsilon_plus_flat"), model_hash=model_hash(model), model_name=MODEL, dataset_name=data,
            batch_size=BATCH, progress=False, scheduler=address, recipe=WorkerRecipe(model=MODEL, data=data),
            shard_batches=1,
        ))
    with AuditStore(path) as store:
        done = store.read("attributions/epsilon_plus_flat/done")
    assert not done[16:24].any() and done.sum() % BATCH in (0, N % BATCH)


def test_a_task_that_keeps_killing_its_workers_stops_the_run_with_a_message(tmp_path):
    data = "tests.attribution.cluster_factories:data_killing_workers"
    path = tmp_path / "audit.h5"
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):  # the first death is final
        with pytest.raises(SprayError, match=r"dask workers kept dying while running tasks .* run again to resume"):
            run(path, data=data, scheduler="local:1")
    with AuditStore(path) as store:
        done = store.read("attributions/epsilon_plus_flat/done")
    assert not done[16:32].any()  # the shard of rows 16..31 never finished; finished shards may be stored


def test_a_scheduler_without_a_recipe_is_refused():
    with pytest.raises(BadInputError, match=r"scheduler='local:2' needs recipe=WorkerRecipe"):
        AttributionRun(get_method("epsilon_plus_flat"), model_hash="h", model_name=MODEL, dataset_name=DATA,
                       scheduler="local:2")

