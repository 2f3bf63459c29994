"""Ranking: classes ordered by cut, then z; flags calibrated by the selection null, the classes' empirical null
and Benjamini-Hochberg."""

from __future__ import annotations

import json
import math
from dataclasses import FrozenInstanceError, replace

import numpy as np
import pytest
from scipy.stats import norm
from scipy.stats import t as student_t

from spray.pipeline import analyze, pipeline_from_text
from spray.ranking import (
    MEANING,
    SEPARATION_FLOOR,
    TABLE_COLUMNS,
    RankedClass,
    Ranking,
    _against_others,
    _order,
    _combined,
    _ranked,
    _tests,
    benjamini_hochberg,
    contrasts,
    flag_tests,
    flagged_classes,
    rank_analyses,
    rank_classes,
    rank_found,
    replace_class,
)
from spray.results import ClassBest, Cluster
from spray.store import AuditStore
from spray.testing import make_heatmaps, pipeline_text, write_store
from tests.golden.outputs import EXPECTED, HERE as GOLDEN


def _analysed(tmp_path, n_classes, poisoned, seed=5, name="s.h5"):
    """A store of make_heatmaps classes with one strategy each (Gaussian noise around one blob: no structure),
    class ``poisoned`` with a planted group of 20 %, analysed by the synthetic pipeline."""
    heatmaps = make_heatmaps(n_per_class=50, n_classes=n_classes, strategies=1, poisoned=poisoned,
                             poison_fraction=0.2, seed=seed)
    path = write_store(tmp_path / name, heatmaps)
    analyze(str(path), pipeline_from_text(pipeline_text()), progress=False)
    return path


def test_only_the_poisoned_class_is_flagged_and_the_table_has_every_column(tmp_path):
    path = _analysed(tmp_path, n_classes=6, poisoned=4)
    with AuditStore(path) as store:
        ranking = rank_classes(store)
    print([(e.label, e.null_p_value, e.outlier, e.q_value) for e in ranking])
    assert [e.label for e in ranking.flagged] == [4] and ranking[0].label == 4
    assert ranking[0].null_p_value < 0.05 / 20 and all(e.q_value > 0.05 for e in ranking[1:])
    table = ranking.table()
    assert list(table["flagged"]) == [True] + [False] * 5 and table.shape[0] == 6
    assert list(table.columns) == list(TABLE_COLUMNS)


@pytest.mark.parametrize("n_classes", [2, 3])
def test_a_binary_or_three_class_audit_flags_only_the_class_with_a_planted_group(tmp_path, n_classes):
    path = _analysed(tmp_path, n_classes=n_classes, poisoned=1)
    with AuditStore(path) as store:
        ranking = rank_classes(store)
    print([(e.label, e.null_p_value, e.outlier, e.q_value) for e in ranking])
    assert [e.label for e in ranking.flagged] == [1]
    # Fewer than 4 classes: judged against the theoretical null, z = Φ⁻¹(1 − p) itself.
    assert [e.outlier for e in ranking] == pytest.approx([norm.isf(max(e.null_p_value, 1e-300)) for e in ranking])


def _two_analyses(tmp_path):
    """A 3-class store (class 2 with a planted group) analysed twice: "spray" and "again" (7 neighbours)."""
    path = _analysed(tmp_path, n_classes=3, poisoned=2)
    analyze(str(path), pipeline_from_text(pipeline_text(analysis={"name": "again"}, knn={"n_neighbors": 7})),
            progress=False)
    return path


def test_flags_over_several_analyses_of_one_store_share_one_bh(tmp_path):
    path = _two_analyses(tmp_path)
    with AuditStore(path) as store:
        tests = flag_tests(store, ["spray", "again"])
        single = flag_tests(store, ["spray"])
        assert flagged_classes(store, ["spray", "again"]) == [2]
    assert sorted((t.analysis, t.label) for t in tests) == [(a, c) for a in ("again", "spray") for c in range(3)]
    p = np.array([t.p_value for t in tests])
    assert [t.q_value for t in tests] == pytest.approx(benjamini_hochberg(p))
    assert [t.q_value for t in single] == pytest.approx(benjamini_hochberg(np.array([t.p_value for t in single])))


def test_a_ranking_over_two_analyses_names_each_class_by_its_strongest_test(tmp_path):
    path = _two_analyses(tmp_path)
    with AuditStore(path) as store:
        both = rank_analyses(store, ["spray", "again"])
        tests = flag_tests(store, ["spray", "again"])
        alone = {a: rank_classes(store, a) for a in ("spray", "again")}
        assert rank_analyses(store, ["spray"]) == alone["spray"]
    assert both.analyses == ("spray", "again") and [e.label for e in both.flagged] == [2] and both[0].label == 2
    for entry in both:
        strongest = min((t for t in tests if t.label == entry.label), key=lambda t: t.p_value)
        assert (entry.analysis, entry.flag_p_value, entry.q_value) == (
            strongest.analysis, strongest.p_value, strongest.q_value)
        assert entry.cluster == alone[entry.analysis].of(entry.label).cluster
    assert [e.q_value for e in both] == sorted(e.q_value for e in both) and [e.rank for e in both] == [1, 2, 3]
    assert [list(e)[0] for e in both.to_json()] == ["analysis"] * 3
    assert list(both.table().columns) == ["analysis", *TABLE_COLUMNS]


def test_combining_analyses_picks_the_smallest_flag_p_then_a_cluster_and_orders_by_q():
    a, b = _clusters([0.1, 0.2, 0.3, 0.4], [5.0] * 4), _clusters([0.5, 0.05, 0.6, 0.7], [5.0] * 4)
    ranking = _combined({
        "a": [ClassBest(0, "0", 10, a[0], None, 0.3), ClassBest(1, "1", 10, a[1], None, 1e-8),
              ClassBest(2, "2", 10, a[2], None, 0.2), ClassBest(3, "3", 10, None, "too few samples", None),
              ClassBest(4, "4", 10, None, "too few samples", None)],
        "b": [ClassBest(0, "0", 10, b[0], None, 1e-6), ClassBest(1, "1", 10, b[1], None, 0.01),
              ClassBest(2, "2", 10, b[2], None, None), ClassBest(3, "3", 10, b[3], None, None),
              ClassBest(4, "4", 10, None, "no candidate cluster", None)],
    })
    # Five tests (a: 3, b: 2; theoretical nulls): BH of (.3, 1e-8, .2, 1e-6, .01) is (.3, 5e-8, .25, 2.5e-6, .05/3).
    assert [(e.label, e.analysis, e.rank) for e in ranking] == [
        (1, "a", 1), (0, "b", 2), (2, "a", 3), (3, "b", 4), (4, "a", 5)]
    assert [e.q_value for e in ranking] == pytest.approx([5e-8, 2.5e-6, 0.25, None, None])
    assert [e.flagged for e in ranking] == [True, True, False, False, False]
    assert ranking.of(0).cluster is b[0] and ranking.of(3).cluster is b[3] and ranking.of(4).skipped == "too few samples"
    assert ranking.top_candidate() is ranking.of(1) and ranking.analysis == "a"


def test_an_analysis_named_twice_is_refused(tmp_path):
    from spray.errors import BadInputError

    with AuditStore(_analysed(tmp_path, n_classes=2, poisoned=1)) as store, pytest.raises(
            BadInputError, match=r"^analyses 'spray,spray': name each analysis once, e.g. 'spray,concept'$"):
        rank_analyses(store, ["spray", "spray"])


def _clusters(cuts, zs):
    """Best clusters of classes 0, 1, ... with the given cuts and z-scores (p = 0.01)."""
    return [Cluster(label, "kmeans_2", 0, (label,), cut, 1.0, z, 0.01, 1.0)
            for label, (cut, z) in enumerate(zip(cuts, zs))]


def test_classes_are_ordered_by_cut_first_then_by_z_and_unanalysed_last():
    clusters = _clusters([0.04, 0.017, 0.2, None, 0.017], [483.0, 392.0, 900.0, 50.0, 400.0]) + [None]
    assert sorted(range(6), key=lambda label: _order(label, clusters[label])) == [4, 1, 0, 2, 3, 5]


def test_top_flagged_is_the_best_ranked_flagged_class_where_top_candidate_is_the_best_ranked():
    """One analysis ranks by cut, so a flagged class can rank below an unflagged one: ``--cluster top`` corrects
    the flagged one (spray.clarc.cluster.resolve_cluster), a report leads with the first."""
    c = _clusters([0.1, 0.2, 0.3], [5.0] * 3)
    entries = (RankedClass(0, "0", 10, 1, c[0], None, 0.5, False, q_value=0.4),
               RankedClass(1, "1", 10, 2, c[1], None, 4.0, True, q_value=0.01),
               RankedClass(2, "2", 10, 3, c[2], None, 5.0, True, q_value=0.001),
               RankedClass(3, "3", 10, 4, None, "too few samples", None, False))
    ranking = Ranking("a", entries)
    assert ranking.top_candidate() is entries[0] and ranking.top_flagged() is entries[1]
    assert Ranking("a", entries[:1] + entries[3:]).top_flagged() is None
    assert Ranking("a", entries[3:]).top_candidate() is None


def test_benjamini_hochberg_adjusts_in_order_and_caps_at_one():
    q = benjamini_hochberg(np.array([0.04, 0.001, 0.03, 0.5, 0.012]))
    assert q == pytest.approx([0.05, 0.005, 0.05, 0.5, 0.03])  # m p / rank: .05, .005, .05, .5, .03
    assert benjamini_hochberg(np.array([0.9, 0.8])) == pytest.approx([0.9, 0.9])
    assert benjamini_hochberg(np.array([])).size == 0


def test_a_class_is_judged_by_the_prediction_interval_of_the_other_classes_excess():
    # Others 0.2, 0.4, 0.6: mean 0.4, sd 0.2, scale 0.2 · √(4/3) = 0.2309; 1.0 is 2.598 scales above; t, 2 df.
    location, scale, outlier, p = _against_others(1.0, np.array([0.2, 0.4, 0.6]))
    assert (location, scale, outlier, p) == pytest.approx((0.4, 0.23094, 2.59808, 0.060845), abs=1e-5)
    assert _against_others(0.4, np.array([0.2, 0.4, 0.6]))[2:] == pytest.approx((0.0, 0.5))
    assert _against_others(float("nan"), np.array([0.2, 0.4, 0.6]))[3] == 1.0  # no excess: never flagged
    assert _against_others(0.5, np.array([0.3, 0.3, 0.3]))[2:] == (float("inf"), 0.0)  # others without spread
    assert _against_others(0.3, np.array([0.3, 0.3, 0.3]))[3] == 1.0


def test_a_flag_needs_both_the_selection_null_and_an_excess_beyond_the_other_classes():
    # no separations (a store analysed before fda version 5): the classes are compared on their excesses alone
    clean = [(c, p, x, None) for c, (p, x) in enumerate(zip([0.01, 0.002, 0.02, 0.005, 0.001, 0.01, 0.003],
                                                            [0.3, 0.4, 0.5, 0.35, 0.45, 0.4, 0.38]))]
    tests = _tests({"a": clean + [(7, 1e-12, 3.0, None), (8, 1e-12, 0.42, None), (9, 0.2, 1.6, None),
                                  (10, None, None, None)],
                    "b": [(0, 0.3, 0.1, None), (1, 1e-6, 1.2, None)]})
    by = {(t.analysis, t.label): t for t in tests}
    assert ("a", 10) not in by and len(tests) == 12
    a7 = by[("a", 7)]  # others: the 7 clean classes, 0.42 and 2.0 (m = 9)
    others = np.array([0.3, 0.4, 0.5, 0.35, 0.45, 0.4, 0.38, 0.42, 1.6])
    assert (a7.location, a7.scale) == pytest.approx((others.mean(), others.std(ddof=1) * np.sqrt(1 + 1 / 9)))
    assert a7.excess == a7.contrast == 3.0 and a7.p_value == pytest.approx(student_t.sf(a7.outlier, 8))
    # 8: a tiny selection-null p but an ordinary excess; 9: the second largest excess, but the Gaussian null does not
    # reject it (p = max of the two): neither is flagged.
    assert by[("a", 8)].p_value > 0.3 and by[("a", 9)].p_value == 0.2
    assert [(t.analysis, t.label) for t in tests if t.flagged] == [("a", 7), ("b", 1)]
    b1 = by[("b", 1)]  # 2 classes: the selection-null p alone, its standard score Φ⁻¹(1 − p)
    assert (b1.location, b1.scale, b1.p_value) == (None, None, 1e-6) and b1.outlier == pytest.approx(4.753, abs=1e-3)
    assert _tests({"a": [(0, 0.0, 1.0, None)]})[0].outlier == pytest.approx(37.0, abs=0.1)  # p floored: finite


def test_classes_are_compared_on_their_contrast_the_excess_with_the_log_separation():
    excess = np.array([0.3, 0.4, 0.5, 0.35, 0.45, 0.4, 0.38, 0.42])
    separation = [3.0, 3.5, 2.8, 3.2, 4.0, 3.1, 2.9, 12.0]  # class 7: an ordinary excess, its group far off
    assert contrasts(excess, separation) == pytest.approx(excess + np.log(separation))
    assert contrasts(excess, [*separation[:-1], None]).tolist() == excess.tolist()  # one missing: excesses alone
    assert contrasts(np.array([0.3, 0.3]), [0.0, math.inf]).tolist() == [0.3 + math.log(SEPARATION_FLOOR), math.inf]
    tests = {t.label: t for t in _tests({"a": [(c, 1e-6, x, d) for c, (x, d) in enumerate(zip(excess, separation))]})}
    others = np.delete(excess + np.log(separation), 7)
    assert tests[7].contrast == pytest.approx(0.42 + math.log(12.0))
    assert (tests[7].location, tests[7].outlier) == pytest.approx(
        (others.mean(), (tests[7].contrast - others.mean()) / (others.std(ddof=1) * math.sqrt(1 + 1 / 7))))
    assert [c for c, t in tests.items() if t.flagged] == [7]
    unseparated = {t.label: t for t in _tests({"a": [(c, 1e-6, x, None) for c, x in enumerate(excess)]})}
    assert not any(t.flagged for t in unseparated.values())  # on its excess alone, class 7 is ordinary
    infinite = {t.label: t for t in _tests({"a": [(c, 1e-6, x, d) for c, (x, d) in
                                                  enumerate(zip(excess, [*separation[:-1], math.inf]))]})}
    assert infinite[7].outlier == math.inf and infinite[7].p_value == 1e-6  # a rest without spread along Δ
    assert infinite[0].location == pytest.approx(np.mean((excess + np.log([*separation[:-1], 1]))[1:7]))


def test_rank_text_says_what_a_flag_means():
    assert "distinct strategy" in MEANING and "expert must judge" in MEANING
    assert (EXPECTED / "plain" / "rank.txt").read_text(encoding="utf-8").rstrip().endswith(MEANING)


def test_replacing_a_class_ranks_and_flags_it_again_against_the_others_as_they_were():
    cuts = [0.0173, 0.0404, 0.0571, 0.114, 0.196, 0.213, 0.214, 0.220, 0.236, 0.336]  # the demo's, seed 0
    null_p = [1e-12, 0.01, 0.002, 0.02, 0.005, 0.001, 0.01, 0.003, 0.02, 0.004]
    excess = [2.0, 0.5, 0.4, 0.3, 0.45, 0.35, 0.5, 0.4, 0.3, 0.38]
    classes = [ClassBest(c.label, str(c.label), 100, c, None, p, x)
               for c, p, x in zip(_clusters(cuts, [50.0] * 10), null_p, excess)]
    ranking = rank_found({"spray": classes})
    assert ranking == _ranked("spray", classes) and [e.label for e in ranking.flagged] == [0]
    calmer = ClassBest(0, "0", 100, replace(classes[0].cluster, ncut=0.2), None, 0.3, 0.3)
    after = replace_class({"spray": classes}, {"spray": calmer})
    assert [e.label for e in after][:5] == [1, 2, 3, 4, 0] and after.of(0).rank == 5
    assert not after.of(0).flagged and after.of(0).ncut == 0.2 and after.of(0).null_p_value == 0.3
    # The other classes keep their null p-values; their standing is judged again with the replaced class
    assert [after.of(e.label).null_p_value for e in ranking if e.label != 0] == null_p[1:]
    assert not after.flagged
    skipped = replace_class({"spray": classes}, {"spray": ClassBest(1, "1", 100, None, "too few samples", None)})
    assert skipped[-1].label == 1 and skipped[-1].skipped == "too few samples" and len(skipped) == 10
    assert skipped.of(1).q_value is None and [e.label for e in skipped.flagged] == [0]
    with pytest.raises(ValueError, match=r"^replace_class: no analysis concept in spray$"):
        replace_class({"spray": classes}, {"concept": calmer})


def test_replacing_a_class_over_several_analyses_ranks_it_again_by_its_strongest_test():
    cuts = [0.0173, 0.0404, 0.0571, 0.114, 0.196]
    pixel = [ClassBest(c.label, str(c.label), 100, c, None, p, x) for c, p, x in
             zip(_clusters(cuts, [50.0] * 5), [0.3, 0.2, 0.4, 0.5, 0.25], [0.25, 0.2, 0.15, 0.12, 0.18])]
    concept = [ClassBest(c.label, str(c.label), 100, c, None, p, x) for c, p, x in
               zip(_clusters(cuts[::-1], [50.0] * 5), [1e-9, 0.3, 0.2, 0.4, 0.5], [3.0, 0.2, 0.1, 0.15, 0.12])]
    found = {"spray": pixel, "concept": concept}
    before = rank_found(found)
    assert before == _combined(found) and before.of(0).flagged and before.of(0).analysis == "concept"
    # the concept analysis's group of class 0 gone after a correction: the class falls back to its pixel entry
    calm = ClassBest(0, "0", 100, replace(concept[0].cluster, ncut=0.3), None, 0.9, 0.0)
    after = replace_class(found, {"concept": calm})
    assert not after.of(0).flagged and after.of(0).analysis == "spray" and after.of(0).cluster is pixel[0].cluster
    assert after == _combined({"spray": pixel, "concept": [*concept[1:], calm]})


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


def test_classes_of_equal_q_are_ordered_by_their_flag_p_before_cuts_of_different_analyses():
    # BH of (0.01, 0.02) is (0.02, 0.02): a tie; class 1's cut (analysis b) is lower, class 0's p is smaller.
    a, b = _clusters([0.3], [5.0]), _clusters([0.9, 0.05], [5.0, 5.0])
    ranking = _combined({"a": [ClassBest(0, "0", 10, a[0], None, 0.01)],
                         "b": [ClassBest(1, "1", 10, b[1], None, 0.02)]})
    assert [e.q_value for e in ranking] == pytest.approx([0.02, 0.02])
    assert [(e.label, e.analysis) for e in ranking] == [(0, "a"), (1, "b")]
