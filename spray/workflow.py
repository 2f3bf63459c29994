"""The audit chain as functions: data -> model -> attributions -> SpRAy -> ranking (the demo's first half).

``spray demo`` and the tests use :func:`prepare_demo`; every step is memoised by the stage that runs it
(trained weights by file, attributions by the store's resume, analysis nodes by their keys), so running it
twice costs little the second time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spray.attribution.methods import get_method
from spray.attribution.runner import attribute_dataset
from spray.data.models import model_hash
from spray.demo.digits import PoisonedDigits, default_poisoned_digits
from spray.demo.model import build_model
from spray.demo.train import BATCH_SIZE, EPOCHS, LR, train_model
from spray.pipeline import PipelineSpec, analyze, read_pipeline
from spray.pipeline.graph import hash_array, hash_json
from spray.ranking import rank_classes
from spray.store import AuditStore

QUICK_PIPELINE = """
[analysis]
name = "spray"
[preprocess]
grid = 16
[spectral]
n_eigenpairs = 16
[kmeans]
k_min = 2
k_max = 8
n_init = 1
[hdbscan]
[tsne]
[fda]
n_permutations = 50
"""
"""``spray demo --quick``: fewer eigenpairs and k-means runs, t-SNE only (no numba compile)."""


@dataclass(frozen=True)
class DemoAudit:
    """What :func:`prepare_demo` made: the data, the trained model, its weights file, the analysed store."""

    data: PoisonedDigits
    model: nn.Module
    weights: Path
    store: Path
    ranking: list[dict[str, Any]]


def trained_demo_model(out_dir: Path, data: PoisonedDigits, *, epochs: int = EPOCHS,
                       progress: bool = True) -> tuple[nn.Module, Path]:
    """The demo CNN trained on ``data.train`` with the demo's recipe; the weights are cached in ``out_dir``
    under a name that holds the seed, the epochs and a hash of the training data and recipe, so a changed
    demo never reuses stale weights."""
    recipe = {"data": [hash_array(data.train.x), hash_array(data.train.y)], "epochs": epochs,
              "batch_size": BATCH_SIZE, "lr": LR, "seed": data.seed}
    weights = out_dir / f"demo-model-seed{data.seed}-epochs{epochs}-{hash_json(recipe)[:8]}.pt"
    model = build_model(len(data.label_names), seed=data.seed)
    if weights.exists():
        model.load_state_dict(torch.load(weights, weights_only=True, map_location="cpu"))
        return model.eval(), weights
    train_model(model, data.as_dataset("train"), epochs=epochs, batch_size=BATCH_SIZE, lr=LR, seed=data.seed,
                progress=progress)
    tmp = weights.with_suffix(".tmp")
    torch.save(model.state_dict(), tmp)
    tmp.replace(weights)  # a killed run never leaves a half-written weights file behind
    return model.eval(), weights


def prepare_demo(
    out_dir: str | Path,
    *,
    seed: int = 0,
    epochs: int = EPOCHS,
    method: str = "epsilon_plus_flat",
    pipeline: PipelineSpec | None = None,
    progress: bool = True,
) -> DemoAudit:
    """Poisoned digits -> train the demo CNN -> attribute the training split -> SpRAy -> ranking."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = default_poisoned_digits(seed)
    model, weights = trained_demo_model(out, data, epochs=epochs, progress=progress)
    store = weights.with_name(weights.stem.replace("demo-model", "demo") + ".h5")  # one store per model
    attribute_dataset(
        store,
        model,
        data.as_dataset("train"),
        get_method(method),
        model_hash=model_hash(model),
        model_name="spray.demo:build_model",
        dataset_name=f"poisoned digits (seed {seed}), train split",
        label_names=list(data.label_names),
        batch_size=64,
        progress=progress,
        thumbnail_range=(0.0, 1.0),
    )
    spec = pipeline or read_pipeline(None)
    analyze(str(store), spec, progress=progress)
    with AuditStore(store) as audit:
        ranking = rank_classes(audit, spec.name)
    return DemoAudit(data, model, weights, store, ranking)


def planted_recovery(audit: DemoAudit) -> dict[str, Any]:
    """How well the top-ranked cluster matches the planted artifact: class hit, precision, recall, F1."""
    top = next((e for e in audit.ranking if e["skipped"] is None), None)
    planted = {int(i) for i in audit.data.planted}
    found = set(top["members"]) if top else set()
    hit = len(planted & found)
    precision = hit / len(found) if found else 0.0
    recall = hit / len(planted) if planted else 0.0
    f1 = 2 * precision * recall / (precision + recall) if hit else 0.0
    return {
        "poisoned_class": audit.data.poisoned_class,
        "top_class": top["class"] if top else None,
        "found": bool(top) and top["class"] == audit.data.poisoned_class and f1 >= 0.9,
        "precision": precision, "recall": recall, "f1": f1,
        "planted": len(planted), "flagged": len(found),
    }


def correct_demo(audit: DemoAudit, method: str, out_dir: str | Path) -> str:
    """ClArC (``method``) on the top-ranked cluster of the demo audit; the before/after table as text."""
    from spray.clarc import clarc_from_store, format_metrics

    top = next(e for e in audit.ranking if e["skipped"] is None)
    result = clarc_from_store(
        audit.store, f"{top['class']}:{top['clustering']}:{top['cluster']}", method, audit.model,
        audit.data.as_dataset("train"), out_dir=Path(out_dir) / "clarc", seed=audit.data.seed,
        test=audit.data.as_dataset("clean_test"), poisoned_test=audit.data.as_dataset("poisoned_test"),
        progress=False,
    )
    return format_metrics(result.metrics)
