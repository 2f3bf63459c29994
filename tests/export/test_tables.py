"""Tables of an analysis: cluster memberships, ClArC metrics, CSV/JSON writers."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest

from spray.errors import BadInputError
from spray.export import clarc_metrics, cluster_memberships, export_tables, write_table
from spray.export.tables import CLARC_COLUMNS
from spray.ranking import rank_classes
from spray.results import write_result
from spray.store import AuditStore


def test_memberships_have_one_row_per_sample_and_clustering_of_each_analysed_class(audit_store):
    table = cluster_memberships(audit_store)
    assert list(table.columns) == ["class", "class_name", "clustering", "cluster", "dataset_index", "flagged"]
    assert sorted(table["class"].unique()) == [0, 1, 2]  # class 3 was skipped
    per = table.groupby(["class", "clustering"]).size()
    assert (per == 50).all()
    assert {"hdbscan", "kmeans_2", "kmeans_3", "kmeans_4"} <= set(table["clustering"])
    one = table[(table["class"] == 1) & (table["clustering"] == "kmeans_3")]
    assert sorted(one["dataset_index"]) == list(range(50, 100))
    assert (table.loc[table["class"] == 1, "class_name"] == "<script>alert(1)</script>").all()


def test_flagged_rows_are_the_members_spray_rank_reports(audit_store):
    table = cluster_memberships(audit_store)
    with AuditStore(audit_store) as store:
        ranking = rank_classes(store)
    for entry in ranking:
        flagged = table[(table["class"] == entry.label) & table["flagged"]]
        if entry.cluster is not None:
            assert set(flagged["clustering"]) == {entry.cluster.clustering}
            assert sorted(flagged["dataset_index"]) == sorted(entry.cluster.members)
            assert set(flagged["cluster"]) == {entry.cluster.id}
        else:
            assert flagged.empty


def test_memberships_can_be_limited_to_named_clusterings(audit_store):
    table = cluster_memberships(audit_store, clusterings=["hdbscan"])
    assert set(table["clustering"]) == {"hdbscan"} and len(table) == 150
    empty = cluster_memberships(audit_store, clusterings=["nothing"])
    assert empty.empty and list(empty.columns) == list(table.columns)


def test_clarc_metrics_have_a_row_per_run_and_model_with_missing_values_as_nan(audit_store):
    table = clarc_metrics(audit_store)
    assert list(table.columns) == CLARC_COLUMNS
    assert table["model"].tolist() == ["original", "corrected"]
    assert set(table["run"]) == {"pclarc-1"} and set(table["method"]) == {"pclarc"}
    assert table["poisoned_accuracy"].tolist() == [0.41, 0.88]
    assert math.isnan(table.loc[1, "everywhere_accuracy"])
    assert table["fda_rank"].tolist() == [1, 3]
    assert table["worst_group_accuracy"].isna().all()  # recorded before the figure existed


def test_clarc_metrics_carry_group_accuracies_density_tcav_and_cost(audit_store, tmp_path):
    store = shutil.copy(audit_store, tmp_path / "audit.h5")
    with AuditStore(store) as opened:
        arrays, attrs = opened.read_node("clarc/pclarc-1/result")
    figures = {"group_accuracy": {"0:clean": 0.9, "0:artifact": 0.2}, "average_group_accuracy": 0.55,
               "worst_group_accuracy": 0.2, "relevance_density": 2.5, "tcav_score": 1.0, "tcav_magnitude": 3.8,
               "tcav_layer": "features.1"}
    metrics = [{**attrs["metrics"][0], **figures, "training_seconds": None},
               {**attrs["metrics"][1], **figures, "worst_group_accuracy": 0.6, "relevance_density": 1.1,
                "tcav_score": 0.5, "training_seconds": 12.5}]
    write_result(store, "aclarc-2", arrays, {**attrs, "method": "aclarc", "metrics": metrics})
    table = clarc_metrics(store).set_index(["run", "model"]).loc["aclarc-2"]
    assert table["worst_group_accuracy"].tolist() == [0.2, 0.6]
    assert table["average_group_accuracy"].tolist() == [0.55, 0.55]
    assert table["relevance_density"].tolist() == [2.5, 1.1]
    assert table["tcav_score"].tolist() == [1.0, 0.5] and table["tcav_magnitude"].tolist() == [3.8, 3.8]
    assert table["tcav_layer"].tolist() == ["features.1", "features.1"]
    assert math.isnan(table.loc["original", "training_seconds"]) and table.loc["corrected", "training_seconds"] == 12.5
    assert "group_accuracy" not in table.columns


def test_tables_round_trip_through_csv_and_json(tmp_path):
    frame = pd.DataFrame({"a": [1, 2], "b": ["x<y", "ü"], "c": [0.5, np.nan]})
    csv = write_table(frame, tmp_path / "t.csv")
    pd.testing.assert_frame_equal(pd.read_csv(csv), frame)
    records = json.loads(write_table(frame, tmp_path / "deep" / "t.json").read_text(encoding="utf-8"))
    assert records == [{"a": 1, "b": "x<y", "c": 0.5}, {"a": 2, "b": "ü", "c": None}]
    with pytest.raises(BadInputError, match="must end in .csv or .json"):
        write_table(frame, tmp_path / "t.xlsx")


def test_export_tables_writes_ranking_memberships_and_clarc(audit_store, tmp_path):
    paths = export_tables(audit_store, tmp_path, fmt="json")
    assert [p.name for p in paths] == ["ranking.json", "memberships.json", "clarc.json"]
    ranking = json.loads(paths[0].read_text(encoding="utf-8"))
    assert ranking[0]["class"] == 1 and ranking[-1]["skipped"].startswith("5 samples")
    with pytest.raises(BadInputError, match="'csv' or 'json'"):
        export_tables(audit_store, tmp_path, fmt="xml")
