"""Suite-wide set-up: numba's compile cache (umap/pynndescent) lives in the repo so it is paid once."""

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
