"""The audit chain as functions: (train) -> attribute -> SpRAy -> rank -> ClArC, shared by the demo and runs.

``spray run FILE.toml`` (spray/run.py) and ``spray demo`` (:func:`prepare_demo`, :func:`correct_demo`) go
through the same steps: :func:`train_once`, :func:`audit`, :func:`correct`. Every step is memoised by the
stage that runs it (trained weights by file, attributions by the store's resume, analysis nodes by their
keys, fine-tuning by its checkpoint), so running a chain twice costs little the second time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.data import Dataset

from spray.attribution.methods import get_method
from spray.attribution.distributed import WorkerRecipe
from spray.attribution.runner import attribute_dataset
from spray.data.models import model_hash
from spray.demo.digits import PoisonedDigits, default_poisoned_digits
from spray.demo.model import build_model
from spray.demo.train import BATCH_SIZE, EPOCHS, LR, train_model
from spray.pipeline import PipelineSpec, analyze, read_pipeline
from spray.pipeline.graph import hash_array, hash_json
from spray.ranking import rank_classes, top_candidate
from spray.store import AuditStore

if TYPE_CHECKING:
    from spray.clarc import ClarcResult

QUICK_PIPELINE = """
[analysis]
name = "spray"
[hdbscan]
[agglomerative]
[tsne]
"""
"""``spray demo --quick``: the default pipeline with t-SNE as its only 2-D map. UMAP's first use in a
process compiles numba code for a minute; the clusterings, and so the ranking, are those of the default
pipeline (docs/demo.md measures that ranking over seeds 0–14)."""


def train_once(model: nn.Module, dataset: Callable[[], Dataset], weights: Path, *, epochs: int, batch_size: int,
               lr: float, seed: int, progress: bool = True) -> nn.Module:
    """Train ``model`` in place on ``dataset()`` (seeded, :func:`spray.demo.train.train_model`) and save its
    state_dict to ``weights``; when ``weights`` exists, load it instead (and never open the data).
    Returns the model in eval mode."""
    if weights.exists():
        model.load_state_dict(torch.load(weights, weights_only=True, map_location="cpu"))
        return model.eval()
    train_model(model, dataset(), epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, progress=progress)
    weights.parent.mkdir(parents=True, exist_ok=True)
    tmp = weights.with_suffix(".tmp")
    torch.save(model.state_dict(), tmp)
    tmp.replace(weights)  # a killed run never leaves a half-written weights file behind
    return model.eval()


def audit(store: Path, model: nn.Module, dataset: Dataset, spec: PipelineSpec, *, model_name: str,
          dataset_name: str, method: str = "epsilon_plus_flat", params: dict[str, Any] | None = None,
          target: str = "label", batch_size: int = 32, label_names: Sequence[str] | None = None,
          thumbnail_range: tuple[float, float] | None = None, scheduler: str | None = None,
          recipe: WorkerRecipe | None = None, progress: bool = True) -> list[dict[str, Any]]:
    """Explain every sample of ``dataset`` into ``store``, run the SpRAy pipeline ``spec``, return the
    ranking (``spray rank --json`` entries). ``scheduler`` (with the workers' ``recipe``) runs both on dask
    (spray.scheduling)."""
    attribute_dataset(
        store, model, dataset, get_method(method, **(params or {})), model_hash=model_hash(model),
        model_name=model_name, dataset_name=dataset_name, label_names=label_names, target=target,
        batch_size=batch_size, progress=progress, thumbnail_range=thumbnail_range, scheduler=scheduler,
        recipe=recipe,
    )
    analyze(str(store), spec, scheduler=scheduler, progress=progress)
    with AuditStore(store) as opened:
        return rank_classes(opened, spec.name)


def correct(store: Path, model: nn.Module, dataset: Dataset, methods: Sequence[str], *, out_dir: Path,
            cluster: str = "top", **options: Any) -> list[ClarcResult]:
    """ClArC with each of ``methods`` on ``cluster`` (``"top"``: the best-ranked class's flagged cluster);
    ``options`` go to :func:`spray.clarc.clarc_from_store` (layer, epochs, test sets, ...)."""
    from spray.clarc import clarc_from_store

    return [clarc_from_store(store, cluster, method, model, dataset, out_dir=out_dir, **options)
            for method in methods]


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
    train_once(model, lambda: data.as_dataset("train"), weights, epochs=epochs, batch_size=BATCH_SIZE, lr=LR,
               seed=data.seed, progress=progress)
    return model, weights


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
    ranking = audit(
        store, model, data.as_dataset("train"), pipeline or read_pipeline(None), method=method,
        model_name="spray.demo:build_model", dataset_name=f"poisoned digits (seed {seed}), train split",
        label_names=list(data.label_names), batch_size=64, thumbnail_range=(0.0, 1.0), progress=progress,
    )
    return DemoAudit(data, model, weights, store, ranking)


def planted_recovery(audit: DemoAudit) -> dict[str, Any]:
    """How well the top-ranked cluster matches the planted artifact: class hit, precision, recall, F1."""
    top = top_candidate(audit.ranking)
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
        "planted": len(planted), "flagged": len(found), "hit": hit,
    }


def correct_demo(demo: DemoAudit, method: str, out_dir: str | Path, *, progress: bool = False) -> ClarcResult:
    """ClArC (``method``) on the top-ranked cluster of the demo audit, evaluated on the clean, the
    poisoned and the stamp-everywhere test split (the planted stamp: the ground truth)."""
    data = demo.data
    (result,) = correct(
        demo.store, demo.model, data.as_dataset("train"), [method], out_dir=Path(out_dir) / "clarc",
        seed=data.seed, test=data.as_dataset("clean_test"), poisoned_test=data.as_dataset("poisoned_test"),
        everywhere_test=data.as_dataset("everywhere_test"), progress=progress,
    )
    return result
