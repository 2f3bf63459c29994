"""Synthetic heatmaps and audit stores with planted cluster structure, for tests, benchmarks and docs.

Every class's heatmaps are noise around a few class-specific "strategy" blobs; one class (``poisoned``)
also has a planted Clever Hans cluster: a share of its samples whose relevance sits on a corner patch.
:func:`write_store` stores such heatmaps; :func:`build_audit_store` makes a whole analysed audit (with
thumbnails and a ClArC result) like the ones the report and the exports read. :func:`pipeline_text` writes
the small SpRAy pipelines the tests analyse such stores with, so that each lives in one place.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def write_store(path: str | Path, heatmaps: SyntheticHeatmaps, name: str = "synthetic",
                params: dict[str, Any] | None = None) -> Path:
    """An audit store holding ``heatmaps`` as attribution ``name`` (targets = labels, logits one-hot) whose
    recorded parameters are ``params`` (none by default)."""
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
            attrs={"method": name, "params": dict(params or {}), "model_hash": "0" * 64, "model_name": "synthetic",
                   "batch_size": n, "target": "label"},
        )
        store.write_batch(
            name, 0, relevance=heatmaps.relevance, logits=logits, target=heatmaps.labels,
            labels=heatmaps.labels, index=np.arange(n),
        )
    return Path(path)


#: Small pipelines by the data they fit, as TOML tables; :func:`pipeline_text` writes one out.
PIPELINES: dict[str, dict[str, dict[str, Any]]] = {
    # make_heatmaps' 16×16 maps, 40 to 60 samples a class.
    "synthetic": {"preprocess": {"grid": 8}, "knn": {"n_neighbors": 8}, "spectral": {"n_eigenpairs": 8},
                  "kmeans": {"k_min": 2, "k_max": 5, "n_init": 1}, "hdbscan": {"min_cluster_size": 5},
                  "fda": {"n_permutations": 30}},
    # 20 to 40 samples a class: the tests' tiny CNNs on 8×8 inputs, small stores of make_heatmaps.
    "tiny": {"preprocess": {"grid": 8}, "knn": {"n_neighbors": 5}, "spectral": {"n_eigenpairs": 6},
             "kmeans": {"k_min": 2, "k_max": 4, "n_init": 1}, "fda": {"n_permutations": 10}},
    # The least work that runs every required node: a 2×2 grid, 15 to 20 samples a class.
    "minimal": {"preprocess": {"grid": 2}, "knn": {"n_neighbors": 4}, "spectral": {"n_eigenpairs": 3},
                "kmeans": {"k_max": 3, "n_init": 1}, "fda": {"n_permutations": 10}},
}


def pipeline_text(preset: str = "synthetic", **tables: dict[str, Any]) -> str:
    """Pipeline TOML of ``PIPELINES[preset]`` with ``tables`` merged in: a table's parameters update the
    preset's, a table the preset lacks is added (``tsne={}`` enables t-SNE at its defaults). Values are
    strings, numbers, booleans or lists of them."""
    if preset not in PIPELINES:
        raise ValueError(f"preset must be one of {', '.join(PIPELINES)}, got {preset!r}")
    merged = {table: dict(params) for table, params in PIPELINES[preset].items()}
    for table, params in tables.items():
        merged.setdefault(table, {}).update(params)
    lines = []
    for table, params in sorted(merged.items(), key=lambda item: item[0] != "analysis"):  # [analysis] first
        lines.append(f"[{table}]")
        lines.extend(f"{key} = {json.dumps(value)}" for key, value in params.items())  # their JSON is TOML
    return "\n".join(lines) + "\n"


# Class 1 holds the planted group and ranks first: its name checks escaping in every place it appears.
AUDIT_LABEL_NAMES = ["melanoma", "<script>alert(1)</script>", "Ödem & nävus “benign”", "tiny"]
AUDIT_SIZE = 16


def _thumbnails(relevance: np.ndarray, labels: np.ndarray, planted: np.ndarray, seed: int = 0) -> np.ndarray:
    """(n, 3, 16, 16) uint8 'images': a tinted background per class, the class's blob, a white square on
    the planted samples (the artifact their relevance sits on)."""
    rng = np.random.default_rng(seed)
    n = labels.size
    tint = np.array([[180, 120, 100], [120, 160, 190], [150, 180, 120], [200, 200, 200]], dtype=np.float64)
    images = tint[labels % 4][:, :, None, None] * np.ones((n, 3, AUDIT_SIZE, AUDIT_SIZE))
    blob = np.clip(relevance[:, 0], 0, None)
    images *= 1 - 0.5 * (blob / blob.max(axis=(1, 2), keepdims=True))[:, None]
    images += rng.normal(0, 8, images.shape)
    images[planted, :, 0:3, 0:3] = 255
    return images.clip(0, 255).astype(np.uint8)


def build_audit_store(path: str | Path, *, with_clarc: bool = True) -> Path:
    """A small analysed audit store with thumbnails and a ClArC result, for the report and export tests.

    Synthetic heatmaps with a planted Clever Hans group (class 1, relevance on the top-left corner, where
    its images carry a bright square), thumbnails made to match, the "synthetic" pipeline with t-SNE, and a
    synthetic ClArC result node in the documented layout. Classes 0..2 hold 50 images, class 3 only 5 (skipped);
    the label names and the dataset name need HTML escaping.
    """
    from spray.pipeline import analyze, pipeline_from_text

    path = Path(path)
    heatmaps = make_heatmaps(n_per_class=50, n_classes=4, size=AUDIT_SIZE, poisoned=1, seed=3)
    keep = np.r_[np.arange(150), np.arange(150, 155)]
    relevance, labels = heatmaps.relevance[keep], heatmaps.labels[keep]
    planted = heatmaps.planted[np.isin(heatmaps.planted, keep)]
    n, n_classes = labels.size, len(AUDIT_LABEL_NAMES)
    logits = np.eye(n_classes, dtype=np.float32)[labels] * 3.0
    with AuditStore(path, mode="a") as store:
        store.prepare_samples(
            n, dataset={"name": "synthetic <skin> lesions", "size": n},
            model={"name": "demo:make_model", "hash": "ab" * 32}, label_names=AUDIT_LABEL_NAMES,
            thumbnail_shape=(3, AUDIT_SIZE, AUDIT_SIZE),
        )
        store.create_attribution(
            "lrp", input_shape=relevance.shape[1:], n_outputs=n_classes,
            attrs={"method": "epsilon_plus_flat", "params": {"epsilon": 1e-6}, "model_hash": "ab" * 32,
                   "model_name": "demo:make_model", "batch_size": n, "target": "label"},
        )
        store.write_batch(
            "lrp", 0, relevance=relevance, logits=logits, target=labels, labels=labels, index=np.arange(n),
            thumbnails=_thumbnails(relevance, labels, planted),
        )
    analyze(str(path), pipeline_from_text(pipeline_text(tsne={})), progress=False)
    if with_clarc:
        write_clarc_result(path, planted[:4])
    return path


def write_clarc_result(path: str | Path, examples: np.ndarray, run: str = "pclarc-1") -> None:
    """A synthetic ClArC result in the documented layout (clarc/<run>/result), written as ClArC writes one."""
    from spray.results import write_result

    mask = np.zeros((AUDIT_SIZE, AUDIT_SIZE), np.float32)
    mask[0:3, 0:3] = 1.0
    patch = np.zeros((1, AUDIT_SIZE, AUDIT_SIZE), np.float32)
    patch[:, 0:3, 0:3] = 1.0
    k = examples.size
    inputs = np.random.default_rng(1).random((k, 1, AUDIT_SIZE, AUDIT_SIZE)).astype(np.float32)
    inputs[:, :, 0:3, 0:3] = 1.0
    metrics = [
        {"model": "original", "clean_accuracy": 0.93, "poisoned_accuracy": 0.41, "everywhere_accuracy": 0.22,
         "artifact_relevance": 0.58, "fda_rank": 1},
        {"model": "corrected", "clean_accuracy": 0.92, "poisoned_accuracy": 0.88, "everywhere_accuracy": None,
         "artifact_relevance": 0.07, "fda_rank": 3},
    ]
    write_result(
        path, run,
        {"patch": patch, "mask": mask, "example_inputs": inputs,
         "example_masks": np.repeat(mask[None], k, axis=0), "example_index": examples.astype(np.int64)},
        {"method": "pclarc", "cluster": "1:hdbscan:1", "layer": "features.3", "cav_auc": 0.97, "metrics": metrics},
    )
