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
from spray.data._options import read_names
from spray.data.images import ImageFiles
from spray.data.transforms import ImageTransform
from spray.errors import BadInputError

__all__ = ["OPTIONS", "open_label_table"]

OPTIONS = {"path": "path", "label": "label", "names": None}
"""The options of a ``csv:`` source and their defaults."""


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
        names = read_names(root / options["names"])
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
