"""Fixtures of the report tests: the report of the shared analysed store (tests/conftest.py), and Debian's
chromium."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest


CONV_MODEL, CONV_DATA = "tests.data.factories:conv_model", "tests.data.factories:conv_data"


@pytest.fixture(scope="session")
def concept_store(tmp_path_factory) -> Path:
    """tests.data.factories' conv model on its data (40 images of 8 × 8; the first 10 of class 1 with a bright
    corner) attributed twice, heatmaps and latent relevance at its layer features.3 (6 channels, 2 × 2
    cells), and analysed by the 'tiny' pipeline ("spray") and its concept-level variant ("concept")
    (read-only for tests)."""
    from spray.cli import main
    from spray.testing import pipeline_text

    root = tmp_path_factory.mktemp("concept")
    store, pixel, concept = root / "audit.h5", root / "pixel.toml", root / "concept.toml"
    pixel.write_text(pipeline_text("tiny"))
    concept.write_text(pipeline_text("tiny", analysis={"name": "concept", "attribution": "latent"},
                                     preprocess={"channel_reduction": "keep", "normalization": "l2"}))
    for argv in (["attribute", "--model", CONV_MODEL, "--data", CONV_DATA, "--store", store],
                 ["attribute", "--model", CONV_MODEL, "--data", CONV_DATA, "--store", store, "--latent", "default"],
                 ["analyze", store, "--pipeline", pixel], ["analyze", store, "--pipeline", concept]):
        assert main([str(a) for a in argv]) == 0, argv
    return store


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
