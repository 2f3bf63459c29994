"""Fixtures of the export tests: the analysed store shared with tests/report (built once per session)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest


def audit_store_module():
    """tests/report/audit_store.py, imported by path once (the test directories are not packages)."""
    name = "spray_tests_audit_store"
    if name not in sys.modules:
        path = Path(__file__).parents[1] / "report" / "audit_store.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="session")
def audit_store(tmp_path_factory) -> Path:
    return audit_store_module().shared_store(tmp_path_factory)


@pytest.fixture(scope="session")
def virelay_project(audit_store, tmp_path_factory) -> Path:
    from spray.export import export_virelay

    return export_virelay(audit_store, tmp_path_factory.mktemp("virelay"))
