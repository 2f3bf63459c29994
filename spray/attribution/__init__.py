"""Attribution: methods by name (methods.py), one attribution run as a value (config.py), the runner that
explains a dataset into the store, and its sharding over dask workers (distributed.py)."""

from __future__ import annotations

from spray.attribution.config import AttributionRun
from spray.attribution.distributed import WorkerRecipe
from spray.attribution.latent import LatentAttributor
from spray.attribution.runner import attribute_dataset

__all__ = ["AttributionRun", "LatentAttributor", "WorkerRecipe", "attribute_dataset"]
