"""ViRelAy export: the file layout of docs/report.md ("The ViRelAy export"), checked directly and through ViRelAy's own loader."""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest

import spray._blocks
from spray.errors import BadInputError
from spray.export import export_virelay
from spray.export import virelay as virelay_export
from spray.results import read_class
from spray.pipeline import analyze, pipeline_from_text
from spray.store import AuditStore
from spray.testing import make_heatmaps, pipeline_text, write_store

yaml = pytest.importorskip("yaml")

ANALYSED = ["class0000", "class0001", "class0002"]  # class 3 has 5 images: skipped by the analysis


def test_export_writes_the_project_label_map_three_hdf5_files_and_the_output_marker(virelay_project):
    out = virelay_project.parent
    assert sorted(p.name for p in out.iterdir()) == [
        ".spray-output", "analysis.h5", "attribution.h5", "dataset.h5", "label-map.json", "project.yaml"]
    project = yaml.safe_load(virelay_project.read_text(encoding="utf-8"))["project"]
    assert project == {
        "name": "synthetic <skin> lesions: spray",
        "model": "demo:make_model",
        "label_map": "label-map.json",
        "dataset": {"name": "synthetic <skin> lesions", "type": "hdf5", "path": "dataset.h5"},
        "attributions": {"attribution_method": "epsilon_plus_flat", "attribution_strategy": "true_label",
                         "sources": ["attribution.h5"]},
        "analyses": [{"analysis_method": "spray", "sources": ["analysis.h5"]}],
    }
    labels = json.loads((out / "label-map.json").read_text(encoding="utf-8"))
    assert labels[1] == {"index": 1, "word_net_id": "class0001", "name": "<script>alert(1)</script>"}
    assert [entry["index"] for entry in labels] == [0, 1, 2, 3]


def test_samples_and_attributions_match_the_store_with_three_channels(audit_store, virelay_project):
    out = virelay_project.parent
    with AuditStore(audit_store) as store:
        thumbs = store.read("samples/thumbnail")
        relevance = store.read("attributions/lrp/relevance")
        logits = store.read("attributions/lrp/logits")
        labels = store.read("samples/label")
    n = labels.size
    with h5py.File(out / "dataset.h5") as f:
        assert f["data"].shape == (n, 3, 16, 16) and f["data"].dtype == np.uint8
        np.testing.assert_array_equal(f["data"][()], thumbs)  # same size: copied as is
        np.testing.assert_array_equal(f["label"][()], labels)
    with h5py.File(out / "attribution.h5") as f:
        assert f["attribution"].shape == (n, 3, 16, 16) and f["attribution"].dtype == np.float32
        for c in range(3):  # one relevance channel, replicated
            np.testing.assert_array_equal(f["attribution"][:, c], relevance[:, 0])
        np.testing.assert_array_equal(f["prediction"][()], logits)
        assert f["prediction"].dtype == np.float32
        np.testing.assert_array_equal(f["label"][()], labels)
        assert f["index"].dtype == np.uint32
        np.testing.assert_array_equal(f["index"][()], np.arange(n))


def test_analysis_has_one_group_per_analysed_class_with_matching_lengths(audit_store, virelay_project):
    with AuditStore(audit_store) as store:
        classes = {f"class{c:04d}": read_class(store, "spray", c) for c in range(3)}
    with h5py.File(virelay_project.parent / "analysis.h5") as f:
        assert sorted(f) == ANALYSED
        for name, group in f.items():
            cls = classes[name]
            n = group["index"].shape[0]
            assert group["index"].dtype == np.uint32
            np.testing.assert_array_equal(group["index"][()], cls.positions)
            assert sorted(group["embedding"]) == ["spectral", "tsne"]
            spectral = group["embedding/spectral"]
            assert spectral.dtype == np.float32 and spectral.shape == cls.embedding.shape
            np.testing.assert_allclose(spectral.attrs["eigenvalue"], cls.eigenvalues, rtol=1e-6)
            assert group["embedding/tsne"].shape == (n, 2)
            assert sorted(group["cluster"]) == sorted(cls.clusterings)
            assert {"hdbscan", "kmeans_2", "kmeans_3", "kmeans_4"} <= set(group["cluster"])
            for key, labels in group["cluster"].items():
                assert labels.shape == (n,)
                np.testing.assert_array_equal(labels[()], cls.clusterings[key])
            for key, emb in group["embedding"].items():
                assert emb.shape[0] == n and np.isfinite(emb[()]).all()


def test_virelay_project_loader_reads_every_category_embedding_clustering_sample_and_attribution(
    audit_store, virelay_project
):
    model = pytest.importorskip("virelay.model", reason="virelay (test extra) is not installed")
    with AuditStore(audit_store) as store:
        names = store.attrs()["label_names"]
        labels = store.read("samples/label")
    project = model.Project(str(virelay_project))
    try:
        assert project.name == "synthetic <skin> lesions: spray"
        assert project.attribution_strategy == "true_label"
        assert project.get_analysis_methods() == ["spray"]
        categories = project.get_analysis_categories("spray")
        assert [c.name for c in categories] == ANALYSED
        assert [c.human_readable_name for c in categories] == names[:3]
        clusterings = project.get_analysis_clustering_names("spray")
        embeddings = project.get_analysis_embedding_names("spray")
        assert "hdbscan" in clusterings and sorted(embeddings) == ["spectral", "tsne"]
        seen = set()
        for category in categories:
            for clustering in clusterings:
                for embedding in embeddings:
                    analysis = project.get_analysis("spray", category.name, clustering, embedding)
                    n = len(analysis.attribution_indices)
                    assert analysis.clustering.shape == (n,) and analysis.embedding.shape[0] == n
                    assert (analysis.eigenvalues is not None) == (embedding == "spectral")
                    seen.update(int(i) for i in analysis.attribution_indices)
        assert seen == set(range(150))  # every analysed sample, class 3's five are not analysed
        for index in sorted(seen):
            sample = project.get_sample(index)
            attribution = project.get_attribution(index)
            assert sample.data.shape == (16, 16, 3) and sample.data.dtype == np.uint8
            assert attribution.data.shape == (16, 16, 3)
            assert sample.labels[0].name == names[labels[index]] == attribution.labels[0].name
            assert attribution.prediction.shape == (4,)
        heatmap = project.get_attribution(60).render_heatmap("blue-white-red", project.get_sample(60).data)
        assert heatmap.shape[:2] == (16, 16)
    finally:
        project.close()


def test_virelay_server_serves_the_export(virelay_project):
    server = pytest.importorskip("virelay.server", reason="virelay (test extra) is not installed")
    model = pytest.importorskip("virelay.model")
    workspace = model.Workspace()
    workspace.add_project(str(virelay_project))
    try:
        client = server.Server(workspace, is_in_debug_mode=True).app.test_client()
        project = client.get("/api/projects/0").get_json()
        method = project["analysisMethods"][0]
        assert method["name"] == "spray" and [c["name"] for c in method["categories"]] == ANALYSED
        reply = client.get("/api/projects/0/analyses/spray",
                           query_string={"category": "class0001", "clustering": "hdbscan", "embedding": "spectral"})
        assert reply.status_code == 200
        analysis = reply.get_json()
        assert len(analysis["embedding"]) == 50 and len(analysis["eigenvalues"]) == 8
        index = analysis["embedding"][0]["attributionIndex"]
        assert client.get(f"/api/projects/0/dataset/{index}/image").status_code == 200
        heatmap = client.get(f"/api/projects/0/attributions/{index}/heatmap", query_string={"colorMap": "gray-red"})
        assert heatmap.status_code == 200 and heatmap.mimetype.startswith("image/")
    finally:
        workspace.close()


def test_export_is_streamed_block_by_block_with_identical_files(audit_store, virelay_project, tmp_path, monkeypatch):
    reads = []
    original = AuditStore.read

    def spy(self, path, rows=None):
        if path.endswith("/relevance"):
            reads.append(rows)
        return original(self, path, rows)

    monkeypatch.setattr(AuditStore, "read", spy)
    monkeypatch.setattr(spray._blocks, "BLOCK_BYTES", 40 * 16 * 16 * 4)  # 40 heatmaps per block
    export_virelay(audit_store, tmp_path)
    assert [(r.start, r.stop) for r in reads] == [(0, 40), (40, 80), (80, 120), (120, 155)]
    for name in ("dataset.h5", "attribution.h5"):
        with h5py.File(tmp_path / name) as small, h5py.File(virelay_project.parent / name) as big:
            for key in small:
                np.testing.assert_array_equal(small[key][()], big[key][()])


def test_a_store_without_thumbnails_needs_the_dataset_whose_images_are_scaled_to_uint8(tmp_path):
    heatmaps = make_heatmaps(n_per_class=30, n_classes=2, seed=1)
    path = write_store(tmp_path / "plain.h5", heatmaps)
    analyze(str(path), pipeline_from_text(pipeline_text("tiny")), progress=False)
    with pytest.raises(BadInputError, match="holds no thumbnails: pass the attributed dataset"):
        export_virelay(path, tmp_path / "out")
    assert not (tmp_path / "out" / "project.yaml").exists()
    inputs = [(x * 4.0 - 1.0, int(y)) for x, y in zip(heatmaps.relevance, heatmaps.labels, strict=True)]
    project = export_virelay(path, tmp_path / "out", inputs=inputs)
    with h5py.File(project.parent / "dataset.h5") as f:
        data = f["data"][()]
    assert data.shape == (60, 3, 16, 16)
    assert data.reshape(60, -1).min(axis=1).tolist() == [0] * 60
    assert data.reshape(60, -1).max(axis=1).tolist() == [255] * 60
    with h5py.File(project.parent / "analysis.h5") as f:
        assert sorted(f) == ["class0000", "class0001"]
        assert sorted(f["class0000/embedding"]) == ["spectral"]  # no map in this pipeline


def test_thumbnails_are_resized_to_the_attribution_size(audit_store, tmp_path):
    """Thumbnails are at most 64 px; ViRelAy overlays heatmaps on images of the same size."""
    thumbs = np.zeros((2, 1, 4, 4), np.uint8)
    thumbs[:, :, :2] = 200
    resized = virelay_export._resize(virelay_export._to_three(thumbs, "mean"), 8, 8)
    assert resized.shape == (2, 3, 8, 8) and resized[:, :, 0].min() == 200 and resized[:, :, -1].max() == 0


def test_project_yaml_strings_survive_quotes_backslashes_and_unicode():
    for text in ['a "quoted" name', "back\\slash", "Ödem – naevus ✓", "emoji 🩺", "colon: hash # x", "tab\there"]:
        assert yaml.safe_load(f"key: {virelay_export._yaml_string(text)}") == {"key": text}


def test_missing_analysis_is_a_bad_input_error(audit_store, tmp_path):
    copy = tmp_path / "copy.h5"
    shutil.copy(audit_store, copy)
    with pytest.raises(BadInputError, match="no analysis 'nope'"):
        export_virelay(copy, tmp_path / "out", analysis="nope")
