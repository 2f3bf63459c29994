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
    from spray.workflow import prepare_demo

    return prepare_demo(tmp_path_factory.mktemp("demo"), progress=False)


@pytest.fixture(scope="session")
def audit_store(tmp_path_factory):
    """spray.testing's small analysed audit store with thumbnails and a ClArC result (read-only for tests;
    copy it to change it): what the report and export tests read."""
    from spray.testing import build_audit_store

    return build_audit_store(tmp_path_factory.mktemp("audit") / "audit.h5")
