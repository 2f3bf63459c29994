"""The audit report: one self-contained HTML file for domain experts (no scripts, no external resources)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from jinja2 import Environment, PackageLoader, StrictUndefined

from spray.errors import BadInputError
from spray.outputs import protecting
from spray.report.concepts import AuditedModel
from spray.report.content import gather

__all__ = ["build_report", "render_report"]


def _environment() -> Environment:
    # autoescape on for everything: class names, model names and paths are user-supplied text.
    return Environment(
        loader=PackageLoader("spray.report", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render_report(store_path: str | os.PathLike[str], analysis: str | Sequence[str] = "spray",
                  max_classes: int | None = None, audited: AuditedModel | None = None) -> str:
    """The report of analysis ``analysis`` (or of several) of the store, as HTML text (see :func:`build_report`)."""
    context = gather(Path(store_path), analysis, max_classes, audited)
    return _environment().get_template("report.html").render(**context)


def build_report(
    store_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    analysis: str | Sequence[str] = "spray",
    max_classes: int | None = None,
    audited: AuditedModel | None = None,
) -> Path:
    """Write the HTML report of analysis ``analysis`` of the audit store to ``out_path``; returns the path.

    One file, images inline (PNG data URIs), no scripts and no external resources; a Content Security
    Policy in the page forbids the browser to load anything from elsewhere. Sections: what was audited
    (model, dataset, attribution, the store's sha256), a plain-language summary, the ranked classes, then
    for the ``max_classes`` best-ranked analysed classes (default 5) the eigenvalue spectrum, a 2-D map and
    every group's mean heatmap with prototype images, and the ClArC results the store holds.

    ``analysis`` names one analysis, or several (e.g. ``["spray", "concept"]``): then the classes are ranked
    over all of them (:func:`spray.ranking.rank_analyses`) and each class's section shows the analysis its
    ranking entry names. A group of a concept-level analysis (of a latent attribution) also lists its most
    relevant channels and its reference samples; with ``audited`` (the audited model and the data the store
    was attributed from) each reference sample's explanation and its conditional heatmap, the part that
    flows through those channels (spray.report.concepts).

    Raises:
        BadInputError: the store has no analysis ``analysis``; ``out_path`` is a directory or unwritable, is
            the store, or is a file that is not a report spray wrote (spray.outputs); ``audited`` is given
            for analyses without latent relevance, or is not the model or data the store was attributed
            from.
        StoreError: the store cannot be read.
    """
    out = Path(out_path)
    if out.is_dir():
        raise BadInputError(f"report path {out} is a directory; name the HTML file, e.g. {out / 'report.html'}")
    with protecting({"the audit store": store_path}) as guard:
        guard.file(out, "report path", report=True)  # before rendering: a refusal should not wait for it
        html = render_report(store_path, analysis, max_classes, audited)
        try:
            guard.write(out, "report path", lambda tmp: tmp.write_text(html, encoding="utf-8"), report=True)
        except OSError as exc:
            raise BadInputError(f"cannot write the report to {out}: {exc.strerror or exc}") from None
    return out
