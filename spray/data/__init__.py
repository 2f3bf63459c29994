"""Where samples and models come from: data-source specs, model factories, weights, model hashes."""

from __future__ import annotations

from spray.data.models import load_model, load_weights, model_hash
from spray.data.sources import open_source
from spray.data.transforms import ImageTransform

__all__ = ["ImageTransform", "load_model", "load_weights", "model_hash", "open_source"]
