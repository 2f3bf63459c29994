"""Reports for domain experts: one self-contained HTML file per audit."""

from __future__ import annotations

from spray.report.concepts import AuditedModel
from spray.report.html import build_report, render_report

__all__ = ["AuditedModel", "build_report", "render_report"]
