"""Ranking: only the class whose most separable cluster stands out from the other classes is flagged."""

from __future__ import annotations

from spray.pipeline import analyze, pipeline_from_text
from spray.ranking import rank_classes, ranking_table
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
