"""The CI-sized grid: ``spray benchmark``'s suite end to end on scikit-learn's digits at the smallest size.

Two artifact kinds (the fixed patch and the two-class set) at 30 %, one seed per split: four cases, trained,
audited, corrected and scored, then the scorecard. What is asserted exactly is what must not drift silently:
the grid's case names and cache keys (a changed key or draw without a raised VERSION would reuse wrong models),
the planted images, the groups, the columns, and the structure of every record; model-dependent numbers only
within their definitions' ranges.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import spray.benchmark.run as run_module
from spray.benchmark.cases import Case, Size, make_case
from spray.benchmark.data import load_images
from spray.benchmark.run import SCORES, STAGES
from spray.benchmark.suite import benchmark

TINY = Size(train_per_class=40, test_per_class=10, epochs=1)
NAMES = ["patch_fixed-p30-cnn-s0-dev", "waterbirds-p30-cnn-s0-dev", "patch_fixed-p30-cnn-s100-heldout",
         "waterbirds-p30-cnn-s100-heldout"]


@pytest.fixture(scope="module")
def grid_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("grid")
    card, page = benchmark(cases=["patch_fixed", "waterbirds"], seeds=1, source="digits", prevalences="0.3",
                           cache=root / "cache", out=root / "out", size=TINY)
    return root, card, page


def test_the_grid_runs_its_cases_in_order_under_stable_cache_keys(grid_run):
    root, card, _ = grid_run
    assert [r.case.name for r in card.results] == NAMES
    directories = sorted(p for p in (root / "cache").iterdir() if not p.name.startswith("."))
    assert [d.name for d in directories] == [
        "patch_fixed-p30-cnn-s0-dev-07f44463fd", "patch_fixed-p30-cnn-s100-heldout-b184b1291b",
        "waterbirds-p30-cnn-s0-dev-83441bf3f0", "waterbirds-p30-cnn-s100-heldout-2bb895b913"]
    assert all((d / f"result-v{SCORES}.json").is_file() and (d / "model.pt").is_file() for d in directories)


def test_the_cases_plant_the_same_images_every_time():
    digits = load_images("digits")
    patch = make_case(Case("patch_fixed", 0.3, "cnn", 0, "dev"), digits, TINY)
    assert patch.planted.tolist() == [41, 61, 62, 128, 145, 167, 197, 251, 282, 346, 350, 373]
    assert round(float(patch.train[0].astype(np.float64).sum()), 1) == 95654.4
    two_class = make_case(Case("waterbirds", 0.3, "cnn", 100, "heldout"), digits, TINY)
    assert two_class.planted.tolist() == [3, 4, 11, 23, 25, 27, 31, 34, 53, 59, 71, 77]
    assert round(float(two_class.train[0].astype(np.float64).sum()), 1) == 31686.7


def test_every_case_records_its_ground_truth_scores_and_costs(grid_run):
    _, card, _ = grid_run
    for result in card.results:
        two_class = result.case.artifact == "waterbirds"
        assert result.n_planted == 12 and result.uses_artifact == (
            result.clean_accuracy - result.everywhere_accuracy >= 0.05)
        classes = 2 if two_class else 10  # the two-class set has no clean class: each has a minority group
        assert result.clean_classes == (0 if two_class else 9) and 1 <= result.rank <= classes
        assert not two_class or result.clean_flags == 0
        assert 0 <= result.f1 <= 1 and list(result.baselines) == ["activation", "knn_outlier", "error_slice"]
        assert list(result.corrections) == ["pclarc"]
        pclarc = result.corrections["pclarc"]
        assert set(pclarc) == {"cluster", "flagged", "clean", "everywhere", "worst_group", "balanced", "density",
                               "tcav", "tcav_magnitude", "training_seconds", "verification", "error"}
        if pclarc["error"] is None:  # the original's density is the case's; a global mask localises nothing
            assert all(0 <= score <= 1 for score in pclarc["tcav"]) and min(pclarc["tcav_magnitude"]) >= 0
            assert pclarc["training_seconds"] > 0
            verified = pclarc["verification"]  # the corrected class audited again, its standing before and after
            assert set(verified) == {"verdict", "rank", "flagged", "outlier", "separability_dropped", "match_f1",
                                     "refits"}
            assert verified["refits"] == 1  # P-ClArC's one correction
            assert verified["verdict"] == (  # the flags of the relevance analyses' ranking (spray.clarc.verify)
                "not cleared" if verified["flagged"][1] else "cleared" if verified["flagged"][0] else "not flagged")
            assert all(1 <= rank <= classes for rank in verified["rank"])
            assert 0 <= verified["match_f1"] <= 1
            assert (pclarc["density"] is None) == two_class == (pclarc["balanced"] is not None)
            assert not two_class or (pclarc["worst_group"][0] == result.worst_group_accuracy
                                     and pclarc["balanced"][0] == pytest.approx(result.balanced_accuracy))
            assert two_class or (pclarc["density"][0] == result.relevance_density and pclarc["density"][1] > 0)
        assert list(result.seconds) == list(result.cpu_seconds) == list(result.peak_rss_mib)
        assert set(result.seconds) == set(STAGES) and result.cpu_seconds["train"] > 0
        rss = list(result.peak_rss_mib.values())  # a high-water mark, in the order the stages ran
        assert rss == sorted(rss) and rss[0] > 50
        assert (result.group_accuracy is not None) == two_class == (result.relevance_density is None)
    waterbirds = card.results[1]
    assert list(waterbirds.group_accuracy) == ["3/grass", "3/brick", "8/grass", "8/brick"]
    assert waterbirds.worst_group_accuracy == min(waterbirds.group_accuracy.values())
    assert waterbirds.worst_group_accuracy <= waterbirds.balanced_accuracy <= max(waterbirds.group_accuracy.values())
    assert list(card.results[3].group_accuracy) == ["4/gravel", "4/grass", "9/gravel", "9/grass"]


def test_the_scorecard_has_one_row_per_cell_and_the_columns_it_documents(grid_run):
    root, card, page = grid_run
    assert [(r.split, r.artifact, r.prevalence, r.seeds) for r in card.rows] == [
        ("dev", "patch_fixed", 0.3, 1), ("dev", "waterbirds", 0.3, 1), ("heldout", "patch_fixed", 0.3, 1),
        ("heldout", "waterbirds", 0.3, 1)]
    stored = json.loads((root / "out" / "scorecard.json").read_text())
    assert stored["meta"]["command"] == "spray benchmark --cases patch_fixed,waterbirds --prevalences 0.3 " \
                                        "--seeds 1 --data digits"
    assert stored["meta"]["size"] == str(TINY) and stored["meta"]["prevalences"] == "30%"
    assert list(stored["rows"][0]["baselines"]) == ["activation", "knn_outlier", "error_slice"]
    assert list(stored["rows"][0]["corrections"]) == ["pclarc"]
    assert len(card.table().splitlines()) == 5 and "<th>pclarc: everywhere accuracy, before → after</th>" in \
        page.read_text()


def test_a_second_run_reads_every_case_from_the_cache(grid_run, monkeypatch):
    root, card, _ = grid_run
    monkeypatch.setattr(run_module, "make_case", lambda *a: pytest.fail("a cached case was computed again"))
    again, _ = benchmark(cases=["patch_fixed", "waterbirds"], seeds=1, source="digits", prevalences="0.3",
                         cache=root / "cache", out=root / "out", size=TINY)
    assert again.results == card.results
