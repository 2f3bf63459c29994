"""Analysis tests: numba's compile cache in the repo (umap/pynndescent compile once), shared synthetic data."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("NUMBA_CACHE_DIR", str(Path(__file__).resolve().parents[2] / ".numba_cache"))

import numpy as np  # noqa: E402
import pytest  # noqa: E402


def make_blobs(sizes, d=16, spread=1.0, separation=10.0, seed=0):
    """Gaussian blobs of the given sizes with centres ``separation`` apart (per axis); returns X, labels."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(sizes), d)) * separation
    X = np.concatenate([c + spread * rng.normal(size=(s, d)) for c, s in zip(centres, sizes)])
    labels = np.repeat(np.arange(len(sizes)), sizes)
    return X.astype(np.float32), labels


@pytest.fixture
def blobs():
    return make_blobs
