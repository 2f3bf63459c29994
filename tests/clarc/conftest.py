"""Fixtures for ClArC: a tiny audited model (seconds to build) and the tiny model's data."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from spray.clarc.verify import Standing


@dataclass(frozen=True)
class OnePlace:
    """A localisation whose every sample's mask (``masks``, n × H × W) is the mean ``mask``: masks at one place,
    as the kind rule reads a fake artifact model's (spray.clarc.transform.spread 0)."""

    mask: torch.Tensor
    n: int

    @property
    def masks(self) -> torch.Tensor:
        return self.mask.expand(self.n, *self.mask.shape).clone()


@dataclass(frozen=True)
class Flagged:
    """A verification as auto's rule step 7 reads it (spray.clarc.verify.Verification): ``failed`` when the class is
    still flagged, ``verdict``, and the class's standing after (rank 2, outlier 9.0 when flagged; else 7, 0.5)."""

    failed: bool

    @property
    def verdict(self) -> str:
        return "not cleared" if self.failed else "cleared"

    @property
    def after(self) -> Standing:
        return Standing(2 if self.failed else 7, self.failed, 9.0 if self.failed else 0.5, None, None, None, None,
                        None)


def tiny_model(seed: int = 0) -> nn.Module:
    """Two convolutions, global average pooling, a linear head: layers ``features.0`` .. ``head``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1),
                                 nn.ReLU())
        return nn.Sequential(OrderedDict(
            features=features, pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(), head=nn.Linear(6, 2),
        )).eval()


def tiny_data(n: int = 80, seed: int = 0) -> tuple[TensorDataset, torch.Tensor]:
    """8×8 noise images; class 1 is brighter, and 12 of its samples carry a bright 3×3 corner square."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.rand(n, 1, 8, 8, generator=g) * 0.5 + 0.2 * y[:, None, None, None]
    stamped = torch.nonzero(y == 1).flatten()[:12]
    x[stamped, :, :3, :3] = 1.0
    return TensorDataset(x, y), stamped


@pytest.fixture
def new_model():
    """``new_model(seed=0)`` builds :func:`tiny_model` (a factory, so tests can build several)."""
    return tiny_model


@pytest.fixture
def tiny_dataset() -> TensorDataset:
    return tiny_data()[0]


@pytest.fixture(scope="module")
def tiny_audit(tmp_path_factory):
    """The tiny model trained briefly, attributed (EpsilonPlusFlat) and analysed with a tiny pipeline."""
    from spray.attribution import AttributionRun
    from spray.attribution.methods import get_method
    from spray.audit import audit
    from spray.data import model_hash
    from spray.pipeline import pipeline_from_text
    from spray.store import AuditStore
    from spray.testing import pipeline_text
    from spray.training import TrainingConfig, train_model

    dataset, stamped = tiny_data()
    model = tiny_model()
    train_model(model, dataset, TrainingConfig(epochs=3, batch_size=16, lr=1e-2, seed=0), progress=False)
    store = tmp_path_factory.mktemp("tiny") / "tiny.h5"
    spec = pipeline_from_text(pipeline_text("tiny", analysis={"name": "tiny"}))
    attribution = AttributionRun(get_method("epsilon_plus_flat"), model_hash=model_hash(model), model_name="tiny",
                                 dataset_name="tiny", batch_size=16, progress=False)
    ranking = audit(store, model, dataset, attribution, spec)
    with AuditStore(store) as opened:
        kmeans = opened.read_node("analyses/tiny/1/kmeans")[0]
    return SimpleNamespace(model=model, dataset=dataset, stamped=stamped, store=store, ranking=ranking,
                           kmeans=kmeans)
