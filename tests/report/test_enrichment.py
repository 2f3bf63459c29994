"""Metadata enrichment of flagged groups: exact tests and false-discovery control, computed by hand, and the
sentence the report writes."""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest
from markupsafe import escape

from spray.ranking import RankedClass, rank_classes
from spray.report import render_report
from spray.report.enrichment import Enrichment, benjamini_hochberg, enrichment
from spray.results import Cluster
from spray.store import AuditStore


def test_benjamini_hochberg_by_hand():
    # sorted 0.01, 0.03, 0.04, 0.2 -> times 4/rank: 0.04, 0.06, 0.0533, 0.2 -> running minimum from the top.
    q = benjamini_hochberg([0.01, 0.04, 0.03, 0.2])
    np.testing.assert_allclose(q, [0.04, 0.16 / 3, 0.16 / 3, 0.2])
    assert benjamini_hochberg([]).size == 0 and benjamini_hochberg([0.9, 0.8]).tolist() == [0.9, 0.9]


def _ranked(label: int, name: str, flagged: bool, members: tuple[int, ...]) -> RankedClass:
    cluster = Cluster(label, "kmeans_2", 0, members, ncut=0.1, tau=1.0, z_score=5.0, p_value=0.01, clustering_j=1.0)
    return RankedClass(label, name, 16, label + 1, cluster, None, None, flagged)


def test_a_group_all_from_one_site_is_found_with_the_exact_hypergeometric_tail():
    labels = np.array([0] * 10 + [1] * 6)
    site = ["B"] * 5 + ["A"] * 5 + ["B"] * 6
    entries = [_ranked(0, "melanoma", True, (0, 1, 2, 3)), _ranked(1, "nevus", False, (10, 11))]
    # 4 of the group's 4 from B, 5 of the class's 10: P(X >= 4) = C(5, 4) C(5, 0) / C(10, 4) = 5 / 210.
    found = enrichment(entries, {"site": site, "sex": ["f", ""] * 8}, labels)
    assert found == [Enrichment(label=0, name="melanoma", column="site", value="B", in_group=4, group=4,
                                in_class=5, n_class=10, p=pytest.approx(5 / 210), q=pytest.approx(5 / 210 * 2))]
    assert found[0].sentence() == "the flagged group of class 'melanoma' is 100 % site 'B' (class: 50 %)"
    assert enrichment(entries, {"site": site}, labels, alpha=0.01) == []


def test_the_report_tells_the_enrichment_of_the_flagged_group(audit_store, tmp_path):
    copy = tmp_path / "audit.h5"
    shutil.copy(audit_store, copy)
    with AuditStore(copy) as store:
        top = rank_classes(store).flagged[0]
        labels = store.read("samples/label")
        record = store.attrs()["dataset"]
    in_class = np.flatnonzero(labels == top.label)
    site = np.full(labels.size, "A", dtype=object)
    site[list(top.cluster.members)] = "B"
    with h5py.File(copy, "r+") as f:
        f.attrs["dataset"] = json.dumps({**record, "metadata": {"site": site.tolist()}})
    html = render_report(copy, max_classes=0)
    share = 100 * top.cluster.size / in_class.size
    sentence = f"The flagged group of class {top.name!r} is 100 % site 'B' (class: {share:.0f} %)"
    assert str(escape(sentence)) + " (one-sided Fisher exact test" in html
    assert "Benjamini–Hochberg: q &lt; 0.001): a candidate for the cause" in html
