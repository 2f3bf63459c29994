"""Text in the audit store: fixed-length UTF-8 everywhere (no HDF5 global heap), str in and str out, and
stores written with variable-length strings (before) still read the same."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from spray.pipeline import analyze, pipeline_from_text
from spray.store import AuditStore, rewrite_text_variable_length
from spray.testing import make_heatmaps, pipeline_text, write_store

NAMES = ["café ✓", "naïve 🐟"]
TEXT = np.array([["", "a"], ["é✓", "x" * 70]])  # an empty string and rows of unequal byte lengths


def _string_types(path: Path) -> dict[str, h5py.string_info]:
    """Every string-typed attribute and dataset of the file, by ``object path@attribute`` / path."""
    found: dict[str, h5py.string_info] = {}
    with h5py.File(path, "r") as f:
        def visit(name: str, obj: Any) -> None:
            for key in obj.attrs:
                info = h5py.check_string_dtype(obj.attrs.get_id(key).dtype)
                if info is not None:
                    found[f"{name}@{key}"] = info
            if isinstance(obj, h5py.Dataset) and h5py.check_string_dtype(obj.dtype) is not None:
                found[name] = h5py.check_string_dtype(obj.dtype)

        visit("/", f)
        f.visititems(visit)
    return found


@pytest.fixture(scope="module")
def analysed(tmp_path_factory) -> Path:
    """A store written, attributed, analysed, with non-ASCII class names and a node holding text."""
    heatmaps = make_heatmaps(n_per_class=15, n_classes=2, size=4)
    path = write_store(tmp_path_factory.mktemp("text") / "text.h5", heatmaps)
    with AuditStore(path, "a") as store:
        n = store.n_samples
        store.prepare_samples(n, dataset={"name": "d", "size": n}, model={"name": "m", "hash": "0" * 64},
                              label_names=NAMES)
    analyze(str(path), pipeline_from_text(pipeline_text("minimal")), progress=False)
    with AuditStore(path, "a") as store:
        store.write_node("clarc/run/result", {"names": TEXT, "raw": np.array([b"ab", b"c"])},
                         {"cluster": "1:kmeans_2:0", "note": "Ödem ✓", "empty": ""})
    return path


def test_a_written_and_analysed_store_holds_no_variable_length_text(analysed):
    types = _string_types(analysed)
    assert {"/@label_names", "/@model", "attributions/synthetic@params", "clarc/run/result/names",
            "clarc/run/result@note"} <= set(types)
    assert any(key.startswith("analyses/") for key in types)
    assert [key for key, info in types.items() if info.length is None] == []
    assert b"GCOL" not in analysed.read_bytes()  # no global heap collection in the file


def test_text_round_trips_as_str(analysed):
    store = AuditStore(analysed)
    assert store.attrs()["label_names"] == NAMES
    assert store.attribution_info("synthetic")["model_name"] == "synthetic"
    arrays, attrs = store.read_node("clarc/run/result")
    assert arrays["names"].dtype.kind == "U"
    np.testing.assert_array_equal(arrays["names"], TEXT)
    assert arrays["raw"].tolist() == [b"ab", b"c"]  # byte strings stay bytes
    assert attrs == {"cluster": "1:kmeans_2:0", "note": "Ödem ✓", "empty": ""}
    assert store.read("clarc/run/result/names", rows=[1, 0]).tolist() == TEXT[[1, 0]].tolist()
    assert store.has_node("clarc/run/result", {"note": "Ödem ✓"})


def test_a_store_with_variable_length_text_reads_as_before(analysed, tmp_path):
    old = tmp_path / "old.h5"
    old.write_bytes(analysed.read_bytes())
    rewrite_text_variable_length(old)
    types = _string_types(old)
    assert types and all(info.length is None for key, info in types.items() if key != "clarc/run/result/raw")
    new_store, old_store = AuditStore(analysed), AuditStore(old)
    assert old_store.attrs() == new_store.attrs()
    assert {**old_store.info(), "path": None} == {**new_store.info(), "path": None}
    for node in new_store.list_nodes("clarc") + new_store.list_nodes("analyses"):
        (old_arrays, old_attrs), (arrays, attrs) = old_store.read_node(node), new_store.read_node(node)
        assert old_attrs == attrs
        assert old_arrays.keys() == arrays.keys()
        for key, value in arrays.items():
            assert old_arrays[key].dtype == value.dtype
            np.testing.assert_array_equal(old_arrays[key], value)
    assert old_store.read("clarc/run/result/names").tolist() == TEXT.tolist()
    # Writing to such a store writes fixed-length text again, next to the old variable-length attributes.
    with AuditStore(old, "a") as store:
        store.write_node("clarc/run/other", {}, {"note": "ü"})
    assert _string_types(old)["clarc/run/other@note"].length == len(json.dumps("ü"))


def test_attribute_text_beyond_the_object_header_limit_is_stored_variable_length(tmp_path):
    """An attribute's header message holds at most 64 KiB: longer text keeps the variable-length type."""
    path = tmp_path / "big.h5"
    long = "é" * 40_000  # 80,000 bytes of UTF-8
    with AuditStore(path, "a") as store:
        store.write_node("analyses/a/big", {}, {"info": {"text": long}, "short": "ü"})
        assert store.read_node("analyses/a/big")[1] == {"info": {"text": long}, "short": "ü"}
    types = _string_types(path)
    assert types["analyses/a/big@info"].length is None
    assert types["analyses/a/big@short"].length == len(json.dumps("ü"))
