"""The demo's audit: poisoned digits -> the demo CNN, trained once -> the audit chain (spray.workflow) -> how
well the top-ranked cluster recovers the planted samples -> ClArC on it, evaluated against the planted stamp.

What ``spray demo`` runs; kept out of ``spray.demo``'s namespace so that the demo's factories
(``spray.demo:build_model``, ...), which dask workers import, do not load the analysis stack."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn

from spray.attribution.config import AttributionRun
from spray.attribution.methods import get_method
from spray.data.models import model_hash
from spray.demo.digits import PoisonedDigits, default_poisoned_digits
from spray.demo.model import build_model
from spray.demo.train import BATCH_SIZE, EPOCHS, LR
from spray.outputs import active
from spray.pipeline import PipelineSpec, read_pipeline
from spray.pipeline.graph import hash_array, hash_json
from spray.ranking import Ranking
from spray.training import TrainingConfig
from spray.workflow import audit, correct, train_once

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


def trained_demo_model(out_dir: Path, data: PoisonedDigits, *, epochs: int = EPOCHS,
                       progress: bool = True) -> tuple[nn.Module, Path]:
    """The demo CNN trained on ``data.train`` with the demo's recipe (seeded with ``data.seed``); the
    weights are cached in ``out_dir`` under a name that holds the seed, the epochs and a hash of the
    training data and recipe, so a changed demo never reuses stale weights."""
    config = TrainingConfig(epochs=epochs, batch_size=BATCH_SIZE, lr=LR, seed=data.seed)
    recipe = {"data": [hash_array(data.train.x), hash_array(data.train.y)], "epochs": config.epochs,
              "batch_size": config.batch_size, "lr": config.lr, "seed": config.seed}
    weights = out_dir / f"demo-model-seed{data.seed}-epochs{epochs}-{hash_json(recipe)[:8]}.pt"
    model = build_model(len(data.label_names), seed=data.seed)
    train_once(model, lambda: data.as_dataset("train"), weights, config, progress=progress)
    return model, weights


@dataclass(frozen=True)
class DemoAudit:
    """What :func:`prepare_demo` made: the data, the trained model, its weights file, the analysed store."""

    data: PoisonedDigits
    model: nn.Module
    weights: Path
    store: Path
    ranking: Ranking


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
    out = active().directory(out_dir, "demo output directory")
    data = default_poisoned_digits(seed)
    model, weights = trained_demo_model(out, data, epochs=epochs, progress=progress)
    store = weights.with_name(weights.stem.replace("demo-model", "demo") + ".h5")  # one store per model
    attribution = AttributionRun(
        get_method(method), model_hash=model_hash(model), model_name="spray.demo:build_model",
        dataset_name=f"poisoned digits (seed {seed}), train split", label_names=list(data.label_names),
        batch_size=64, thumbnail_range=(0.0, 1.0), progress=progress,
    )
    ranking = audit(store, model, data.as_dataset("train"), attribution, pipeline or read_pipeline(None))
    return DemoAudit(data, model, weights, store, ranking)


@dataclass(frozen=True)
class PlantedRecovery:
    """How well the top-ranked class's flagged cluster matches the planted samples (the ground truth).

    ``top_class`` is None when every class was skipped; ``flagged`` counts the cluster's samples, ``hit``
    those of them that were planted, out of ``planted``. ``found``: the poisoned class ranks first and its
    cluster recovers the planted samples with F1 >= 0.9.
    """

    poisoned_class: int
    top_class: int | None
    planted: int
    flagged: int
    hit: int
    top_flagged: bool
    """Whether the top-ranked class is flagged (a calibrated test rejects, spray.ranking), not only first."""

    @property
    def precision(self) -> float:
        return self.hit / self.flagged if self.flagged else 0.0

    @property
    def recall(self) -> float:
        return self.hit / self.planted if self.planted else 0.0

    @property
    def f1(self) -> float:
        return 2 * self.precision * self.recall / (self.precision + self.recall) if self.hit else 0.0

    @property
    def found(self) -> bool:
        return self.top_class == self.poisoned_class and self.f1 >= 0.9

    def verdict(self) -> str:
        """One line for ``spray demo``: found or not, and the numbers behind it."""
        return (
            f"planted artifact {'FOUND' if self.found else 'NOT FOUND'}: class {self.poisoned_class} was "
            f"poisoned, class {self.top_class} ranks first ({'flagged' if self.top_flagged else 'not flagged'}); "
            f"its top cluster holds {self.flagged} samples, "
            f"{self.hit} of the {self.planted} planted (precision {self.precision:.2f}, "
            f"recall {self.recall:.2f}, F1 {self.f1:.2f})"
        )


def planted_recovery(demo: DemoAudit) -> PlantedRecovery:
    """The top-ranked cluster of the demo audit against the planted samples."""
    top = demo.ranking.top_candidate()
    planted = {int(i) for i in demo.data.planted}
    found = set(top.cluster.members) if top else set()
    return PlantedRecovery(poisoned_class=demo.data.poisoned_class, top_class=top.label if top else None,
                           planted=len(planted), flagged=len(found), hit=len(planted & found),
                           top_flagged=bool(top and top.flagged))


def correct_demo(demo: DemoAudit, method: str, out_dir: str | Path, *, progress: bool = False) -> ClarcResult:
    """ClArC (``method``) on the top-ranked cluster of the demo audit, evaluated on the clean, the
    poisoned and the stamp-everywhere test split (the planted stamp: the ground truth), and verified (the
    flagged class audited again with the corrected model: spray.clarc.verify)."""
    from spray.clarc import ClarcConfig, EvaluationData, Tuning

    data = demo.data
    config = ClarcConfig(method, Path(out_dir) / "clarc", tuning=Tuning(seed=data.seed), verify=True,
                         progress=progress)
    evaluation = EvaluationData(data.as_dataset("clean_test"), poisoned_test=data.as_dataset("poisoned_test"),
                                everywhere_test=data.as_dataset("everywhere_test"))
    (result,) = correct(demo.store, demo.model, data.as_dataset("train"), [config], evaluation)
    return result
