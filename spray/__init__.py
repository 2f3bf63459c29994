"""spray: audit whole training sets for Clever Hans behaviour.

The public API, in pipeline order (imported on first use, so ``import spray`` and the CLI start fast):
:class:`AuditStore`, :class:`AttributionRun`, :func:`attribute_dataset`, :func:`get_method`, :class:`LRP`,
:func:`analyze`, :func:`read_pipeline`, :func:`rank_classes`, :func:`rank_analyses`, :func:`build_report`, :func:`export_virelay`.
"""

from __future__ import annotations

import importlib
from typing import Any

from spray.errors import (
    BadInputError,
    PipelineError,
    SchemaError,
    SprayError,
    StoreError,
    StoreLockedError,
    UnsupportedLayerError,
)

__version__ = "0.1.0"

_LAZY = {
    "AuditStore": "spray.store",
    "AttributionRun": "spray.attribution.config",
    "attribute_dataset": "spray.attribution.runner",
    "get_method": "spray.attribution.methods",
    "available_methods": "spray.attribution.methods",
    "LRP": "spray.lrp",
    "analyze": "spray.pipeline",
    "read_pipeline": "spray.pipeline",
    "pipeline_from_text": "spray.pipeline",
    "rank_classes": "spray.ranking",
    "rank_analyses": "spray.ranking",
    "Ranking": "spray.ranking",
    "build_report": "spray.report",
    "export_virelay": "spray.export",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'spray' has no attribute {name!r}")


__all__ = [
    "BadInputError",
    "PipelineError",
    "SchemaError",
    "SprayError",
    "StoreError",
    "StoreLockedError",
    "UnsupportedLayerError",
    "__version__",
    *_LAZY,
]
