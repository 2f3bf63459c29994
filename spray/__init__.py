"""spray: audit whole training sets for Clever Hans behaviour."""

from __future__ import annotations

__version__ = "0.1.0"

from spray.errors import (
    BadInputError,
    PipelineError,
    SchemaError,
    SprayError,
    StoreError,
    StoreLockedError,
    UnsupportedLayerError,
)

__all__ = [
    "BadInputError",
    "PipelineError",
    "SchemaError",
    "SprayError",
    "StoreError",
    "StoreLockedError",
    "UnsupportedLayerError",
    "__version__",
]
