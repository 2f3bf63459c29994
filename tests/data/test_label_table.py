"""``csv:PATH``: images listed in a label table; columns by name, paths relative to the table, class names
from the values or a names file; every problem named by file, line and column."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from spray.data import ImageTransform, open_source
from spray.errors import BadInputError
from spray.outputs import source_path


def _table(root: Path, text: str, images: dict[str, tuple[int, int]]) -> Path:
    for name, size in images.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", size, 10 * len(name)).save(root / name)
    (root / "labels.csv").write_text(text, encoding="utf-8")
    return root / "labels.csv"


def test_rows_give_samples_in_table_order_with_sorted_value_names_and_other_columns_as_metadata(tmp_path):
    table = _table(tmp_path, "file,diagnosis,site\nimg/b.png,nevus,A\nimg/a.png,melanoma,B\nimg/c.png,nevus,B\n",
                   {"img/a.png": (2, 2), "img/b.png": (4, 3), "img/c.png": (3, 4)})
    dataset = open_source(f"csv:{table}?path=file&label=diagnosis", ImageTransform(resize=(2, 2)))
    assert dataset.label_names == ["melanoma", "nevus"] and len(dataset) == 3
    assert [dataset[i][1] for i in range(3)] == [1, 0, 1]
    x, _ = dataset[1]
    assert torch.equal(x, torch.full((1, 2, 2), 90 / 255))  # img/a.png, value 10 * 9
    assert dataset.record()["files"] == ["img/b.png", "img/a.png", "img/c.png"]
    assert dataset.metadata == dataset.record()["metadata"] == {"site": ["A", "B", "B"]}


def test_integer_labels_are_taken_as_they_are_and_a_names_file_orders_the_classes(tmp_path):
    table = _table(tmp_path, "path,label\na.png,2\nb.png,0\n", {"a.png": (1, 1), "b.png": (1, 1)})
    dataset = open_source(f"csv:{table}")
    assert dataset.label_names is None and [dataset[i][1] for i in range(2)] == [2, 0]
    (tmp_path / "names.txt").write_text("zebra\napple\n")
    table.write_text("path,label\na.png,apple\nb.png,zebra\n")
    dataset = open_source(f"csv:{table}?names=names.txt")
    assert dataset.label_names == ["zebra", "apple"] and [dataset[i][1] for i in range(2)] == [1, 0]


def test_absolute_paths_and_a_byte_order_mark_are_read(tmp_path):
    image = tmp_path / "elsewhere" / "x.png"
    image.parent.mkdir()
    Image.new("L", (1, 1)).save(image)
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "l.csv").write_text(f"\ufeffpath,label\n{image},cat\n", encoding="utf-8")
    dataset = open_source(f"csv:{tmp_path / 't' / 'l.csv'}")
    assert dataset.label_names == ["cat"] and dataset.record()["files"] == [image.as_posix()]


@pytest.mark.parametrize(("text", "spec", "message"), [
    ("file,label\na.png,x\n", "", "{t}, line 1: no column 'path' (the columns are 'file', 'label'); name the path "
                                  "and label columns: csv:PATH?path=COLUMN&label=COLUMN"),
    ("path,label\na.png,x\nb.png,y\n", "", "{t}, line 3, column 'path': image {d}/b.png does not exist"),
    ("path,label\na.png,x\na.png, \n", "", "{t}, line 3, column 'label': the label is empty"),
    ("path,label\na.png,x\n,y\n", "", "{t}, line 3, column 'path': the image path is empty"),
    ("path,label\n", "", "{t} lists no images (a header line, then one line per image)"),
    ("path,label\na.png,x\n", "?names=n.txt", "{t}, line 2, column 'label': label 'x' is not a name of {d}/n.txt"),
])
def test_table_problems_name_file_line_and_column(tmp_path, text, spec, message):
    table = _table(tmp_path, text, {"a.png": (1, 1)})
    (tmp_path / "n.txt").write_text("y\n")
    with pytest.raises(BadInputError) as info:
        open_source(f"csv:{table}{spec}")
    assert str(info.value) == message.format(t=f"csv file {table}", d=tmp_path)


def test_unknown_options_are_refused_naming_the_spec(tmp_path):
    table = _table(tmp_path, "path,label\na.png,x\n", {"a.png": (1, 1)})
    with pytest.raises(BadInputError,
                       match=r"option 'lable=x' is not KEY=VALUE with KEY one of path, label, names, target"):
        open_source(f"csv:{table}?lable=x")


def test_the_table_is_the_protected_input_of_a_csv_source():
    assert source_path("csv:t/l.csv?label=y") == Path("t/l.csv")


def test_a_multi_label_target_keeps_its_positive_rows_labelled_with_the_findings_output(tmp_path):
    table = _table(tmp_path, "file,effusion,drain,site\na.png,1,1,A\nb.png,0,1,B\nc.png,1.0,0,B\nd.png,0.0,0,A\n",
                   {f"{c}.png": (1, 1) for c in "abcd"})
    (tmp_path / "findings.txt").write_text("drain\neffusion\nnodule\n")
    dataset = open_source(f"csv:{table}?path=file&names=findings.txt&target=effusion")
    assert dataset.label_names == ["drain", "effusion", "nodule"]
    assert [dataset[i][1] for i in range(len(dataset))] == [1, 1]
    assert dataset.record()["files"] == ["a.png", "c.png"]
    assert dataset.metadata == {"drain": ["1", "0"], "site": ["A", "B"]}


@pytest.mark.parametrize(("rule", "files", "drain", "counts"), [
    ("negative", ["a.png", "d.png"], None, (2, 1, 2, 1)),
    ("positive", ["a.png", "b.png", "d.png", "e.png"], ["1", "-1", "1", "-1"], (2, 1, 2, 1)),
])
def test_an_uncertain_finding_is_explained_or_left_out_by_the_stated_rule_and_the_rows_are_counted(
        tmp_path, rule, files, drain, counts):
    table = _table(tmp_path, "path,drain,site\na.png,1,A\nb.png,-1,B\nc.png,0,A\nd.png,1.0,B\ne.png,-1.0,A\n"
                             "f.png,,B\n", {f"{c}.png": (1, 1) for c in "abcdef"})
    (tmp_path / "f.txt").write_text("drain\neffusion\n")
    dataset = open_source(f"csv:{table}?names=f.txt&target=drain&uncertain={rule}")
    record = dataset.record()
    assert record["files"] == files and [dataset[i][1] for i in range(len(dataset))] == [0] * len(files)
    assert dataset.metadata.get("drain") == drain
    positive, negative, uncertain, blank = counts
    assert record["selection"] == {"target": "drain", "rows": 6, "positive": positive, "negative": negative,
                                   "uncertain": uncertain, "blank": blank, "uncertain_rule": rule}
    assert dataset.selection.samples == len(files)


def test_a_target_table_without_uncertain_rows_records_no_rule_and_a_blank_is_not_a_sample(tmp_path):
    table = _table(tmp_path, "path,drain\na.png,1\nb.png,\nc.png,0\n", {f"{c}.png": (1, 1) for c in "abc"})
    (tmp_path / "f.txt").write_text("drain\n")
    record = open_source(f"csv:{table}?names=f.txt&target=drain&uncertain=positive").record()
    assert record["files"] == ["a.png"]
    assert record["selection"] == {"target": "drain", "rows": 3, "positive": 1, "negative": 1, "uncertain": 0,
                                   "blank": 1, "uncertain_rule": None}


@pytest.mark.parametrize(("text", "spec", "message"), [
    ("path,effusion\na.png,1\n", "?names=f.txt&target=drain",
     "{t}, line 1: no column 'drain' (the columns are 'path', 'effusion'); name the path and target columns: "
     "csv:PATH?path=COLUMN&target=COLUMN"),
    ("path,drain\na.png,1\na.png,-1\n", "?names=f.txt&target=drain",
     "{t}, line 3, column 'drain': value '-1' is an uncertain finding (CheXpert's -1): say what it means with "
     "uncertain=positive (explained with the 1s) or uncertain=negative (left out like the 0s)"),
    ("path,drain\na.png,1\na.png,2\n", "?names=f.txt&target=drain&uncertain=negative",
     "{t}, line 3, column 'drain': value '2' is not 0 or 1 (a multi-label table holds 1 where the image has "
     "the finding, else 0; -1 where it is uncertain, a blank where it is not mentioned)"),
    ("path,drain\na.png,1\n", "?names=f.txt&uncertain=positive",
     "{t}: uncertain=positive applies to a multi-label table: give target=COLUMN too"),
    ("path,drain\na.png,1\n", "?names=f.txt&target=drain&uncertain=ignore",
     "{t}: uncertain=ignore is not one of positive, negative (what an uncertain -1 in the target column means: "
     "positive, explained with the 1s; negative, left out like the 0s)"),
    ("path,drain\na.png,\na.png,-1.0\n", "?names=f.txt&target=drain&uncertain=negative",
     "{t}: no row has 1 in column 'drain', so no image has the finding to explain"),
    ("path,drain\na.png,0\na.png,0\n", "?names=f.txt&target=drain",
     "{t}: no row has 1 in column 'drain', so no image has the finding to explain"),
    ("path,drain\na.png,1\n", "?target=drain",
     "{t}: target=drain needs names=FILE, naming the model's outputs (one finding per line, in output order), "
     "to know which output explains the finding"),
    ("path,nodule\na.png,1\n", "?names=f.txt&target=nodule",
     "{t}: target 'nodule' is not a name of {d}/f.txt (which names the model's outputs, one per line, in "
     "output order)"),
    ("path,drain,label\na.png,1,x\n", "?names=f.txt&target=drain&label=label",
     "{t}: label=COLUMN and target=COLUMN exclude each other: with target=COLUMN the images are the rows with 1 "
     "in that column, labelled with the finding's output (docs/data.md)"),
])
def test_multi_label_table_problems_name_file_line_and_column(tmp_path, text, spec, message):
    table = _table(tmp_path, text, {"a.png": (1, 1)})
    (tmp_path / "f.txt").write_text("drain\neffusion\n")
    with pytest.raises(BadInputError) as info:
        open_source(f"csv:{table}{spec}")
    assert str(info.value) == message.format(t=f"csv file {table}", d=tmp_path)
