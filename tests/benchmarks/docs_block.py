"""Benchmark results written into the docs: the block between a script's markers in a Markdown file."""

from __future__ import annotations

from pathlib import Path


def write_block(path: Path, name: str, text: str) -> None:
    """Replace what lies between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->`` in ``path`` by ``text``;
    exits naming the markers when the file lacks them (nothing else in the file changes)."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    doc = path.read_text(encoding="utf-8")
    if begin not in doc or end not in doc:
        raise SystemExit(f"{path} has no {begin} ... {end} block to replace")
    head, rest = doc.split(begin, 1)
    path.write_text(f"{head}{begin}\n{text}\n{end}{rest.split(end, 1)[1]}", encoding="utf-8")
