"""Seeds aggregate into rows with exact rates and intervals."""

from __future__ import annotations

import re

import pytest

from spray.benchmark import Case, Scorecard
from spray.benchmark.run import CaseResult


def _result(seed: int, *, rank: int, f1: float, flags: int, control: bool = False) -> CaseResult:
    case = Case("control" if control else "tag", 0.0 if control else 0.1, "cnn", seed, "dev")
    return CaseResult(
        case=case, n_planted=0 if control else 35, clean_accuracy=0.9, everywhere_accuracy=None if control else 0.8,
        uses_artifact=None if control else True, rank=rank, flagged=rank == 1, cluster="8:kmeans_2:1",
        cluster_size=30, precision=None if control else f1, recall=None if control else f1,
        f1=None if control else f1, cav_auroc=None, clean_flags=flags, clean_classes=10 if control else 9,
        relevance_density=None, baseline_rank=None if control else rank + 1, baseline_f1=None if control else f1 / 2,
        clarc_everywhere=None if control else (0.8, 0.85),
        clarc_clean=None if control else (0.9, 0.89), seconds={"train": 10.0, "attribute": 2.0},
        iou=None if control else f1 / 4, aopc={"lrp": 2.0 + seed, "gradient": 1.0, "random": 0.5},
    )


def test_rows_aggregate_the_seeds_of_one_cell():
    card = Scorecard([_result(0, rank=1, f1=1.0, flags=0), _result(1, rank=3, f1=0.5, flags=1),
                      _result(2, rank=2, f1=0.0, flags=2), _result(0, rank=5, f1=0, flags=1, control=True)], {})
    control, tag = card.rows
    assert (control.artifact, control.seeds, tag.artifact, tag.seeds) == ("control", 1, "tag", 3)
    assert (tag.first.k, tag.first.n, tag.flagged.k, tag.uses.k) == (1, 3, 1, 3)
    assert tag.rank.mean == 2.0 and tag.f1.mean == 0.5 and tag.cav_auroc is None
    assert (tag.clean_flags.k, tag.clean_flags.n) == (3, 27)
    assert tag.clean_flags.low == pytest.approx(0.03851, abs=1e-4)
    assert (control.clean_flags.k, control.clean_flags.n, control.first.n, control.f1) == (1, 10, 0, None)
    assert tag.clarc_everywhere_after.mean == pytest.approx(0.85)
    assert tag.seconds == {"train": 10.0, "attribute": 2.0, "analyze": 0.0, "rank": 0.0, "clarc": 0.0, "score": 0.0,
                           "baseline": 0.0, "faithfulness": 0.0}
    assert (tag.baseline_rank.mean, tag.baseline_first.k, tag.baseline_f1.mean) == (3.0, 0, 0.25)
    assert str(tag.first) == "1/3 [0.06, 0.79]"
    assert (tag.iou.mean, control.iou) == (0.125, None)
    assert (tag.aopc["lrp"].mean, tag.aopc["lrp"].n, control.aopc["lrp"].mean) == (3.0, 3, 2.0)
    assert str(tag.aopc["gradient"]) == "1.00 [1.00, 1.00]" and tag.aopc["random"].mean == 0.5
    header, *_ = card.table().splitlines()
    assert re.split(r" {2,}", header)[-5:] == ["ClArC everywhere before -> after", "AOPC LRP", "AOPC GxI", "AOPC rand",
                                       "s/case"]
