"""Ranking: classes ordered by cut, then z; only the class whose best cluster stands out from the other classes is
flagged."""

from __future__ import annotations

import json
import math
from dataclasses import FrozenInstanceError, replace

import numpy as np
import pytest

from spray.pipeline import analyze, pipeline_from_text
from spray.ranking import TABLE_COLUMNS, RankedClass, Ranking, _flags, _order, _ranked, rank_classes, replace_class
from spray.results import ClassBest, Cluster
from spray.store import AuditStore
from spray.testing import make_heatmaps, pipeline_text, write_store
from tests.golden.outputs import EXPECTED, HERE as GOLDEN


def test_only_the_poisoned_class_is_flagged_and_the_table_has_every_column(tmp_path):
    path = write_store(tmp_path / "s.h5", make_heatmaps(n_per_class=50, n_classes=6, poisoned=4, seed=5))
    analyze(str(path), pipeline_from_text(pipeline_text()), progress=False)
    with AuditStore(path) as store:
        ranking = rank_classes(store)
    print([(e.label, round(e.z_score, 1), round(e.outlier, 2)) for e in ranking])
    assert [e.label for e in ranking.flagged] == [4]
    assert ranking[0].outlier >= 3 and all(e.outlier < 3 for e in ranking[1:])
    table = ranking.table()
    assert list(table["flagged"]) == [True] + [False] * 5 and table.shape[0] == 6


def test_the_ranking_does_not_depend_on_the_permutation_seed_or_count(tmp_path):
    path = write_store(tmp_path / "s.h5", make_heatmaps(n_per_class=50, n_classes=6, poisoned=2, seed=9))
    rankings = []
    for fda in ({"random_state": 0, "n_permutations": 30}, {"random_state": 7, "n_permutations": 5}):
        analyze(str(path), pipeline_from_text(pipeline_text(fda=fda)), progress=False)
        with AuditStore(path) as store:
            rankings.append(rank_classes(store))
    same = ["class", "score", "tau", "clustering", "cluster", "members", "outlier", "flagged"]
    assert [{k: e[k] for k in same} for e in rankings[0].to_json()] == [
        {k: e[k] for k in same} for e in rankings[1].to_json()
    ]
    assert rankings[0][0].label == 2 and rankings[0][0].flagged
    assert rankings[0][0].p_value == 1 / 31 and rankings[1][0].p_value == 1 / 6


def _clusters(cuts, zs):
    """Best clusters of classes 0, 1, ... with the given cuts and z-scores (p = 0.01)."""
    return [Cluster(label, "kmeans_2", 0, (label,), cut, 1.0, z, 0.01, 1.0)
            for label, (cut, z) in enumerate(zip(cuts, zs))]


def test_classes_are_ordered_by_cut_first_then_by_z_and_unanalysed_last():
    clusters = _clusters([0.04, 0.017, 0.2, None, 0.017], [483.0, 392.0, 900.0, 50.0, 400.0]) + [None]
    assert sorted(range(6), key=lambda label: _order(label, clusters[label])) == [4, 1, 0, 2, 3, 5]


def test_the_outlier_score_is_the_robust_standard_score_of_minus_log_cut():
    cuts = [0.0173, 0.0404, 0.0571, 0.114, 0.196, 0.213, 0.214, 0.220, 0.236, 0.336]  # the demo's, seed 0
    flags = _flags(_clusters(cuts, [392.6, 483.4, 187.2, 247.4, 92.0, 95.2, 146.7, 106.5, 90.1, 69.6]))
    logs = -np.log(cuts)
    spread = 1.4826 * np.median(np.abs(logs - np.median(logs)))
    assert [outlier for outlier, _ in flags] == pytest.approx((logs - np.median(logs)) / spread)
    assert [c for c, (_, flagged) in enumerate(flags) if flagged] == [0, 1]  # 5.2 and 3.4 robust sd above the median


def test_a_disconnected_group_is_an_infinite_outlier_and_ties_in_cut_fall_back_to_z():
    flags = _flags(_clusters([0.0, 0.2, 0.25, 0.3, 0.22], [10.0, 12.0, 11.0, 13.0, 12.5]))
    assert flags[0][0] == math.inf and [flagged for _, flagged in flags] == [True] + [False] * 4
    # Every class has a disconnected group (the synthetic heatmaps): the cuts have no spread, z decides.
    for cuts in ([0.0] * 5, [None] * 5):  # ... as for a store analysed before cuts were stored
        flags = _flags(_clusters(cuts, [50.0, 10.0, 11.0, 12.0, 13.0]))
        assert flags[0][0] == pytest.approx(
            (np.log(50) - np.log(12)) / (1.4826 * np.median(np.abs(np.log([50, 10, 11, 12, 13]) - np.log(12)))))
        assert [flagged for _, flagged in flags] == [True] + [False] * 4


def test_with_fewer_than_four_classes_a_class_is_flagged_by_z_and_p_alone_and_skipped_ones_never():
    clusters = _clusters([0.1, 0.2, 0.3], [3.0, 2.9, 40.0])
    clusters[2] = replace(clusters[2], p_value=0.06)
    assert _flags(clusters + [None]) == [(None, True), (None, False), (None, False), (None, False)]


def test_replacing_a_class_ranks_and_flags_it_again_against_the_others_as_they_were():
    cuts = [0.0173, 0.0404, 0.0571, 0.114, 0.196, 0.213, 0.214, 0.220, 0.236, 0.336]  # the demo's, seed 0
    classes = [ClassBest(c.label, str(c.label), 100, c, None) for c in _clusters(cuts, [50.0] * 10)]
    ranking = _ranked("spray", classes)
    assert [e.label for e in ranking.flagged] == [0, 1]
    calmer = ClassBest(0, "0", 100, replace(classes[0].cluster, ncut=0.2), None)
    after = replace_class(ranking, calmer)
    assert [e.label for e in after][:5] == [1, 2, 3, 4, 0] and after.of(0).rank == 5
    assert not after.of(0).flagged and after.of(0).ncut == 0.2
    assert [e.to_json() for e in after if e.label != 0] == [
        {**e.to_json(), "rank": after.of(e.label).rank, "outlier": after.of(e.label).outlier,
         "flagged": after.of(e.label).flagged} for e in ranking if e.label != 0]
    skipped = replace_class(ranking, ClassBest(1, "1", 100, None, "too few samples"))
    assert skipped[-1].label == 1 and skipped[-1].skipped == "too few samples" and len(skipped) == 10


def test_the_json_of_a_ranking_has_the_golden_keys_values_and_order():
    golden = json.loads((EXPECTED / "audit" / "rank.json").read_text(encoding="utf-8"))
    with AuditStore(GOLDEN / "audit.h5", mode="r") as store:
        ranking = rank_classes(store)
    assert ranking.to_json() == golden
    assert [list(e.to_json()) for e in ranking] == [list(e) for e in golden]  # the keys' order too
    assert list(ranking.table().columns) == list(TABLE_COLUMNS)
    top, skipped = ranking[0], ranking[-1]
    assert (top.label, top.rank, top.z_score, top.cluster.size) == (1, 1, golden[0]["score"], 12)
    assert top.cluster.reference == "1:hdbscan:1" and top.cluster.members == tuple(range(50, 62))
    assert skipped.cluster is None and skipped.to_json()["members"] == [] and ranking.of(3) is skipped
    assert ranking.top_candidate() is top and ranking.flagged == tuple(e for e in ranking if e.flagged)


def test_ranking_records_are_immutable_and_consistent():
    best = _clusters([0.1], [5.0])[0]
    entry = RankedClass(0, "a", 10, rank=1, cluster=best, skipped=None, outlier=None, flagged=True)
    ranking = Ranking("spray", (entry,))
    for record, field in ((best, "members"), (entry, "flagged"), (ranking, "classes")):
        with pytest.raises(FrozenInstanceError):
            setattr(record, field, None)
    with pytest.raises(ValueError, match="class 0: a ranked class has either a best cluster or a reason it was "
                                         "skipped, not both"):
        replace(entry, skipped="too few samples")
    with pytest.raises(ValueError, match="not neither"):
        replace(entry, cluster=None)
    with pytest.raises(ValueError, match=r"class 1: its best cluster is 0:kmeans_2:0, of another class"):
        replace(entry, label=1)
