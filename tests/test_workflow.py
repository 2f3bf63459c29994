"""The demo audit end to end: the model uses the artifact, and SpRAy finds the planted Clever Hans."""

from __future__ import annotations

import pytest

from spray.demo import evaluate_accuracy
from spray.workflow import planted_recovery

pytestmark = pytest.mark.slow


def test_demo_model_demonstrably_uses_the_artifact(demo_audit):
    data, model = demo_audit.data, demo_audit.model
    clean = evaluate_accuracy(model, data.as_dataset("clean_test"))
    everywhere = evaluate_accuracy(model, data.as_dataset("everywhere_test"))
    print(f"demo CNN: clean test accuracy {clean:.3f}, artifact in every test image {everywhere:.3f}")
    assert clean >= 0.85
    assert everywhere <= clean - 0.4


def test_spray_ranks_the_poisoned_class_first_and_recovers_the_planted_samples(demo_audit):
    recovery = planted_recovery(demo_audit)
    top = demo_audit.ranking[0]
    print(f"top class {top['class']} (z {top['score']:.1f}, {top['clustering']} cluster {top['cluster']}), "
          f"second z {demo_audit.ranking[1]['score']:.1f}; planted {recovery['planted']}, flagged "
          f"{recovery['flagged']}, precision {recovery['precision']:.3f}, recall {recovery['recall']:.3f}, "
          f"F1 {recovery['f1']:.3f}")
    assert top["class"] == demo_audit.data.poisoned_class
    assert recovery["f1"] >= 0.9 and recovery["found"]


def test_demo_is_memoised_a_second_run_recomputes_nothing(demo_audit, tmp_path):
    from spray.pipeline import analyze, read_pipeline

    result = analyze(str(demo_audit.store), read_pipeline(None), progress=False)
    assert result.computed == {} and not result.preprocessed
