"""Exports of an audit for other tools: a ViRelAy project, CSV/JSON tables."""

from __future__ import annotations

from spray.export.tables import clarc_metrics, cluster_memberships, export_tables, write_table
from spray.export.virelay import export_virelay

__all__ = ["clarc_metrics", "cluster_memberships", "export_tables", "export_virelay", "write_table"]
