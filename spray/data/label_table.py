"""``csv:PATH[?OPTIONS]``: image files listed in a label table, one row per sample, in the table's order.

Options, ``&``-separated after a ``?`` (e.g. ``csv:labels.csv?path=file&label=diagnosis``):

- ``path`` (default ``path``): the column of image paths; a relative path is relative to the CSV's folder;
- ``label`` (default ``label``): the column of labels;
- ``names``: a text file of class names, one per line, in model output order (relative to the CSV's
  folder). A label is then a name of that file, its index the label. Without it, a label column of
  integers gives the labels as they are (outputs named 0, 1, ...), and any other column's sorted distinct
  values are the class names (label i: the i-th).

The table's other columns (site, scanner, sex, ...) are kept as text, per sample: ``metadata`` of the
dataset, recorded in the store, where the report tests them for enrichment in flagged groups.

The table is read with Python's csv module (comma-separated, first line the column names, UTF-8 with or
without a byte-order mark). Every problem is a ``BadInputError`` naming the file, the line and the column.
"""

from __future__ import annotations

import csv
from pathlib import Path

from spray._checks import check_regular_file
from spray.data.images import ImageFiles
from spray.data.transforms import ImageTransform
from spray.errors import BadInputError

__all__ = ["OPTIONS", "open_label_table", "split_options"]

OPTIONS = {"path": "path", "label": "label", "names": None}
"""The options of a ``csv:`` source and their defaults."""


def split_options(spec: str, rest: str) -> tuple[str, dict[str, str]]:
    """``PATH?KEY=VALUE&...`` -> (PATH, options); unknown or malformed options are refused naming ``spec``."""
    path, _, query = rest.partition("?")
    options: dict[str, str] = {}
    for part in filter(None, query.split("&")):
        key, sep, value = part.partition("=")
        if not sep or not value or key not in OPTIONS:
            raise BadInputError(
                f"data source {spec!r}: option {part!r} is not KEY=VALUE with KEY one of "
                f"{', '.join(OPTIONS)} (e.g. csv:labels.csv?path=file&label=diagnosis)"
            )
        options[key] = value
    return path, options


def _names(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInputError(f"label names file {path} cannot be read: {exc}") from None
    names = [line.strip() for line in lines if line.strip()]
    if len(set(names)) != len(names):
        twice = next(name for name in names if names.count(name) > 1)
        raise BadInputError(f"label names file {path} names {twice!r} twice")
    if not names:
        raise BadInputError(f"label names file {path} holds no names (one per line, in model output order)")
    return names


def open_label_table(path: Path, options: dict[str, str], transform: ImageTransform | None,
                     skip_unreadable: bool = False) -> ImageFiles:
    """The images a label table lists, with their labels (module docstring)."""
    path_column, label_column = (options.get(k, OPTIONS[k]) for k in ("path", "label"))
    root = path.parent
    where = f"csv file {path}"
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            for column in (path_column, label_column):
                if column not in columns:
                    raise BadInputError(
                        f"{where}, line 1: no column {column!r} (the columns are {', '.join(map(repr, columns))}); "
                        "name the path and label columns: csv:PATH?path=COLUMN&label=COLUMN"
                    )
            rows, extras = [], []
            for row in reader:
                line = reader.line_num
                file, label = ((row.get(c) or "").strip() for c in (path_column, label_column))
                if not file:
                    raise BadInputError(f"{where}, line {line}, column {path_column!r}: the image path is empty")
                if not label:
                    raise BadInputError(f"{where}, line {line}, column {label_column!r}: the label is empty")
                image = root / file
                if not image.exists():
                    raise BadInputError(f"{where}, line {line}, column {path_column!r}: image {image} does not exist")
                check_regular_file(image, "an image")
                rows.append((image, label, line))
                extras.append({c: (row.get(c) or "").strip() for c in columns if c not in (path_column, label_column)})
    except UnicodeDecodeError as exc:
        raise BadInputError(f"{where} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except csv.Error as exc:
        raise BadInputError(f"{where}, line {reader.line_num}: {exc}") from None
    if not rows:
        raise BadInputError(f"{where} lists no images (a header line, then one line per image)")

    values = [label for _, label, _ in rows]
    if "names" in options:
        names = _names(root / options["names"])
        index = {name: i for i, name in enumerate(names)}
        for _, label, line in rows:
            if label not in index:
                raise BadInputError(
                    f"{where}, line {line}, column {label_column!r}: label {label!r} is not a name of "
                    f"{root / options['names']}"
                )
    elif all(v.isdigit() for v in values):
        names, index = None, {v: int(v) for v in values}
    else:
        names = sorted(set(values))
        index = {name: i for i, name in enumerate(names)}
    files = [(image, index[label]) for image, label, _ in rows]
    return ImageFiles(files, names, root=root, where=where, transform=transform, skip_unreadable=skip_unreadable,
                      metadata=extras)
