"""One tiny case through the whole chain on scikit-learn's digits: interrupted and resumed without training
again, scored against its ground truth, then read from its cache."""

from __future__ import annotations

import json

import pytest

import spray.benchmark.run as run_module
import spray.workflow
from spray.benchmark import Case, Scorecard, Size, run_case
from spray.benchmark.run import CaseResult, case_directory, result_file

TINY = Size(train_per_class=40, test_per_class=10, epochs=2, batch_size=32)
CASE = Case("patch_fixed", 0.3, "cnn", 0, "dev")


def _interrupt(*args: object, **kwargs: object) -> None:
    raise KeyboardInterrupt


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """The case interrupted (Ctrl-C) after training and attribution, then started again: it must finish from the
    cached weights (training again fails the fixture) and the store."""
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(run_module, "analyze", _interrupt)
        with pytest.raises(KeyboardInterrupt):
            run_case(CASE, cache, TINY, source="digits")
    assert not result_file(case_directory(cache, CASE, TINY, "digits")).exists()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(spray.workflow, "train_model", lambda *a, **k: pytest.fail("the model was trained again"))
        return cache, run_case(CASE, cache, TINY, source="digits")


def test_a_case_is_scored_against_its_ground_truth(finished):
    _, result = finished
    assert result.case == CASE and result.n_planted == 12
    assert 0.1 < result.clean_accuracy <= 1.0 and result.everywhere_accuracy is not None
    assert result.uses_artifact == (result.clean_accuracy - result.everywhere_accuracy >= 0.05)
    assert 1 <= result.rank <= 10 and result.clean_classes == 9 and 0 <= result.clean_flags <= 9
    assert result.cluster.startswith("8:") and result.cluster_size > 0
    assert 0 <= result.f1 <= 1 and result.relevance_density > 0
    (pclarc,) = result.corrections.values()
    assert list(result.corrections) == ["pclarc"] and (pclarc["error"] is not None or len(pclarc["everywhere"]) == 2)
    # Corrected as `spray clarc --cluster top` would: a flagged class whenever the ranking over the analyses (ordered
    # by q) flags one, and the result says whether it did.
    assert pclarc["error"] is not None or pclarc["flagged"] == (result.flagged or result.clean_flags > 0)
    assert list(result.baselines) == ["activation", "knn_outlier", "error_slice"]
    assert all(b["rank"] is None or 1 <= b["rank"] <= 10 and 0 <= b["f1"] <= 1 for b in result.baselines.values())
    assert result.group_accuracy is None and result.worst_group_accuracy is None
    assert result.iou is None or 0 <= result.iou <= 1  # None only where ClArC refuses the named cluster
    assert result.iou is not None or result.cluster_size < 4
    assert list(result.aopc) == ["lrp", "gradient", "random"]
    assert all(-1 < v < 50 for v in result.aopc.values())  # logit drops of a digits model
    assert set(result.seconds) == set(result.cpu_seconds) == set(result.peak_rss_mib) == {
        "train", "attribute", "analyze", "rank", "clarc", "score", "baseline", "faithfulness"}
    # The main fields come from the ranking over the pixel-level and the concept-level analysis and the first
    # feature map's max-pooled activations together; each alone is scored as `pixel`, `concept` and
    # `activation_max`, and the combined one names the poisoned class by the strongest.
    assert set(result.pixel) == set(result.concept) == set(result.activation_max) == {
        "rank", "flagged", "analysis", "cluster", "cluster_size", "precision", "recall", "f1", "cav_auroc",
        "clean_flags", "clean_classes"}
    assert (result.pixel["analysis"], result.concept["analysis"], result.activation_max["analysis"]) == (
        "spray", "concept", "activation_max")
    alone = {"spray": result.pixel, "concept": result.concept, "activation_max": result.activation_max}.get(
        result.analysis)
    assert alone is not None and (result.cluster, result.f1, result.cav_auroc) == (
        alone["cluster"], alone["f1"], alone["cav_auroc"])
    for scores in (result.pixel, result.concept, result.activation_max):
        assert 1 <= scores["rank"] <= 10 and scores["clean_classes"] == 9 and scores["cluster"].startswith("8:")
        assert 0 <= scores["f1"] <= 1 and 0 <= scores["cav_auroc"] <= 1 and scores["cluster_size"] > 0


def test_a_finished_case_is_read_from_its_cache(finished, monkeypatch):
    cache, result = finished
    monkeypatch.setattr(run_module, "make_case", lambda *a: pytest.fail("a cached case was computed again"))
    assert run_case(CASE, cache, TINY, source="digits") == result
    stored = json.loads(result_file(case_directory(cache, CASE, TINY, "digits")).read_text())
    assert CaseResult.from_dict(stored) == result


def test_the_scorecard_of_a_run_case_renders_as_table_json_and_page(finished, tmp_path):
    _, result = finished
    card = Scorecard.made([result], command="test")
    assert [(r.split, r.artifact, r.seeds) for r in card.rows] == [("dev", "patch_fixed", 1)]
    assert card.table().splitlines()[1].startswith("dev    patch_fixed  30%   cnn   1 ")
    assert json.loads(json.dumps(card.to_dict()))["cases"][0]["case"]["artifact"] == "patch_fixed"
    page = card.write_html(tmp_path / "scorecard.html").read_text()
    assert '<meta name="generator" content="spray' in page and "patch_fixed" in page
    assert "<th>artifact mask IoU</th>" in page and "<th>AOPC random</th>" in page
    row = json.loads(json.dumps(card.to_dict()))["rows"][0]
    assert row["iou"]["mean"] == result.iou and row["aopc"]["lrp"]["mean"] == result.aopc["lrp"]
    assert card.write_html(tmp_path / "scorecard.html").is_file()  # its own page is replaced
