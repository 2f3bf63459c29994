"""Concept groups in the report: the channels that set a group apart, reference samples and conditional
heatmaps."""

from __future__ import annotations

import shutil
from html.parser import HTMLParser
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from spray.cli import main
from spray.errors import BadInputError
from spray.report import AuditedModel, render_report
from spray.pipeline import analyze, pipeline_from_text
from spray.report.concepts import (
    CHANNELS,
    ConditionalExplainer,
    channel_relevance,
    distinguishing_channels,
    reference_samples,
)
from spray.report.content import gather
from spray.report.images import data_uri, heatmap_rgb, image_rgb, reduce_heatmap
from spray.results import read_class
from spray.store import AuditStore
from spray.testing import SyntheticHeatmaps, pipeline_text, write_store
from tests.data.factories import conv_data, conv_model

L2 = {"channel_reduction": "keep", "normalization": "l2"}
NO_CHANNEL = ("no channel receives more normalised relevance in this group than in the rest of the class, so no "
              "reference samples are shown")


def _audited() -> AuditedModel:
    return AuditedModel(conv_model(), conv_data())


class _Images(HTMLParser):
    """alt text -> src of every image."""

    def __init__(self) -> None:
        super().__init__()
        self.src: dict[str, str] = {}

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.src[attrs["alt"]] = attrs["src"]


def _images(html: str) -> dict[str, str]:
    parser = _Images()
    parser.feed(html)
    return parser.src


def test_reference_samples_are_the_members_whose_channels_receive_the_most_relevance_most_first():
    totals = np.array([[1.0, 0.0, 5.0], [3.0, 3.0, -9.0], [0.5, 0.2, 0.0], [2.0, 2.5, 1.0]])
    assert reference_samples(totals, np.array([0, 1]), shown=2).tolist() == [1, 3]
    assert reference_samples(totals, np.array([2]), shown=3).tolist() == [0, 3, 2]


def test_channel_relevance_is_each_samples_relevance_per_channel_as_the_analysis_normalised_it():
    relevance = np.zeros((2, 3, 2, 2))
    relevance[0, :, 0, 0] = [3.0, 0.0, -4.0]  # one cell per channel: ‖R‖₂ = 5
    relevance[1, 0] = [[1.0, 1.0], [1.0, 1.0]]  # R_0 = 4, R_2 = -4: ‖R‖₂ = √20 over the cells,
    relevance[1, 2, 1, 1] = -4.0                 # √32 over cells pooled to one a channel (grid 1)
    np.testing.assert_allclose(channel_relevance(relevance, {"normalization": "l2"}),
                               [[0.6, 0.0, -0.8], [2 / np.sqrt(5), 0.0, -2 / np.sqrt(5)]])
    np.testing.assert_allclose(channel_relevance(relevance, {"grid": 1, "normalization": "l2"})[1],
                               [1 / np.sqrt(2), 0.0, -1 / np.sqrt(2)])
    np.testing.assert_allclose(channel_relevance(relevance, {"normalization": "max_abs", "absolute": True})[0],
                               [0.75, 0.0, 1.0])


def test_the_distinguishing_channels_are_the_largest_positive_differences_of_group_and_rest_means():
    relevance = np.array([[0.9, 0.1, 0.6, 0.0], [0.7, 0.3, 0.6, 0.2],    # the group: channel 2 raised
                          [0.9, 0.1, 0.0, 0.1], [0.9, 0.1, 0.2, 0.1]])   # the rest of the class
    inside = np.array([True, True, False, False])
    channels, differences = distinguishing_channels(relevance, inside)
    # Channel 0, the most relevant in both, is less so in the group (-0.1); channel 3 does not differ (0).
    assert channels.tolist() == [2, 1]
    np.testing.assert_allclose(differences, [0.5, 0.1])
    assert distinguishing_channels(relevance, inside, k=1)[0].tolist() == [2]
    assert distinguishing_channels(relevance, np.ones(4, bool))[0].tolist() == []


def test_the_group_whose_one_channel_is_raised_is_set_apart_by_that_channel_not_by_the_most_relevant(tmp_path):
    # Latent relevance (60 samples, 6 channels, 2 × 2 cells): channel 0 carries most relevance in every sample;
    # in the first 10 samples of class 1, and only there, channel 3 is raised.
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 30)
    per_channel = rng.uniform(0.5, 1.5, (60, 6))
    per_channel[:, 0] += 3.5
    per_channel[:, 3] = rng.uniform(0.0, 0.3, 60)
    per_channel[30:40, 3] = rng.uniform(2.0, 2.5, 10)
    latent = np.repeat(per_channel[:, :, None, None] / 4, 2, axis=2).repeat(2, axis=3).astype(np.float32)
    path = write_store(tmp_path / "latent.h5", SyntheticHeatmaps(latent, labels, labels, np.arange(30, 40)),
                       name="latent")
    analyze(str(path), pipeline_from_text(pipeline_text("tiny", analysis={"name": "concept", "attribution":
                                                                          "latent"}, preprocess=L2)),
            progress=False)
    view = next(v for v in gather(path, "concept", None)["classes"] if v.label == 1)
    with AuditStore(path) as store:
        cls = read_class(store, "concept", 1)
    raised = next(c for c in view.clusters if 30 in cls.dataset_index[cls.clusterings[view.clustering] == c.cluster])
    inside = cls.clusterings[view.clustering] == raised.cluster
    assert set(cls.dataset_index[inside].tolist()) == set(range(30, 40))
    features = latent[cls.positions].reshape(30, -1).astype(np.float64)
    normalised = (features / np.linalg.norm(features, axis=1, keepdims=True)).reshape(30, 6, 4).sum(axis=2)
    difference = normalised[inside].mean(axis=0) - normalised[~inside].mean(axis=0)
    assert raised.distinguishing[0] == f"channel 3: {difference[3]:+.3f}" and difference[3] > 0.3
    assert [c.split(":")[0] for c in raised.distinguishing] == [
        f"channel {c}" for c in np.argsort(-difference)[:CHANNELS] if difference[c] > 0]
    assert raised.channels[0].startswith("channel 0: ")  # the most relevant channel is everyone's
    assert sorted(ref.dataset_index for ref in raised.references) == sorted(
        cls.dataset_index[inside][np.argsort(-latent[cls.positions][inside][:, 3].sum(axis=(1, 2)))[:4]].tolist())
    assert ("channels that set the group apart (mean normalised relevance, group minus rest of the class): "
            f"{', '.join(raised.distinguishing)}") in render_report(path, "concept")


def test_conditional_heatmaps_of_a_partition_of_the_channels_sum_to_the_full_heatmap(concept_store):
    indices = np.array([23, 31, 4])
    with AuditStore(concept_store) as store:
        explainer = ConditionalExplainer(_audited(), store, "latent")
        targets = store.read("attributions/latent/target", indices)
        stored = store.read("attributions/epsilon_plus_flat/relevance", indices)
    assert explainer.layer == "features.3" and explainer.n_channels == 6
    x, full, top = explainer.explain(indices, targets, np.array([5, 1]))
    _, again, rest = explainer.explain(indices, targets, np.array([0, 2, 3, 4]))
    every = explainer.explain(indices, targets, np.arange(6)).conditional
    assert full.shape == (3, 1, 8, 8) and np.array_equal(full, again)
    np.testing.assert_array_equal(x, conv_data().tensors[0][indices].double().numpy())
    np.testing.assert_allclose(top + rest, full, rtol=1e-5, atol=1e-6 * np.abs(full).max())
    np.testing.assert_allclose(every, full, rtol=1e-5, atol=1e-6 * np.abs(full).max())
    # The explanation is the one `spray attribute` stored for these samples (same model, composite, targets).
    np.testing.assert_allclose(full, stored, rtol=1e-4, atol=1e-5 * np.abs(full).max())
    assert not np.allclose(top, full)


def test_the_report_shows_each_concept_groups_reference_samples_with_their_conditional_heatmaps(concept_store):
    context = gather(concept_store, ["spray", "concept"], None, _audited())
    html = render_report(concept_store, ["spray", "concept"], None, _audited())
    shown = _images(html)
    concept = [view for view in context["classes"] if view.analysis == "concept"]
    assert concept, "the combined ranking shows a concept-level class"
    with AuditStore(concept_store) as store:
        explainer = ConditionalExplainer(_audited(), store, "latent")
        drawn = 0
        for view in concept:
            cls = read_class(store, "concept", view.label)
            relevance = store.read("attributions/latent/relevance", cls.positions)
            for cluster in view.clusters:
                inside = cls.clusterings[view.clustering] == cluster.cluster
                members = np.flatnonzero(inside)
                latent = relevance[members].sum(axis=(2, 3))
                top = np.argsort(-latent.sum(axis=0), kind="stable")[:CHANNELS]
                assert [c.split(":")[0] for c in cluster.channels] == [f"channel {c}" for c in top]
                apart, differences = distinguishing_channels(channel_relevance(relevance, L2), inside)
                assert cluster.distinguishing == [
                    f"channel {c}: {d:+.3f}" for c, d in zip(apart.tolist(), differences.tolist())]
                # The references are the members whose distinguishing channels receive the most relevance.
                by_index = dict(zip(cls.dataset_index[members].tolist(), latent[:, apart].sum(axis=1).tolist()))
                chosen = [ref.dataset_index for ref in cluster.references]
                assert len(chosen) == (min(4, members.size) if apart.size else 0)
                if not apart.size:  # every channel receives less normalised relevance in the group than elsewhere
                    rest = channel_relevance(relevance, L2)[~inside].mean(axis=0)
                    assert (channel_relevance(relevance, L2)[inside].mean(axis=0) <= rest).all()
                    assert f"{NO_CHANNEL}" in html
                    continue
                drawn += 1
                scores = [by_index[i] for i in chosen]
                assert scores == sorted(scores, reverse=True)
                assert min(scores) >= max([s for i, s in by_index.items() if i not in chosen], default=-np.inf)
                targets = store.read("attributions/latent/target", np.array(chosen))
                _, full, part = explainer.explain(np.array(chosen), targets, apart)
                for k, ref in enumerate(cluster.references):
                    assert ref.heatmap == data_uri(heatmap_rgb(reduce_heatmap(full[k])))
                    assert ref.conditional == data_uri(heatmap_rgb(reduce_heatmap(part[k])))
                    assert ref.share == f"{100 * part[k].sum() / full[k].sum():.1f} %"
                    assert shown[f"conditional heatmap of reference image {ref.dataset_index}"] == ref.conditional
                    assert shown[f"heatmap of reference image {ref.dataset_index}"] == ref.heatmap
    assert drawn and context["conditional_hint"] is None and "need the audited model" not in html


def test_without_the_model_the_report_shows_reference_images_and_says_how_to_get_conditional_heatmaps(
        concept_store):
    context = gather(concept_store, ["spray", "concept"], None)
    references = [ref for view in context["classes"] if view.analysis == "concept"
                  for cluster in view.clusters for ref in cluster.references]
    assert references and all(ref.heatmap is None and ref.conditional is None for ref in references)
    with AuditStore(concept_store) as store:
        has_thumbnails = store.has_thumbnails
    assert all((ref.image is not None) == has_thumbnails for ref in references)
    command = "spray report audit.h5 --analysis spray,concept --model MOD:FACTORY --weights FILE --data SPEC"
    assert context["conditional_hint"] == command
    html = render_report(concept_store, ["spray", "concept"])
    assert (f"need the audited model and data: <code>{command}</code>, with the model, weights and data the "
            "store was attributed from.") in html
    assert "conditional heatmap of reference image" not in html


def test_a_pixel_level_report_has_no_references_and_no_hint(concept_store):
    context = gather(concept_store, "spray", None)
    assert context["conditional_hint"] is None
    assert all(not cluster.references and not cluster.channels for view in context["classes"]
               for cluster in view.clusters)


def test_another_model_or_dataset_is_refused_before_anything_is_explained(concept_store):
    other = conv_model()
    with torch.no_grad():
        other.head.bias += 1.0
    flipped = [(x, 1 - y) for x, y in conv_data()]
    with AuditStore(concept_store) as store:
        with pytest.raises(BadInputError, match=r"^the model given \(--model, --weights\) has weights sha256 "):
            ConditionalExplainer(AuditedModel(other, conv_data()), store, "latent")
        explainer = ConditionalExplainer(AuditedModel(conv_model(), flipped), store, "latent")
        with pytest.raises(BadInputError) as labels:
            explainer.explain(np.array([3]), np.array([1]), np.array([0]))
    with pytest.raises(BadInputError) as short:  # the report checks the data first (spray.data.images.check_audited)
        render_report(concept_store, ["spray", "concept"], None, AuditedModel(conv_model(), flipped[:39]))
    assert str(short.value) == (f"the dataset given (--data) has 39 samples, but audit store {concept_store} holds "
                                "40: pass the dataset the store was attributed from")
    assert str(labels.value) == (f"dataset sample 3 has label 0 in the dataset given (--data) but 1 in audit store "
                                 f"{concept_store}: pass the dataset the store was attributed from")


def test_spray_report_with_the_model_writes_the_conditional_heatmaps_of_the_shown_concept_groups(
        concept_store, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parents[2])  # MOD:FACTORY specs name tests.data.factories
    out = tmp_path / "report.html"
    argv = ["report", str(concept_store), "-o", str(out), "--analysis", "spray,concept",
            "--model", "tests.data.factories:conv_model", "--data", "tests.data.factories:conv_data"]
    assert main(argv) == 0
    assert capsys.readouterr().out == f"{out}\n"
    html = out.read_text(encoding="utf-8")
    expected = gather(concept_store, ["spray", "concept"], None, _audited())
    shown = _images(html)
    references = [ref for view in expected["classes"] for cluster in view.clusters for ref in cluster.references]
    assert references
    assert all(shown[f"conditional heatmap of reference image {r.dataset_index}"] == r.conditional for r in references)


def test_without_thumbnails_the_reference_images_are_the_inputs_the_model_explained(concept_store, tmp_path):
    copy = Path(shutil.copy(concept_store, tmp_path / "nothumbs.h5"))
    with h5py.File(copy, "r+") as f:
        del f["samples/thumbnail"]
    inputs = conv_data().tensors[0].double().numpy()
    references = [ref for view in gather(copy, "concept", None, _audited())["classes"]
                  for cluster in view.clusters for ref in cluster.references]
    assert references
    assert all(ref.image == data_uri(image_rgb(inputs[ref.dataset_index])) for ref in references)
    assert all(ref.image is None for view in gather(copy, "concept", None)["classes"]
               for cluster in view.clusters for ref in cluster.references)
