"""From an audit store to a recorded ClArC run (on the tiny audit), and every bad-input message."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from spray.clarc import (
    ClarcConfig,
    ClusterSpec,
    EvaluationData,
    Tuning,
    clarc_from_store,
    evaluate_from_store,
    isolate_artifact,
    load_corrected,
    read_cluster,
)
from spray.clarc.cav import MIN_SAMPLES
from spray.clarc.evaluate import artifact_relevance, everywhere
from spray.errors import BadInputError
from spray.store import AuditStore
from spray.training import accuracy


def a_cluster(tiny_audit, clustering="kmeans_2"):
    """A cluster of class 1 with enough samples on both sides for a CAV."""
    labels = tiny_audit.kmeans[clustering]
    sizes = {int(c): int((labels == c).sum()) for c in np.unique(labels)}
    cluster = next(c for c, n in sizes.items() if MIN_SAMPLES <= n <= len(labels) - MIN_SAMPLES)
    return f"1:{clustering}:{cluster}", sizes[cluster]


def test_read_cluster_gives_the_members_and_the_rest_of_the_class(tiny_audit):
    spec, size = a_cluster(tiny_audit)
    with AuditStore(tiny_audit.store) as store:
        members = read_cluster(store, spec)
    assert len(members.artifact) == size
    labels = tiny_audit.dataset.tensors[1]
    assert set(members.artifact) | set(members.rest) == set(torch.nonzero(labels == 1).flatten().tolist())
    assert not set(members.artifact) & set(members.rest)


@pytest.mark.parametrize("method", ["pclarc", "aclarc", "rrclarc"])
def test_run_writes_weights_and_the_result_node_of_the_contract(tiny_audit, tmp_path, method, new_model):
    spec, size = a_cluster(tiny_audit)
    store = tmp_path / "audit.h5"
    store.write_bytes(tiny_audit.store.read_bytes())
    config = ClarcConfig(method, tmp_path / "runs", cluster=spec, tuning=Tuning(epochs=1), progress=False)
    result = clarc_from_store(store, tiny_audit.model, tiny_audit.dataset, config, EvaluationData(tiny_audit.dataset))
    assert result.run == f"{method}_{spec.replace(':', '_')}"
    with AuditStore(store) as audit:
        arrays, attrs = audit.read_node(f"clarc/{result.run}/result")
    k = min(8, size)
    assert arrays["patch"].shape == (1, 8, 8) and arrays["patch"].dtype == np.float32
    assert arrays["mask"].shape == (8, 8) and arrays["mask"].dtype == np.float32
    assert 0 <= arrays["mask"].min() and arrays["mask"].max() <= 1
    assert arrays["example_inputs"].shape == (k, 1, 8, 8) and arrays["example_inputs"].dtype == np.float32
    assert arrays["example_masks"].shape == (k, 8, 8)
    with AuditStore(store) as audit:
        assert set(arrays["example_index"]) <= set(read_cluster(audit, spec).artifact)
    assert attrs["method"] == method and attrs["cluster"] == spec and attrs["layer"] == "features.3"
    assert 0 <= attrs["cav_auc"] <= 1
    assert [row["model"] for row in attrs["metrics"]] == ["original", "corrected"]
    assert all(np.isfinite(row["clean_accuracy"]) and np.isfinite(row["artifact_relevance"])
               for row in attrs["metrics"])
    assert attrs["seed"] == 0 and attrs["weights"] == str(result.weights)
    assert (attrs["epochs"] is None) == (method == "pclarc")
    assert (attrs["lambda"] is None) == (method != "rrclarc")
    json.dumps(attrs)
    state = torch.load(result.weights, weights_only=True)
    reloaded = load_corrected(new_model(seed=3), state)
    x = tiny_audit.dataset.tensors[0][:5]
    assert torch.allclose(reloaded(x), result.model(x), atol=1e-6)
    assert json.loads((result.run_dir / "result.json").read_text())["run"] == result.run


def test_evaluate_from_store_updates_the_metrics(tiny_audit, tmp_path):
    spec, _ = a_cluster(tiny_audit)
    store = tmp_path / "audit.h5"
    store.write_bytes(tiny_audit.store.read_bytes())
    config = ClarcConfig("pclarc", tmp_path / "runs", cluster=spec, progress=False)
    result = clarc_from_store(store, tiny_audit.model, tiny_audit.dataset, config)
    assert result.metrics[1]["clean_accuracy"] is None
    metrics = evaluate_from_store(store, result.run, tiny_audit.model, test=tiny_audit.dataset, progress=False)
    with AuditStore(store) as audit:
        assert audit.read_node(f"clarc/{result.run}/result")[1]["metrics"] == metrics
    assert metrics[1]["clean_accuracy"] is not None


def test_top_is_the_flagged_cluster_of_the_best_ranked_class(tiny_audit, tmp_path):
    from spray.clarc.cluster import resolve_cluster
    top = tiny_audit.ranking.top_candidate()
    with AuditStore(tiny_audit.store) as audit:
        spec, analysis = resolve_cluster(audit, "top")
        assert resolve_cluster(audit, "1:kmeans_2:0") == (ClusterSpec(1, "kmeans_2", 0), "tiny")
    assert analysis == "tiny"
    assert (spec.label, spec.clustering, spec.cluster) == (top.label, top.cluster.clustering, top.cluster.id)
    store = tmp_path / "audit.h5"
    store.write_bytes(tiny_audit.store.read_bytes())
    config = ClarcConfig("pclarc", tmp_path / "runs", cluster="top", progress=False)
    result = clarc_from_store(store, tiny_audit.model, tiny_audit.dataset, config)
    assert result.cluster == str(spec) and result.run == f"pclarc_{spec.label}_{spec.clustering}_{spec.cluster}"


def test_top_of_a_store_with_two_analyses_is_named_by_the_ranking_over_both(tiny_audit, tmp_path):
    from spray.clarc.cluster import resolve_cluster
    from spray.pipeline import analyze, pipeline_from_text
    from spray.ranking import rank_analyses
    from spray.testing import pipeline_text

    store = tmp_path / "audit.h5"
    store.write_bytes(tiny_audit.store.read_bytes())
    analyze(str(store), pipeline_from_text(pipeline_text("tiny", analysis={"name": "again"}, knn={"n_neighbors": 4})),
            progress=False)
    with AuditStore(store) as audit:
        top = rank_analyses(audit, ["again", "tiny"]).top_candidate()
        assert resolve_cluster(audit, "top") == (
            ClusterSpec(top.label, top.cluster.clustering, top.cluster.id), top.analysis)
        alone = tiny_audit.ranking.top_candidate()
        assert resolve_cluster(audit, "top", "tiny") == (
            ClusterSpec(alone.label, alone.cluster.clustering, alone.cluster.id), "tiny")


def test_a_given_everywhere_test_set_replaces_the_pasted_isolated_artifact(tiny_audit, tmp_path):
    spec, _ = a_cluster(tiny_audit)
    store = tmp_path / "audit.h5"
    store.write_bytes(tiny_audit.store.read_bytes())
    x, y = tiny_audit.dataset.tensors
    stamped = x.clone()
    stamped[:, :, :3, :3] = 1.0  # the tiny data's planted corner, in every sample
    given = TensorDataset(stamped, y)
    config = ClarcConfig("pclarc", tmp_path / "runs", cluster=spec, progress=False)
    result = clarc_from_store(store, tiny_audit.model, tiny_audit.dataset, config,
                              EvaluationData(tiny_audit.dataset, everywhere_test=given))
    original = result.metrics[0]
    assert original["everywhere_accuracy"] == pytest.approx(accuracy(tiny_audit.model, given))
    assert original["artifact_relevance"] == pytest.approx(
        artifact_relevance(tiny_audit.model, given, result.artifact.mask))
    with AuditStore(store) as audit:
        assert audit.read_node(f"clarc/{result.run}/result")[1]["everywhere"] == "given"
    rows = evaluate_from_store(store, result.run, tiny_audit.model, test=tiny_audit.dataset, progress=False)
    with AuditStore(store) as audit:
        assert audit.read_node(f"clarc/{result.run}/result")[1]["everywhere"] == "isolated"
    assert rows[0]["everywhere_accuracy"] == pytest.approx(accuracy(
        tiny_audit.model, everywhere(tiny_audit.dataset, result.artifact.patch, result.artifact.mask)))
    with pytest.raises(BadInputError, match=r"everywhere test samples have shape \(1, 4, 4\), but the artifact "
                                            r"mask is \(8, 8\)"):
        evaluate_from_store(store, result.run, tiny_audit.model, test=tiny_audit.dataset,
                            everywhere_test=TensorDataset(x[:, :, :4, :4], y), progress=False)


# ---------------------------------------------------------------------------------------------- bad input


def run(tiny_audit, tmp_path, cluster, **kwargs):
    config = ClarcConfig(kwargs.pop("method", "pclarc"), tmp_path, cluster=cluster, progress=False, **kwargs)
    return clarc_from_store(tiny_audit.store, tiny_audit.model, tiny_audit.dataset, config)


def test_unknown_cluster_id_lists_the_valid_ids(tiny_audit, tmp_path):
    with pytest.raises(BadInputError, match=r"no cluster 9; valid ids: 0, 1 "):
        run(tiny_audit, tmp_path, "1:kmeans_2:9")


def test_unknown_clustering_lists_the_valid_names(tiny_audit, tmp_path):
    with pytest.raises(BadInputError, match=r"no clustering 'kmeans_40'; valid clusterings: .*kmeans_2"):
        run(tiny_audit, tmp_path, "1:kmeans_40:0")


def test_class_not_analysed_lists_the_analysed_classes(tiny_audit, tmp_path):
    with pytest.raises(BadInputError, match=r"class 7 was not analysed .* analysed classes: 0, 1"):
        run(tiny_audit, tmp_path, "7:kmeans_2:0")


def test_top_without_a_ranked_class_asks_for_a_cluster_spec(tiny_audit, tmp_path, monkeypatch):
    import spray.clarc.cluster as cluster
    from spray.ranking import RankedClass, Ranking

    skipped = RankedClass(0, "a", 5, rank=1, cluster=None, skipped="too few samples", outlier=None, flagged=False)
    monkeypatch.setattr(cluster, "rank_analyses", lambda store, analyses: Ranking(analyses[0], (skipped,)))
    with pytest.raises(BadInputError, match=r"has no ranked class in analysis 'tiny'; name the cluster as "
                                            r"CLASS:CLUSTERING:ID"):
        run(tiny_audit, tmp_path, "top")


def test_malformed_cluster_spec_shows_the_format(tiny_audit, tmp_path):
    with pytest.raises(BadInputError, match="CLASS:CLUSTERING:ID"):
        run(tiny_audit, tmp_path, "1-kmeans_2-0")


def test_a_clarc_config_refuses_an_unknown_method_when_made_and_cannot_be_changed(tmp_path):
    with pytest.raises(BadInputError, match=r"^unknown ClArC method 'xclarc'; choose one of aclarc, pclarc, rrclarc$"):
        ClarcConfig("xclarc", tmp_path)
    config = ClarcConfig("pclarc", tmp_path)
    assert (config.cluster, config.tuning) == ("top", Tuning())
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.method = "aclarc"  # type: ignore[misc]


def test_unknown_method_lists_the_methods(tiny_audit, tmp_path):
    with pytest.raises(BadInputError, match="aclarc, pclarc, rrclarc"):
        run(tiny_audit, tmp_path, a_cluster(tiny_audit)[0], method="xclarc")


def test_unknown_layer_lists_the_module_names(tiny_audit, tmp_path):
    names = r"features.3, pool, flatten, head"
    with pytest.raises(BadInputError, match=rf"layer 'features.9' is not a module .*{names}"):
        run(tiny_audit, tmp_path, a_cluster(tiny_audit)[0], layer="features.9")


def test_cluster_too_small_for_a_cav_says_the_minimum(tiny_audit):
    with pytest.raises(BadInputError, match=f"at least {MIN_SAMPLES} in the cluster"):
        isolate_artifact(tiny_audit.model, tiny_audit.dataset, np.arange(1, 7, 2), np.arange(7, 40, 2), label=1)


class Pair(nn.Module):
    def forward(self, x):
        return x, x


class First(nn.Module):
    def forward(self, pair):
        return pair[0]


def test_layer_whose_output_is_not_a_tensor_is_bad_input():
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), Pair(), First(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(3, 2))
    dataset = TensorDataset(torch.rand(20, 1, 6, 6), torch.arange(20) % 2)
    with pytest.raises(BadInputError, match=r"layer '2' \(Pair\) returns tuple, not a tensor"):
        isolate_artifact(model, dataset, np.arange(0, 10, 2), np.arange(10, 20, 2), label=0, layer="2")


def test_store_without_analysis_says_to_run_analyze(tmp_path, tiny_audit):
    empty = tmp_path / "empty.h5"
    AuditStore(empty, "a").close()
    with pytest.raises(BadInputError, match="spray analyze"):
        clarc_from_store(empty, tiny_audit.model, tiny_audit.dataset,
                         ClarcConfig("pclarc", tmp_path, cluster="1:kmeans_2:0"))
