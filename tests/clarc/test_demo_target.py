"""The measured target on the demo audit: A- and RR-ClArC remove the planted shortcut, P-ClArC is reported.

On the demo audit (poisoned digits, the demo CNN, EpsilonPlusFlat attributions of the training split,
the default SpRAy analysis; the session's ``demo_audit``), the top-ranked class's flagged cluster is
corrected with each method, seed 0. Targets (docs/clarc.md): accuracy with the isolated artifact in every
test image rises by >= 20 points or to within 5 points of the clean accuracy, clean accuracy drops by <= 2
points, and the share of relevance on the artifact at least halves: inside the planted stamp, and inside
the isolated artifact's mask counted above the share the original model puts there on artifact-free images
(that mask also covers digit strokes, see the test). The same accuracy target is checked with the planted
(ground-truth) stamp in every image, which the correction never saw.
"""

from __future__ import annotations

import math
import shutil
import time

import pytest
import torch

from spray.clarc import ClarcConfig, EvaluationData, Tuning, clarc_from_store, format_metrics
from spray.clarc.evaluate import artifact_relevance
from spray.demo import FEATURE_LAYER
from spray.training import accuracy

pytestmark = pytest.mark.slow

METHODS = ("aclarc", "rrclarc", "pclarc")


@pytest.fixture(scope="module")
def corrections(demo_audit, tmp_path_factory):
    """Each method run once on a copy of the demo store (the session's store is shared with other tests)."""
    out = tmp_path_factory.mktemp("clarc")
    store = out / "demo.h5"
    shutil.copy(demo_audit.store, store)
    data = demo_audit.data
    cluster = demo_audit.ranking.top_candidate().cluster.reference
    everywhere = data.as_dataset("everywhere_test")
    region = torch.from_numpy(data.artifact.image_mask())
    results = {}
    for method in METHODS:
        tick = time.perf_counter()
        # the demo's feature layer, as spray demo corrects it (the measured tables of docs/clarc.md §6)
        config = ClarcConfig(method, out / "runs", cluster=cluster, layer=FEATURE_LAYER, tuning=Tuning(seed=0),
                             fda_rank=method == "rrclarc", progress=False)
        evaluation = EvaluationData(data.as_dataset("clean_test"), poisoned_test=data.as_dataset("poisoned_test"))
        result = clarc_from_store(store, demo_audit.model, data.as_dataset("train"), config, evaluation)
        seconds = time.perf_counter() - tick
        planted = {name: {"everywhere": accuracy(model, everywhere),
                          "relevance": artifact_relevance(model, everywhere, region)}
                   for name, model in (("original", demo_audit.model), ("corrected", result.model))}
        floor = artifact_relevance(demo_audit.model, data.as_dataset("clean_test"), result.artifact.mask)
        print(f"\n{method} on {cluster} (CAV AUC {result.artifact.cav.auc_:.3f}, {seconds:.0f} s):\n"
              f"{format_metrics(result.metrics)}\n"
              f"planted stamp everywhere: accuracy {planted['original']['everywhere']:.3f} -> "
              f"{planted['corrected']['everywhere']:.3f}, relevance in the stamp "
              f"{planted['original']['relevance']:.3f} -> {planted['corrected']['relevance']:.3f}; original's "
              f"share in the isolated mask without any artifact {floor:.3f}")
        results[method] = (result, planted, floor)
    return results


@pytest.mark.parametrize("method", ["aclarc", "rrclarc"])
def test_correction_removes_the_shortcut_and_keeps_clean_accuracy(corrections, method):
    result, planted, floor = corrections[method]
    before, after = result.metrics
    assert after["clean_accuracy"] >= before["clean_accuracy"] - 0.02
    assert (after["everywhere_accuracy"] >= before["everywhere_accuracy"] + 0.20
            or after["everywhere_accuracy"] >= before["clean_accuracy"] - 0.05)
    # The isolated mask (the 12x12 stamp and some of the strokes around it) holds 22 % of the original's
    # relevance on clean test images, without any artifact, and a model that never saw the stamp (the
    # control of docs/demo.md) puts 21 % there with the isolated artifact everywhere: that share is the
    # floor, and the relevance *above* it must at least halve (measured, seed 0: 45.7 % -> 17.0 % for
    # A-ClArC, 22.9 % for RR-ClArC, against the floor's 22.0 %).
    assert after["artifact_relevance"] - floor <= 0.5 * (before["artifact_relevance"] - floor)
    # The same with the planted stamp, which ClArC never saw (it only knows the cluster's samples).
    assert (planted["corrected"]["everywhere"] >= planted["original"]["everywhere"] + 0.20
            or planted["corrected"]["everywhere"] >= before["clean_accuracy"] - 0.05)
    assert planted["corrected"]["relevance"] <= 0.5 * planted["original"]["relevance"]


def test_projection_runs_and_reports_finite_numbers(corrections):
    result, planted, _ = corrections["pclarc"]
    for row in result.metrics:
        assert all(math.isfinite(row[k]) for k in ("clean_accuracy", "poisoned_accuracy", "everywhere_accuracy",
                                                    "artifact_relevance"))
    assert all(math.isfinite(v) for p in planted.values() for v in p.values())


def test_fda_rank_is_measured_after_correction(corrections):
    before, after = corrections["rrclarc"][0].metrics
    assert before["fda_rank"] == 1
    assert after["fda_rank"] is None or after["fda_rank"] >= 1
