"""``csv:PATH[?OPTIONS]``: image files listed in a label table, one row per sample, in the table's order.

Options, ``&``-separated after a ``?`` (e.g. ``csv:labels.csv?path=file&label=diagnosis``):

- ``path`` (default ``path``): the column of image paths; a relative path is relative to the CSV's folder;
- ``label`` (default ``label``): the column of labels;
- ``names``: a text file of class names, one per line, in model output order (relative to the CSV's
  folder). A label is then a name of that file, its index the label. Without it, a label column of
  integers gives the labels as they are (outputs named 0, 1, ...), and any other column's sorted distinct
  values are the class names (label i: the i-th);
- ``target``: a multi-label table (one 0/1 column per finding, a model with one output per finding): the
  finding whose output is explained, a column of the table and a name of ``names`` (which is then
  required; ``label`` is not read). The rows with 1 in that column are the samples, each labelled with the
  finding's output index; the rows with 0 are not samples. So spray explains the finding's output on the
  images that have it, as SpRAy explains a class on its own samples, and the other findings' columns are
  metadata, tested for enrichment like any other column.

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

OPTIONS = {"path": "path", "label": "label", "names": None, "target": None}
"""The options of a ``csv:`` source and their defaults."""


def open_label_table(path: Path, options: dict[str, str], transform: ImageTransform | None,
                     skip_unreadable: bool = False) -> ImageFiles:
    """The images a label table lists, with their labels (module docstring)."""
    root = path.parent
    where = f"csv file {path}"
    target = options.get("target")
    names_file = root / options["names"] if "names" in options else None
    if target is not None:
        if "label" in options:
            raise BadInputError(
                f"{where}: label=COLUMN and target=COLUMN exclude each other: with target=COLUMN the images are "
                "the rows with 1 in that column, labelled with the finding's output (docs/data.md)"
            )
        if names_file is None:
            raise BadInputError(
                f"{where}: target={target} needs names=FILE, naming the model's outputs (one finding per line, "
                "in output order), to know which output explains the finding"
            )
    names = read_names(names_file) if names_file is not None else None
    if target is not None and target not in names:
        raise BadInputError(
            f"{where}: target {target!r} is not a name of {names_file} (which names the model's outputs, one "
            "per line, in output order)"
        )
    path_column = options.get("path", OPTIONS["path"])
    label_column = target or options.get("label", OPTIONS["label"])
    kind = "target" if target else "label"
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            for column in (path_column, label_column):
                if column not in columns:
                    raise BadInputError(
                        f"{where}, line 1: no column {column!r} (the columns are {', '.join(map(repr, columns))}); "
                        f"name the path and {kind} columns: csv:PATH?path=COLUMN&{kind}=COLUMN"
                    )
            rows, extras = [], []
            for row in reader:
                line = reader.line_num
                file, label = ((row.get(c) or "").strip() for c in (path_column, label_column))
                if not file:
                    raise BadInputError(f"{where}, line {line}, column {path_column!r}: the image path is empty")
                if target is not None:
                    label = _finding(label, f"{where}, line {line}, column {target!r}")
                elif not label:
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

    if target is not None:
        positive = [i for i, (_, label, _) in enumerate(rows) if label]
        if not positive:
            raise BadInputError(f"{where}: no row has 1 in column {target!r}, so no image has the finding to explain")
        output = names.index(target)
        files = [(rows[i][0], output) for i in positive]
        return ImageFiles(files, names, root=root, where=where, transform=transform,
                          skip_unreadable=skip_unreadable, metadata=[extras[i] for i in positive])
    values = [label for _, label, _ in rows]
    if names is not None:
        index = {name: i for i, name in enumerate(names)}
        for _, label, line in rows:
            if label not in index:
                raise BadInputError(
                    f"{where}, line {line}, column {label_column!r}: label {label!r} is not a name of {names_file}"
                )
    elif all(v.isdigit() for v in values):
        index = {v: int(v) for v in values}
    else:
        names = sorted(set(values))
        index = {name: i for i, name in enumerate(names)}
    files = [(image, index[label]) for image, label, _ in rows]
    return ImageFiles(files, names, root=root, where=where, transform=transform, skip_unreadable=skip_unreadable,
                      metadata=extras)


def _finding(value: str, where: str) -> bool:
    """A multi-label table's cell: 0 or 1 (``0.0`` and ``1.0`` too, as exported by pandas) -> False or True."""
    try:
        number = float(value)
    except ValueError:
        number = None
    if number not in (0.0, 1.0):
        raise BadInputError(
            f"{where}: value {value!r} is not 0 or 1 (a multi-label table holds 1 where the image has the "
            "finding, else 0)"
        )
    return number == 1.0
