"""Pipeline files: parsing, defaults, and errors that name the file, line, table and parameter."""

from __future__ import annotations

from pathlib import Path

import pytest

from spray.errors import PipelineError
from spray.pipeline import pipeline_from_text, read_pipeline

REPO = Path(__file__).resolve().parents[2]


def test_repository_default_pipeline_file_equals_the_built_in_default():
    written = read_pipeline(REPO / "pipelines" / "spray.toml")
    assert written.nodes == read_pipeline(None).nodes
    assert written.name == "spray"


@pytest.mark.parametrize("name", ["spray.toml", "fast.toml"])
def test_shipped_pipelines_parse(name):
    spec = read_pipeline(REPO / "pipelines" / name)
    assert {"preprocess", "knn", "spectral", "kmeans", "fda"} <= set(spec.nodes)


def test_the_concept_pipeline_reads_latent_relevance_channel_by_channel_as_the_benchmark_runs_it():
    from spray.benchmark.run import CONCEPT_PIPELINE

    spec = read_pipeline(REPO / "pipelines" / "concept.toml")
    assert (spec.name, spec.attribution) == ("concept", "latent")
    assert spec.nodes["preprocess"]["channel_reduction"] == "keep" and spec.nodes["preprocess"]["normalization"] == "l2"
    assert spec.nodes == pipeline_from_text(CONCEPT_PIPELINE).nodes


def test_the_activation_max_pipeline_is_the_concept_analysis_of_the_max_pooled_activations_as_the_benchmark_runs_it():
    from spray.benchmark.run import ACTIVATION_MAX_PIPELINE, CONCEPT_PIPELINE

    spec = read_pipeline(REPO / "pipelines" / "activation_max.toml")
    assert (spec.name, spec.attribution) == ("activation_max", "activation_max")
    assert spec.nodes == pipeline_from_text(ACTIVATION_MAX_PIPELINE).nodes
    assert spec.nodes == pipeline_from_text(CONCEPT_PIPELINE).nodes  # the same nodes on another attribution
    assert spec.nodes == read_pipeline(REPO / "pipelines" / "concept.toml").nodes


def test_optional_nodes_run_only_when_their_table_is_present():
    spec = pipeline_from_text("[umap]\nmin_dist = 0.2\n")
    assert "umap" in spec.nodes and "tsne" not in spec.nodes and "hdbscan" not in spec.nodes
    assert spec.nodes["umap"]["min_dist"] == 0.2 and spec.nodes["umap"]["n_neighbors"] == 15


def test_unknown_parameter_names_file_line_and_valid_names():
    text = "[knn]\nn_neighbors = 5\nneighbours = 3\n"
    with pytest.raises(PipelineError, match=r"p\.toml, line 3: unknown parameter 'knn\.neighbours'; valid: .*n_neighbors"):
        pipeline_from_text(text, source="p.toml")


def test_unknown_node_names_its_line_and_the_known_nodes():
    with pytest.raises(PipelineError, match=r"line 2: unknown node \[kmeanz\]; known nodes: .*kmeans"):
        pipeline_from_text("\n[kmeanz]\nk_max = 4\n", source="p.toml")


def test_wrong_type_names_the_parameter_and_expected_type():
    with pytest.raises(PipelineError, match=r"line 2: 'spectral\.n_eigenpairs' must be int, got 'many'"):
        pipeline_from_text('[spectral]\nn_eigenpairs = "many"\n', source="p.toml")


def test_a_parameter_annotated_int_or_ints_takes_one_integer_or_a_list_of_them():
    assert pipeline_from_text("[agglomerative]\nn_clusters = [2, 4, 8]\n").nodes["agglomerative"]["n_clusters"] == [2, 4, 8]
    assert pipeline_from_text("[agglomerative]\nn_clusters = 3\n").nodes["agglomerative"]["n_clusters"] == 3
    for value in ('[2, "4"]', "[]", "2.5", "[true]"):
        with pytest.raises(PipelineError, match=r"p\.toml, line 2: 'agglomerative\.n_clusters' must be int or list "
                                                r"of int, got "):
            pipeline_from_text(f"[agglomerative]\nn_clusters = {value}\n", source="p.toml")
    # Other int parameters still take one integer only.
    with pytest.raises(PipelineError, match=r"'knn\.n_neighbors' must be int, got \[5, 10\]"):
        pipeline_from_text("[knn]\nn_neighbors = [5, 10]\n")


def test_malformed_toml_is_a_pipeline_error_naming_the_file():
    with pytest.raises(PipelineError, match=r"p\.toml: malformed TOML"):
        pipeline_from_text("[knn\nn_neighbors = 3", source="p.toml")


def test_analysis_name_must_be_usable_as_group_and_virelay_name():
    with pytest.raises(PipelineError, match="analysis.name must be letters"):
        pipeline_from_text('[analysis]\nname = "my-analysis"\n')


def test_missing_pipeline_file_is_a_pipeline_error(tmp_path):
    with pytest.raises(PipelineError, match="cannot read pipeline file"):
        read_pipeline(tmp_path / "nope.toml")
