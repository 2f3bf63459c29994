"""Ranking: classes ordered by cut, then z; only the class whose best cluster stands out from the other classes is
flagged."""

from __future__ import annotations

import math

import numpy as np
import pytest

from spray.pipeline import analyze, pipeline_from_text
from spray.ranking import _flag, _order, rank_classes, ranking_table
from spray.store import AuditStore
from spray.testing import make_heatmaps, pipeline_text, write_store


def test_only_the_poisoned_class_is_flagged_and_the_table_has_every_column(tmp_path):
    path = write_store(tmp_path / "s.h5", make_heatmaps(n_per_class=50, n_classes=6, poisoned=4, seed=5))
    analyze(str(path), pipeline_from_text(pipeline_text()), progress=False)
    with AuditStore(path) as store:
        ranking = rank_classes(store)
    print([(e["class"], round(e["score"], 1), round(e["outlier"], 2)) for e in ranking])
    assert [e["class"] for e in ranking if e["flagged"]] == [4]
    assert ranking[0]["outlier"] >= 3 and all(e["outlier"] < 3 for e in ranking[1:])
    table = ranking_table(ranking)
    assert list(table["flagged"]) == [True] + [False] * 5 and table.shape[0] == 6


def test_the_ranking_does_not_depend_on_the_permutation_seed_or_count(tmp_path):
    path = write_store(tmp_path / "s.h5", make_heatmaps(n_per_class=50, n_classes=6, poisoned=2, seed=9))
    rankings = []
    for fda in ({"random_state": 0, "n_permutations": 30}, {"random_state": 7, "n_permutations": 5}):
        analyze(str(path), pipeline_from_text(pipeline_text(fda=fda)), progress=False)
        with AuditStore(path) as store:
            rankings.append(rank_classes(store))
    same = ["class", "score", "tau", "clustering", "cluster", "members", "outlier", "flagged"]
    assert [{k: e[k] for k in same} for e in rankings[0]] == [{k: e[k] for k in same} for e in rankings[1]]
    assert rankings[0][0]["class"] == 2 and rankings[0][0]["flagged"]
    assert rankings[0][0]["p_value"] == 1 / 31 and rankings[1][0]["p_value"] == 1 / 6


def _entries(cuts, zs):
    return [{"class": c, "ncut": cut, "score": z, "p_value": 0.01, "skipped": None}
            for c, (cut, z) in enumerate(zip(cuts, zs))]


def test_classes_are_ordered_by_cut_first_then_by_z_and_unanalysed_last():
    entries = _entries([0.04, 0.017, 0.2, None, 0.017], [483.0, 392.0, 900.0, 50.0, 400.0])
    entries.append({"class": 5, "ncut": None, "score": None, "p_value": None, "skipped": "too few samples"})
    assert [e["class"] for e in sorted(entries, key=_order)] == [4, 1, 0, 2, 3, 5]


def test_the_outlier_score_is_the_robust_standard_score_of_minus_log_cut():
    cuts = [0.0173, 0.0404, 0.0571, 0.114, 0.196, 0.213, 0.214, 0.220, 0.236, 0.336]  # the demo's, seed 0
    entries = _entries(cuts, [392.6, 483.4, 187.2, 247.4, 92.0, 95.2, 146.7, 106.5, 90.1, 69.6])
    _flag(entries)
    logs = -np.log(cuts)
    spread = 1.4826 * np.median(np.abs(logs - np.median(logs)))
    assert [e["outlier"] for e in entries] == pytest.approx((logs - np.median(logs)) / spread)
    assert [e["class"] for e in entries if e["flagged"]] == [0, 1]  # 5.2 and 3.4 robust sd above the median


def test_a_disconnected_group_is_an_infinite_outlier_and_ties_in_cut_fall_back_to_z():
    entries = _entries([0.0, 0.2, 0.25, 0.3, 0.22], [10.0, 12.0, 11.0, 13.0, 12.5])
    _flag(entries)
    assert entries[0]["outlier"] == math.inf and [e["flagged"] for e in entries] == [True] + [False] * 4
    # Every class has a disconnected group (the synthetic heatmaps): the cuts have no spread, z decides.
    for cuts in ([0.0] * 5, [None] * 5):  # ... as for a store analysed before cuts were stored
        entries = _entries(cuts, [50.0, 10.0, 11.0, 12.0, 13.0])
        _flag(entries)
        assert entries[0]["outlier"] == pytest.approx(
            (np.log(50) - np.log(12)) / (1.4826 * np.median(np.abs(np.log([50, 10, 11, 12, 13]) - np.log(12)))))
        assert [e["flagged"] for e in entries] == [True] + [False] * 4
