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
  metadata, tested for enrichment like any other column. A blank cell is a finding not mentioned, as in
  CheXpert's tables: not a sample, like a 0;
- ``uncertain`` (``positive`` or ``negative``; only with ``target``): what CheXpert's uncertain ``-1`` means
  (Irvin et al. 2019, "U-Ones" and "U-Zeros"). ``positive``: the row is a sample, and the target column is
  kept as metadata (``1`` or ``-1``), so the report tests flagged groups for uncertain labels; ``negative``:
  the row is not a sample. Without it, a ``-1`` is refused, naming the line.

How many rows a target table had, and which were explained, is the source's ``selection``
(:class:`RowSelection`), recorded in the store beside the files.

The table's other columns (site, scanner, sex, ...) are kept as text, per sample: ``metadata`` of the
dataset, recorded in the store, where the report tests them for enrichment in flagged groups.

The table is read with Python's csv module (comma-separated, first line the column names, UTF-8 with or
without a byte-order mark). Every problem is a ``BadInputError`` naming the file, the line and the column.
"""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from spray._checks import check_regular_file
from spray.data._options import read_names
from spray.data.images import ImageFiles
from spray.data.transforms import ImageTransform
from spray.errors import BadInputError

__all__ = ["OPTIONS", "RowSelection", "open_label_table"]

OPTIONS = {"path": "path", "label": "label", "names": None, "target": None, "uncertain": None}
"""The options of a ``csv:`` source and their defaults."""
UNCERTAIN = ("positive", "negative")
"""The meanings ``uncertain=`` can give CheXpert's ``-1``."""


@dataclass(frozen=True)
class RowSelection:
    """Which rows of a multi-label table became samples: the table's rows by the target column's value
    (``positive`` 1, ``negative`` 0, ``uncertain`` -1, ``blank`` not mentioned), and the rule that decided
    the uncertain ones (``uncertain=``; None where the table has none). ``samples`` counts the rows
    explained, before files that cannot be read are skipped."""

    target: str
    rows: int
    positive: int
    negative: int
    uncertain: int
    blank: int
    uncertain_rule: str | None

    @property
    def samples(self) -> int:
        return self.positive + (self.uncertain if self.uncertain_rule == "positive" else 0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def open_label_table(path: Path, options: dict[str, str], transform: ImageTransform | None,
                     skip_unreadable: bool = False) -> ImageFiles:
    """The images a label table lists, with their labels (module docstring)."""
    root = path.parent
    where = f"csv file {path}"
    target, uncertain = options.get("target"), options.get("uncertain")
    if uncertain is not None and target is None:
        raise BadInputError(f"{where}: uncertain={uncertain} applies to a multi-label table: give target=COLUMN too")
    if uncertain not in (None, *UNCERTAIN):
        raise BadInputError(
            f"{where}: uncertain={uncertain} is not one of {', '.join(UNCERTAIN)} (what an uncertain -1 in the "
            "target column means: positive, explained with the 1s; negative, left out like the 0s)"
        )
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
                    label = _finding(label, f"{where}, line {line}, column {target!r}", uncertain is not None)
                elif not label:
                    raise BadInputError(f"{where}, line {line}, column {label_column!r}: the label is empty")
                image = root / file
                if not image.exists():
                    raise BadInputError(f"{where}, line {line}, column {path_column!r}: image {image} does not exist")
                check_regular_file(image, "an image")
                rows.append((image, label, line))
                kept = (path_column,) if uncertain == "positive" else (path_column, label_column)
                extras.append({c: (row.get(c) or "").strip() for c in columns if c not in kept})
    except UnicodeDecodeError as exc:
        raise BadInputError(f"{where} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except csv.Error as exc:
        raise BadInputError(f"{where}, line {reader.line_num}: {exc}") from None
    if not rows:
        raise BadInputError(f"{where} lists no images (a header line, then one line per image)")

    if target is not None:
        explained = {1, -1} if uncertain == "positive" else {1}
        chosen = [i for i, (_, finding, _) in enumerate(rows) if finding in explained]
        if not chosen:
            raise BadInputError(f"{where}: no row has 1 in column {target!r}, so no image has the finding to explain")
        findings = [finding for _, finding, _ in rows]
        selection = RowSelection(target, len(rows), findings.count(1), findings.count(0), findings.count(-1),
                                 findings.count(None), uncertain if -1 in findings else None)
        for i in chosen:
            if target in extras[i]:
                extras[i][target] = str(rows[i][1])  # "1" or "-1", however the table wrote it
        output = names.index(target)
        files = [(rows[i][0], output) for i in chosen]
        return ImageFiles(files, names, root=root, where=where, transform=transform,
                          skip_unreadable=skip_unreadable, metadata=[extras[i] for i in chosen], selection=selection)
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


def _finding(value: str, where: str, uncertain_allowed: bool) -> int | None:
    """A multi-label table's cell: 1, 0 or the uncertain -1 (``1.0``, ``0.0`` and ``-1.0`` too, as pandas
    writes them) as that integer; a blank (not mentioned) as None. A -1 needs ``uncertain=``."""
    if not value:
        return None
    try:
        number = float(value)
    except ValueError:
        number = None
    if number == -1.0 and not uncertain_allowed:
        raise BadInputError(
            f"{where}: value {value!r} is an uncertain finding (CheXpert's -1): say what it means with "
            "uncertain=positive (explained with the 1s) or uncertain=negative (left out like the 0s)"
        )
    if number not in (0.0, 1.0, -1.0):
        raise BadInputError(
            f"{where}: value {value!r} is not 0 or 1 (a multi-label table holds 1 where the image has the "
            "finding, else 0; -1 where it is uncertain, a blank where it is not mentioned)"
        )
    return int(number)
