"""Synthetic heatmaps and audit stores with planted cluster structure, for tests, benchmarks and docs.

Every class's heatmaps are noise around a few class-specific "strategy" blobs; one class (``poisoned``)
also has a planted Clever Hans cluster: a share of its samples whose relevance sits on a corner patch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spray.store import AuditStore


@dataclass(frozen=True)
class SyntheticHeatmaps:
    """Heatmaps ``relevance`` (n, 1, s, s) float32, ``labels`` (n,), ``strategy`` (n,) planted cluster ids
    (−1 marks the Clever Hans samples), and ``planted``: positions of the Clever Hans samples."""

    relevance: np.ndarray
    labels: np.ndarray
    strategy: np.ndarray
    planted: np.ndarray


def make_heatmaps(
    n_per_class: int = 60,
    n_classes: int = 3,
    size: int = 16,
    strategies: int = 2,
    poisoned: int = 1,
    poison_fraction: float = 0.25,
    noise: float = 0.05,
    seed: int = 0,
) -> SyntheticHeatmaps:
    """Planted-structure heatmaps: each sample's map is one strategy blob of its class plus noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    relevance, labels, strategy = [], [], []
    for label in range(n_classes):
        centres = rng.uniform(0.25, 0.75, size=(strategies, 2))
        assigned = rng.integers(0, strategies, size=n_per_class)
        if label == poisoned:
            assigned[: int(round(poison_fraction * n_per_class))] = -1
        for s in assigned:
            cy, cx = (0.08, 0.08) if s < 0 else centres[s]
            width = 0.05 if s < 0 else 0.12
            blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * width**2))
            relevance.append(blob + noise * rng.standard_normal((size, size)))
        labels.append(np.full(n_per_class, label))
        strategy.append(assigned)
    relevance_arr = np.asarray(relevance, dtype=np.float32)[:, None]
    labels_arr = np.concatenate(labels).astype(np.int64)
    strategy_arr = np.concatenate(strategy).astype(np.int64)
    return SyntheticHeatmaps(relevance_arr, labels_arr, strategy_arr, np.flatnonzero(strategy_arr < 0))


def write_store(path: str | Path, heatmaps: SyntheticHeatmaps, name: str = "synthetic") -> Path:
    """An audit store holding ``heatmaps`` as attribution ``name`` (targets = labels, logits one-hot)."""
    n = heatmaps.labels.shape[0]
    n_classes = int(heatmaps.labels.max()) + 1
    logits = np.eye(n_classes, dtype=np.float32)[heatmaps.labels]
    with AuditStore(path, mode="a") as store:
        store.prepare_samples(
            n,
            dataset={"name": "synthetic", "size": n},
            model={"name": "synthetic", "hash": "0" * 64},
            label_names=[f"class {c}" for c in range(n_classes)],
        )
        store.create_attribution(
            name,
            input_shape=heatmaps.relevance.shape[1:],
            n_outputs=n_classes,
            attrs={"method": name, "params": {}, "model_hash": "0" * 64, "model_name": "synthetic",
                   "batch_size": n, "target": "label"},
        )
        store.write_batch(
            name, 0, relevance=heatmaps.relevance, logits=logits, target=heatmaps.labels,
            labels=heatmaps.labels, index=np.arange(n),
        )
    return Path(path)
