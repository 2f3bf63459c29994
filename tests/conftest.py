"""Suite-wide set-up: numba's compile cache (umap/pynndescent) lives in the repo so it is paid once; the
session fixtures every test directory shares (the demo audit, a small analysed audit store)."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("NUMBA_CACHE_DIR", str(Path(__file__).resolve().parents[1] / ".numba_cache"))

import pytest


@pytest.fixture(scope="session")
def demo_audit(tmp_path_factory):
    """The embedded demo audit (poisoned digits, trained CNN, EpsilonPlusFlat, default SpRAy), built once."""
    from spray.demo.audit import prepare_demo

    return prepare_demo(tmp_path_factory.mktemp("demo"), progress=False)


@pytest.fixture(scope="session")
def dask_cluster(tmp_path_factory):
    """A LocalCluster of 2 worker processes on 127.0.0.1, shared by the session's dask tests.

    Yields ``(address, signals)``: the scheduler's address and the folder the test factories in
    ``tests/attribution/cluster_factories.py`` read (exported to the workers as ``SPRAY_TEST_SIGNALS``).
    """
    from spray.scheduling import dask_client

    signals = tmp_path_factory.mktemp("signals")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SPRAY_TEST_SIGNALS", str(signals))
        with dask_client("local:2") as client:
            yield client.scheduler.address, signals


@pytest.fixture(scope="session")
def audit_store(tmp_path_factory):
    """spray.testing's small analysed audit store with thumbnails and a ClArC result (read-only for tests;
    copy it to change it): what the report and export tests read."""
    from spray.testing import build_audit_store

    return build_audit_store(tmp_path_factory.mktemp("audit") / "audit.h5")
