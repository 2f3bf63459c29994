"""The demo's audit around the generic chain: the planted-sample recovery. That only the demo and the command
that runs it import the demo is a layering rule (tests/test_layering.py); the demo audit end to end is
tests/test_workflow.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from spray.demo import default_poisoned_digits
from spray.demo.audit import DemoAudit, PlantedRecovery, planted_recovery
from spray.ranking import RankedClass, Ranking
from spray.results import Cluster


def _audit_with_top_cluster(members: list[int], top_class: int = 8) -> DemoAudit:
    data = default_poisoned_digits(0)
    best = Cluster(top_class, "kmeans_2", 0, tuple(members), 0.1, 10.0, 5.0, 0.01, 10.0)
    ranking = Ranking("spray", (
        RankedClass(3, "3", 4, rank=1, cluster=None, skipped="too few samples", outlier=None, flagged=False),
        RankedClass(top_class, str(top_class), 500, rank=2, cluster=best, skipped=None, outlier=None, flagged=True),
    ))
    return DemoAudit(data, model=None, weights=Path("w.pt"), store=Path("s.h5"), ranking=ranking)


def test_recovery_counts_the_planted_samples_in_the_top_cluster():
    planted = sorted(int(i) for i in default_poisoned_digits(0).planted)
    members = planted[:30] + [i for i in range(1000) if i not in planted][:10]  # 30 hits, 10 false alarms
    recovery = planted_recovery(_audit_with_top_cluster(members))
    assert recovery == PlantedRecovery(poisoned_class=8, top_class=8, planted=len(planted), flagged=40, hit=30,
                                       top_flagged=True)
    assert recovery.precision == 0.75 and recovery.recall == 30 / len(planted)
    assert recovery.f1 == pytest.approx(2 * 0.75 * recovery.recall / (0.75 + recovery.recall))
    assert not recovery.found  # F1 below 0.9
    assert recovery.verdict() == (
        f"planted artifact NOT FOUND: class 8 was poisoned, class 8 ranks first (flagged); its top cluster holds 40 "
        f"samples, 30 of the {len(planted)} planted (precision 0.75, recall {recovery.recall:.2f}, "
        f"F1 {recovery.f1:.2f})"
    )


def test_recovery_is_found_only_for_the_poisoned_class_with_f1_of_at_least_0_9():
    planted = sorted(int(i) for i in default_poisoned_digits(0).planted)
    assert planted_recovery(_audit_with_top_cluster(planted)).found
    wrong_class = planted_recovery(_audit_with_top_cluster(planted, top_class=1))
    assert wrong_class.f1 == 1.0 and not wrong_class.found
    nothing = PlantedRecovery(poisoned_class=8, top_class=None, planted=len(planted), flagged=0, hit=0,
                              top_flagged=False)
    assert (nothing.precision, nothing.recall, nothing.f1, nothing.found) == (0.0, 0.0, 0.0, False)
