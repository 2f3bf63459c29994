"""Fixtures of the export tests: the ViRelAy export of the shared analysed store (tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def virelay_project(audit_store, tmp_path_factory) -> Path:
    from spray.export import export_virelay

    return export_virelay(audit_store, tmp_path_factory.mktemp("virelay"))
