"""A small analysed audit store with thumbnails and a ClArC result, shared by tests/report and tests/export.

Built through the public API only: synthetic heatmaps with a planted Clever Hans group (class 1, relevance
on the top-left corner, where its images carry a bright square), thumbnails made to match, the analysis
pipeline below, and a synthetic ClArC result node following the contract in the report docs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from spray.pipeline import analyze, pipeline_from_text
from spray.store import AuditStore
from spray.testing import make_heatmaps

PIPELINE = """
[preprocess]
grid = 8
[knn]
n_neighbors = 8
[spectral]
n_eigenpairs = 8
[kmeans]
k_min = 2
k_max = 4
n_init = 1
[hdbscan]
min_cluster_size = 5
[tsne]
[fda]
n_permutations = 30
"""

# Class 1 holds the planted group and ranks first: its name checks escaping in every place it appears.
LABEL_NAMES = ["melanoma", "<script>alert(1)</script>", "Ödem & nävus “benign”", "tiny"]
SIZE = 16


def _thumbnails(relevance: np.ndarray, labels: np.ndarray, planted: np.ndarray, seed: int = 0) -> np.ndarray:
    """(n, 3, 16, 16) uint8 'images': a tinted background per class, the class's blob, a white square on
    the planted samples (the artifact their relevance sits on)."""
    rng = np.random.default_rng(seed)
    n = labels.size
    tint = np.array([[180, 120, 100], [120, 160, 190], [150, 180, 120], [200, 200, 200]], dtype=np.float64)
    images = tint[labels % 4][:, :, None, None] * np.ones((n, 3, SIZE, SIZE))
    blob = np.clip(relevance[:, 0], 0, None)
    images *= 1 - 0.5 * (blob / blob.max(axis=(1, 2), keepdims=True))[:, None]
    images += rng.normal(0, 8, images.shape)
    images[planted, :, 0:3, 0:3] = 255
    return images.clip(0, 255).astype(np.uint8)


def build_audit_store(path: Path, *, with_clarc: bool = True) -> Path:
    """Write and analyse the store at ``path`` (classes 0..2 of 50 images, class 3 with 5: skipped)."""
    heatmaps = make_heatmaps(n_per_class=50, n_classes=4, size=SIZE, poisoned=1, seed=3)
    keep = np.r_[np.arange(150), np.arange(150, 155)]
    relevance, labels = heatmaps.relevance[keep], heatmaps.labels[keep]
    planted = heatmaps.planted[np.isin(heatmaps.planted, keep)]
    n, n_classes = labels.size, len(LABEL_NAMES)
    logits = np.eye(n_classes, dtype=np.float32)[labels] * 3.0
    with AuditStore(path, mode="a") as store:
        store.prepare_samples(
            n, dataset={"name": "synthetic <skin> lesions", "size": n},
            model={"name": "demo:make_model", "hash": "ab" * 32}, label_names=LABEL_NAMES,
            thumbnail_shape=(3, SIZE, SIZE),
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
    analyze(str(path), pipeline_from_text(PIPELINE), progress=False)
    if with_clarc:
        write_clarc_result(path, planted[:4])
    return path


def write_clarc_result(path: Path, examples: np.ndarray, run: str = "pclarc-1") -> None:
    """A synthetic ClArC result in the documented layout (clarc/<run>/result)."""
    mask = np.zeros((SIZE, SIZE), np.float32)
    mask[0:3, 0:3] = 1.0
    patch = np.zeros((1, SIZE, SIZE), np.float32)
    patch[:, 0:3, 0:3] = 1.0
    k = examples.size
    inputs = np.random.default_rng(1).random((k, 1, SIZE, SIZE)).astype(np.float32)
    inputs[:, :, 0:3, 0:3] = 1.0
    metrics = [
        {"model": "original", "clean_accuracy": 0.93, "poisoned_accuracy": 0.41, "everywhere_accuracy": 0.22,
         "artifact_relevance": 0.58, "fda_rank": 1},
        {"model": "corrected", "clean_accuracy": 0.92, "poisoned_accuracy": 0.88, "everywhere_accuracy": None,
         "artifact_relevance": 0.07, "fda_rank": 3},
    ]
    with AuditStore(path, mode="a") as store:
        store.write_node(
            f"clarc/{run}/result",
            {"patch": patch, "mask": mask, "example_inputs": inputs,
             "example_masks": np.repeat(mask[None], k, axis=0), "example_index": examples.astype(np.int64)},
            {"method": "pclarc", "cluster": "1:hdbscan:1", "layer": "features.3", "cav_auc": 0.97,
             "metrics": metrics},
        )


_BUILT: dict[str, Path] = {}


def shared_store(tmp_path_factory) -> Path:  # noqa: ANN001 - pytest's TempPathFactory
    """The store of :func:`build_audit_store`, built once per test session (read-only for tests)."""
    if "store" not in _BUILT:
        _BUILT["store"] = build_audit_store(tmp_path_factory.mktemp("audit") / "audit.h5")
    return _BUILT["store"]

