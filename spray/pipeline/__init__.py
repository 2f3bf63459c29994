"""The SpRAy processing graph: pipeline files, the node table, memoised execution over classes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from spray.pipeline.executor import AnalysisResult, analyze
from spray.pipeline.nodes import NODES, PREPROCESS_DEFAULTS
from spray.pipeline.spec import ExtraTables, PipelineSpec, load_pipeline, parse_pipeline


def _node_table() -> dict[str, Any]:
    return {
        "node_params": {"preprocess": PREPROCESS_DEFAULTS, **{n: node.defaults for n, node in NODES.items()}},
        "required": frozenset({"preprocess", *(n for n, node in NODES.items() if node.required)}),
    }


def read_pipeline(path: str | Path | None = None, extra_tables: ExtraTables = frozenset()) -> PipelineSpec:
    """The pipeline in ``path``, checked against the node table; without a path, the default pipeline
    (every node with ``default=True``, at its default parameters: pipelines/spray.toml writes it out)."""
    if path is None:
        defaults = frozenset(n for n, node in NODES.items() if node.default)
        return parse_pipeline("", source="<default pipeline>", enabled=defaults, **_node_table())
    return load_pipeline(path, extra_tables=extra_tables, **_node_table())


def pipeline_from_text(text: str, source: str = "<string>", extra_tables: ExtraTables = frozenset()) -> PipelineSpec:
    """Like :func:`read_pipeline` for TOML text (tests, notebooks, pipelines embedded in ``spray run`` files)."""
    return parse_pipeline(text, source=source, extra_tables=extra_tables, **_node_table())


__all__ = ["AnalysisResult", "PipelineSpec", "analyze", "pipeline_from_text", "read_pipeline"]
