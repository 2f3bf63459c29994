"""Fixtures of the report tests: the shared analysed store, its report, and Debian's chromium."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def audit_store_module():
    """tests/report/audit_store.py, imported by path once (shared with tests/export; the test directories
    are not packages, so this works in every pytest import mode)."""
    name = "spray_tests_audit_store"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("audit_store.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="session")
def audit_store(tmp_path_factory) -> Path:
    return audit_store_module().shared_store(tmp_path_factory)


@pytest.fixture(scope="session")
def report_path(audit_store, tmp_path_factory) -> Path:
    from spray.report import build_report

    return build_report(audit_store, tmp_path_factory.mktemp("report") / "report.html")


CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium; installed with apt-get when missing (as root), else the test is skipped."""
    found = shutil.which("chromium") or (CHROMIUM if os.path.exists(CHROMIUM) else None)
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("chromium is not installed and cannot be installed here (needs root and apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        subprocess.run(["apt-get", "update"], check=True, capture_output=True, timeout=600, env=env)
        subprocess.run(["apt-get", "install", "-y", "chromium"], check=True,
                       capture_output=True, timeout=900, env=env)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        output = getattr(exc, "stderr", b"") or b""
        pytest.skip(f"chromium could not be installed with apt-get: {output.decode(errors='replace')[-300:]}")
    found = shutil.which("chromium")
    if not found:
        pytest.skip("apt-get installed chromium but no `chromium` executable is on PATH")
    return found
