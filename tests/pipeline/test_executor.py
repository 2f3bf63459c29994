"""The processing graph over a store: memoisation, recovery of planted clusters, skipped classes."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest

from spray.analysis import candidate_cuts, separation
from spray.results import read_class
from spray.pipeline import analyze, pipeline_from_text
from spray.pipeline.nodes import NODES
from spray.ranking import rank_classes
from spray.store import AuditStore
from spray.testing import make_heatmaps, pipeline_text, write_store


@pytest.fixture()
def store(tmp_path):
    heatmaps = make_heatmaps(n_per_class=50, n_classes=3, poisoned=1, seed=3)
    return write_store(tmp_path / "audit.h5", heatmaps), heatmaps


def _run(path, text=pipeline_text(), **kwargs):
    runs: list[tuple[int, str]] = []
    result = analyze(str(path), pipeline_from_text(text), progress=False,
                     on_node=lambda c, n: runs.append((c, n)), **kwargs)
    return result, runs


def _nodes(path, label, *names):
    """(arrays, attrs) of the named nodes of class ``label`` of analysis spray."""
    with AuditStore(path) as audit:
        return [audit.read_node(f"analyses/spray/{label}/{name}") for name in names]


def test_first_run_computes_every_node_of_every_class_and_second_run_nothing(store):
    path, _ = store
    result, runs = _run(path)
    assert result.preprocessed
    assert sorted(set(c for c, _ in runs)) == [0, 1, 2]
    assert [n for c, n in runs if c == 0] == ["knn", "spectral", "kmeans", "hdbscan", "fda", "null"]
    again, runs = _run(path)
    assert runs == [] and not again.preprocessed


def test_changing_a_parameter_recomputes_that_node_and_its_dependents_only(store):
    path, _ = store
    _run(path)
    _, runs = _run(path, pipeline_text(fda={"n_permutations": 40}))
    # The selection null reads fda's parameters (max_fraction, min_size), so it follows fda.
    assert sorted(set(n for _, n in runs)) == ["fda", "null"] and len(runs) == 6
    result, runs = _run(path, pipeline_text(hdbscan={"min_cluster_size": 6}))
    assert sorted(set(n for _, n in runs)) == ["fda", "hdbscan", "null"] and not result.preprocessed
    result, runs = _run(path, pipeline_text(knn={"n_neighbors": 7}))
    assert sorted(set(n for _, n in runs)) == ["fda", "hdbscan", "kmeans", "knn", "null", "spectral"]
    assert not result.preprocessed
    result, runs = _run(path, pipeline_text(preprocess={"grid": 4}))
    assert result.preprocessed and len(runs) == 18


def test_parameters_that_only_change_speed_recompute_nothing(store):
    path, _ = store
    _run(path)
    _, runs = _run(path, pipeline_text(kmeans={"n_jobs": 2}))
    assert runs == []


def test_a_node_whose_version_is_raised_is_recomputed_with_its_dependents_only(store, monkeypatch):
    path, _ = store
    _run(path)
    monkeypatch.setitem(NODES, "kmeans", dataclasses.replace(NODES["kmeans"], version=NODES["kmeans"].version + 1))
    _, runs = _run(path)
    assert sorted(set(n for _, n in runs)) == ["fda", "kmeans", "null"] and len(runs) == 9


def test_planted_clever_hans_class_ranks_first_and_its_cluster_is_recovered(store):
    path, heatmaps = store
    _run(path)
    with AuditStore(path) as audit:
        ranking = rank_classes(audit)
    assert [e.rank for e in ranking] == [1, 2, 3]
    top = ranking[0]
    assert top.label == 1 and top.name == "class 1"
    planted, found = set(heatmaps.planted.tolist()), set(top.cluster.members)
    f1 = 2 * len(planted & found) / (len(planted) + len(found))
    print(f"planted {len(planted)}, flagged {len(found)}, F1 {f1:.3f}, z {top.z_score:.1f}")
    assert f1 >= 0.9
    assert top.z_score > ranking[1].z_score


def test_fda_keeps_one_row_per_cluster_in_arrays_and_the_summary_in_a_small_info(store):
    path, _ = store
    _run(path)
    with AuditStore(path) as audit:
        arrays, attrs = audit.read_node("analyses/spray/1/fda")
        kmeans, _ = audit.read_node("analyses/spray/1/kmeans")
        hdbscan, _ = audit.read_node("analyses/spray/1/hdbscan")
        analysis = read_class(audit, "spray", 1)
        features = audit.read_node("analyses/spray/preprocess")[0]["features"][analysis.positions]
    labels = {**kmeans, **hdbscan}
    expected = sorted((name, int(c)) for name, lab in labels.items() for c in np.unique(lab[lab >= 0]))
    assert sorted(zip(arrays["cluster_clustering"].tolist(), arrays["cluster_id"].tolist())) == expected
    for name, cid, size in zip(arrays["cluster_clustering"], arrays["cluster_id"], arrays["cluster_size"]):
        assert size == np.sum(labels[name] == cid)
    info = attrs["info"]
    assert set(info["clusterings"]) == set(labels) and "clusters" not in info["clusterings"]["kmeans_2"]
    best = info["best"]
    row = analysis.fda["clusterings"][best["clustering"]]["clusters"][best["cluster"]]
    assert row == {k: best[k] for k in ("size", "tau", "z_score", "p_value", "ncut")}
    assert best["separation"] == separation(features, labels[best["clustering"]] == best["cluster"]) > 0
    with AuditStore(path, mode="r") as audit:
        assert rank_classes(audit).of(1).separation == best["separation"]


def test_small_neighbors_cuts_the_small_clusters_in_the_smaller_graph_and_reruns_fda_and_the_null(store):
    path, _ = store
    _run(path)
    _, runs = _run(path, pipeline_text(fda={"small_neighbors": 4}))
    assert sorted(set(n for _, n in runs)) == ["fda", "null"] and len(runs) == 6
    knn, fda, kmeans, hdbscan = (arrays for arrays, _ in _nodes(path, 1, "knn", "fda", "kmeans", "hdbscan"))
    labels = {**kmeans, **hdbscan}
    cuts = candidate_cuts(knn["indices"], knn["distances"], labels, small_neighbors=4)
    stored = dict(zip(zip(fda["cluster_clustering"].tolist(), fda["cluster_id"].tolist()), fda["cluster_ncut"]))
    assert stored == {(name, c): pytest.approx(v, nan_ok=True) for name, by_id in cuts.items() for c, v in by_id.items()}
    small = [(name, c) for name, c, size in zip(fda["cluster_clustering"], fda["cluster_id"], fda["cluster_size"])
             if size <= knn["indices"].shape[1]]
    assert small and any(cuts[name][c] != candidate_cuts(knn["indices"], knn["distances"], labels)[name][c]
                         for name, c in small)


def test_library_warnings_in_class_threads_are_silenced(store, monkeypatch):
    # Classes run at once in threads, where the processors' own catch_warnings blocks would race (filters are
    # process-wide); analyze holds one block for all of them. A node warning like a library does shows it.
    path, _ = store
    kmeans = NODES["kmeans"]

    def chatty(params, inputs):
        warnings.warn("Number of distinct clusters (7) found smaller than n_clusters (9)", UserWarning)
        return kmeans.run(params, inputs)

    monkeypatch.setitem(NODES, "kmeans", dataclasses.replace(kmeans, run=chatty))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        filters = list(warnings.filters)
        _, runs = _run(path)
        assert warnings.filters == filters  # as they were: warnings after an analysis are shown again
    assert caught == [] and [c for c, n in runs if n == "kmeans"] != []


def test_class_with_fewer_samples_than_k_plus_one_is_skipped_with_the_reason(tmp_path):
    heatmaps = make_heatmaps(n_per_class=30, n_classes=2, seed=1)
    keep = np.r_[np.arange(30), np.arange(30, 36)]  # class 1 keeps only 6 samples
    small = type(heatmaps)(heatmaps.relevance[keep], heatmaps.labels[keep], heatmaps.strategy[keep],
                           np.array([], dtype=np.int64))
    path = write_store(tmp_path / "small.h5", small)
    result, runs = _run(path)
    assert result.skipped == {1: "6 samples, fewer than knn.n_neighbors + 1 = 9"}
    assert {c for c, _ in runs} == {0}
    with AuditStore(path) as audit:
        ranking = rank_classes(audit)
    assert ranking[-1].label == 1 and ranking[-1].skipped.startswith("6 samples")


def test_all_zero_heatmaps_are_left_out_and_counted(store):
    path, heatmaps = store
    with AuditStore(path, mode="a") as audit:
        relevance = heatmaps.relevance.copy()
        relevance[[0, 5]] = 0.0
        audit.write_batch("synthetic", 0, relevance=relevance, logits=np.eye(3, dtype=np.float32)[heatmaps.labels],
                          target=heatmaps.labels, labels=heatmaps.labels, index=np.arange(len(relevance)))
    result, _ = _run(path)
    assert result.zero_samples == [0, 5]


def test_overwritten_attribution_recomputes_everything(store):
    path, heatmaps = store
    _run(path)
    with AuditStore(path, mode="a") as audit:
        audit.create_attribution(
            "synthetic", input_shape=heatmaps.relevance.shape[1:], n_outputs=3,
            attrs={"method": "synthetic", "params": {}, "model_hash": "1" * 64, "model_name": "other",
                   "batch_size": len(heatmaps.labels), "target": "label"},
        )
        audit.write_batch("synthetic", 0, relevance=heatmaps.relevance[::-1].copy(),
                          logits=np.eye(3, dtype=np.float32)[heatmaps.labels], target=heatmaps.labels,
                          labels=heatmaps.labels, index=np.arange(len(heatmaps.labels)))
    result, runs = _run(path)
    assert result.preprocessed and len(runs) == 18


def test_a_class_being_reanalysed_keeps_its_old_results_until_its_new_ones_are_in(store):
    path, _ = store
    _run(path)
    rankings = []

    def rank_now(label, node):  # after each class's new nodes (and status) are stored
        with AuditStore(path) as audit:
            rankings.append(rank_classes(audit))

    analyze(str(path), pipeline_from_text(pipeline_text(kmeans={"k_max": 6})), progress=False, on_node=rank_now)
    assert rankings and all(e.skipped is None and e.cluster.members for r in rankings for e in r), (
        "no class is ever reported unfinished: a reader sees its old results or its new ones"
    )


def test_the_selection_null_reduces_k_means_but_never_below_the_pipelines_range():
    from spray.pipeline.nodes import _reduced

    assert _reduced("kmeans", {"k_min": 2, "k_max": 31, "n_init": 3}) == {"k_min": 2, "k_max": 6, "n_init": 1}
    assert _reduced("kmeans", {"k_min": 2, "k_max": 4, "n_init": 3})["k_max"] == 4
    assert _reduced("kmeans", {"k_min": 8, "k_max": 31, "n_init": 3})["k_max"] == 8
    assert _reduced("hdbscan", {"min_cluster_size": 5}) == {"min_cluster_size": 5}


def test_outlier_groups_are_fda_candidates_and_find_the_planted_group(store):
    path, heatmaps = store
    _run(path, pipeline_text(outliers={"thresholds": [1.5, 3.0]}))
    (outliers, attrs), (status, _), (fda, _) = _nodes(path, 1, "outliers", "status", "fda")
    (clean, clean_attrs), (clean_fda, _) = _nodes(path, 0, "outliers", "fda")
    assert sorted(outliers) == ["outliers_1.5", "outliers_3"]
    for labels in outliers.values():
        assert status["dataset_index"][labels == 0].tolist() == heatmaps.planted.tolist() and labels.max() == 0
    assert attrs["info"] == {"skipped": {}, "n_outliers": {"outliers_1.5": 12, "outliers_3": 12},
                             "n_groups": {"outliers_1.5": 1, "outliers_3": 1}}
    rows = np.char.startswith(fda["cluster_clustering"].astype(str), "outliers_")
    assert fda["cluster_size"][rows].tolist() == [12, 12] and fda["cluster_id"][rows].tolist() == [0, 0]
    # A clean class's scattered outliers (7 above 1.5) form no group of 3: all noise, no candidate.
    assert all(np.all(labels == -1) for labels in clean.values())
    assert clean_attrs["info"]["n_groups"] == {"outliers_1.5": 0, "outliers_3": 0}
    assert clean_attrs["info"]["n_outliers"]["outliers_1.5"] == 7
    assert not np.any(np.char.startswith(clean_fda["cluster_clustering"].astype(str), "outliers_"))


def test_agglomerative_with_several_cluster_counts_from_a_pipeline_file_stores_one_labelling_per_count(store):
    path, heatmaps = store
    _run(path, pipeline_text(agglomerative={"n_clusters": [2, 4]}))
    (labels, _), (status, _), (fda, _) = _nodes(path, 1, "agglomerative", "status", "fda")
    assert sorted(labels) == ["agglomerative_2", "agglomerative_4"]
    assert [int(lab.max()) + 1 for _, lab in sorted(labels.items())] == [2, 4]
    planted = np.isin(status["dataset_index"], heatmaps.planted)
    assert len(np.unique(labels["agglomerative_2"][planted])) == 1  # the planted group stays together at k = 2
    assert {"agglomerative_2", "agglomerative_4"} <= set(fda["cluster_clustering"].astype(str))


def test_knn_on_principal_scores_from_a_pipeline_file_records_the_dimension_and_the_features_recall(store):
    path, _ = store
    _run(path, pipeline_text(knn={"pca_components": 4}))
    (_, attrs), (status, _) = _nodes(path, 1, "knn", "status")
    info = attrs["info"]
    assert info["method"] == "exact" and info["search_dims"] == 4
    assert info["recall_queries"] == len(status["dataset_index"]) and 0 < info["recall"] < 1
    _run(path)  # the default searches every feature (the preset pools to 8 x 8): a new knn key, the exact graph
    (_, attrs), = _nodes(path, 1, "knn")
    assert attrs["info"]["search_dims"] == 8 * 8 and attrs["info"]["recall"] == 1.0
