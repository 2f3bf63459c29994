"""Seeds aggregate into rows with exact rates and intervals."""

from __future__ import annotations

import dataclasses
import re

import pytest

from spray.benchmark import Case, Scorecard
from spray.benchmark.run import CaseResult, _verified
from spray.benchmark.scorecard import Rate
from spray.clarc.verify import Standing, Verification


def _correction(everywhere: tuple[float, float], worst: list[float] | None = None,
                error: str | None = None, density: list[float] | None = None, flagged: bool = True,
                balanced: list[float] | None = None, verdict: str | None = None) -> dict:
    verification = None if verdict is None else {
        "verdict": verdict, "rank": [1, 1 if verdict == "not cleared" else 7], "flagged": [verdict != "not flagged",
                                                                                         verdict == "not cleared"],
        "outlier": [5.0, 3.0 if verdict == "not cleared" else 0.1], "separability_dropped": True, "match_f1": 0.4,
        "refits": 1}
    return {"cluster": None if error else "8:kmeans_2:1", "flagged": None if error else flagged,
            "clean": None if error else [0.9, 0.89],
            "everywhere": None if error else list(everywhere), "worst_group": worst, "balanced": balanced,
            "density": density, "tcav": None, "tcav_magnitude": None, "training_seconds": None,
            "verification": verification, "error": error}


def _result(seed: int, *, rank: int, f1: float, flags: int, control: bool = False) -> CaseResult:
    case = Case("control" if control else "tag", 0.0 if control else 0.1, "cnn", seed, "dev")
    return CaseResult(
        case=case, n_planted=0 if control else 35, clean_accuracy=0.9, everywhere_accuracy=None if control else 0.8,
        uses_artifact=None if control else True, rank=rank, flagged=rank == 1, cluster="8:kmeans_2:1",
        cluster_size=30, precision=None if control else f1, recall=None if control else f1,
        f1=None if control else f1, cav_auroc=None, clean_flags=flags, clean_classes=10 if control else 9,
        relevance_density=None,
        baselines={} if control else {"activation": {"rank": rank + 1, "f1": f1 / 2},
                                      "knn_outlier": {"rank": None, "f1": None},
                                      "error_slice": {"rank": 1, "f1": 0.1 * seed}},
        corrections={} if control else {"pclarc": _correction((0.8, 0.85), flagged=rank == 1),
                                        "rrclarc": _correction((0.8, 0.9 + seed / 100),
                                                               error="too few" if seed else None)},
        seconds={"train": 10.0, "attribute": 2.0}, cpu_seconds={"train": 20.0 + seed, "attribute": 2.0},
        peak_rss_mib={"train": 500.0 + seed, "attribute": 600.0},
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
    assert tag.seconds == {"train": 10.0, "attribute": 2.0, "analyze": 0.0, "rank": 0.0, "clarc": 0.0, "score": 0.0,
                           "baseline": 0.0, "faithfulness": 0.0}
    assert (tag.cpu_seconds["train"], tag.peak_rss_mib["train"], tag.peak_rss_mib["attribute"]) == (21.0, 502.0, 600.0)
    activation, knn, errors = (tag.baselines[b] for b in ("activation", "knn_outlier", "error_slice"))
    assert (activation.rank.mean, activation.first.k, activation.f1.mean) == (3.0, 0, 0.25)
    assert (knn.rank, knn.first.k, knn.first.n, knn.f1) == (None, 0, 3, None)
    assert (errors.first.k, errors.f1.mean) == (3, pytest.approx(0.1))
    assert card.corrections == ["pclarc", "rrclarc"]
    pclarc, rrclarc = tag.corrections["pclarc"], tag.corrections["rrclarc"]
    assert pclarc.everywhere_after.mean == pytest.approx(0.85) and (pclarc.refused, pclarc.unflagged) == (0, 2)
    assert (rrclarc.refused, rrclarc.unflagged, rrclarc.everywhere_after.n, rrclarc.everywhere_after.mean) == (
        2, 0, 1, 0.9)
    assert control.corrections["pclarc"] == control.corrections["rrclarc"]
    assert control.corrections["pclarc"].refused == 0
    assert str(tag.first) == "1/3 [0.06, 0.79]"
    assert (tag.iou.mean, control.iou) == (0.125, None)
    assert (tag.aopc["lrp"].mean, tag.aopc["lrp"].n, control.aopc["lrp"].mean) == (3.0, 3, 2.0)
    assert str(tag.aopc["gradient"]) == "1.00 [1.00, 1.00]" and tag.aopc["random"].mean == 0.5
    header, _, tag_line = card.table().splitlines()
    assert re.split(r" {2,}", header)[15:] == [
        "IoU", "activation rank", "activation F1", "knn_outlier rank", "knn_outlier F1", "error_slice rank",
        "error_slice F1", "pclarc everywhere before -> after", "rrclarc everywhere before -> after", "AOPC LRP",
        "AOPC GxI", "AOPC rand", "s/case", "CPU s/case", "peak RSS MiB"]
    assert re.split(r" {2,}", tag_line)[-8:-5] == [
        "0.80 [0.80, 0.80] -> 0.85 [0.85, 0.85] (targets met 3/3, fixed 3/3) (2 of an unflagged class)",
        "0.80 [0.80, 0.80] -> 0.90 [0.90, 0.90] (targets met 1/3, fixed 1/3) (2 refused)",
        "3.00 [0.52, 5.48]"]
    assert re.split(r" {2,}", tag_line)[-3:] == ["12", "23", "600"]


def test_the_two_class_sets_group_accuracies_enter_the_row_and_the_correction_cell():
    results = []
    for seed, (worst, balanced) in enumerate(((0.2, 0.86), (0.4, 0.84))):
        result = _result(seed, rank=1, f1=1.0, flags=0)
        result.worst_group_accuracy, result.balanced_accuracy = worst, 0.7
        result.corrections = {"pclarc": _correction((0.3, 0.5), worst=[worst, 0.6], balanced=[0.7, balanced])}
        results.append(result)
    (row,) = Scorecard(results, {}).rows
    assert (row.worst_group_accuracy.mean, row.balanced_accuracy.mean) == (pytest.approx(0.3), 0.7)
    correction = row.corrections["pclarc"]
    assert correction.worst_group_after.mean == 0.6 and correction.balanced_after.mean == pytest.approx(0.85)
    # Held to its balanced accuracy (0.86 meets 0.85, 0.84 does not), not to the everywhere accuracy (0.5).
    assert (correction.met.k, correction.met.n) == (1, 2)
    cells = re.split(r" {2,}", Scorecard(results, {}).table().splitlines()[1])
    assert cells[6] == "0.30 [-0.97, 1.57]"
    assert cells[-7] == ("0.30 [0.30, 0.30] -> 0.50 [0.50, 0.50] (worst group 0.30 [-0.97, 1.57] -> 0.60 [0.60, 0.60], "
                         "balanced 0.70 [0.70, 0.70] -> 0.85 [0.72, 0.98]) (targets met 1/2, fixed 1/2)")


def test_the_relevance_density_before_and_after_a_correction_enters_its_cell():
    results = []
    for seed, after in enumerate((1.0, 2.0)):
        result = _result(seed, rank=1, f1=1.0, flags=0)
        result.corrections = {"pclarc": _correction((0.3, 0.5), density=[4.0, after])}
        results.append(result)
    (row,) = Scorecard(results, {}).rows
    density = (row.corrections["pclarc"].density_before, row.corrections["pclarc"].density_after)
    assert (density[0].mean, density[0].n, density[1].mean, density[1].n) == (4.0, 2, 1.5, 2)
    cells = re.split(r" {2,}", Scorecard(results, {}).table().splitlines()[1])
    assert cells[-7] == ("0.30 [0.30, 0.30] -> 0.50 [0.50, 0.50] (density 4.00 [4.00, 4.00] -> 1.50 [-4.85, 7.85]) "
                         "(targets met 0/2, fixed 0/2)")


def test_the_tcav_figures_and_the_cost_of_a_correction_enter_its_cell():
    results = []
    for seed, (after, cost) in enumerate(((0.5, 10.0), (0.7, 20.0))):
        result = _result(seed, rank=1, f1=1.0, flags=0)
        correction = _correction((0.3, 0.5))
        correction |= {"tcav": [0.9, after], "tcav_magnitude": [0.2, 0.1 * (seed + 1)], "training_seconds": cost}
        result.corrections = {"pclarc": correction}
        results.append(result)
    refused = _result(2, rank=1, f1=1.0, flags=0)
    refused.corrections = {"pclarc": _correction((0.3, 0.5), error="too few")}  # no figures: it adds none
    (row,) = Scorecard(results + [refused], {}).rows
    pclarc = row.corrections["pclarc"]
    assert (pclarc.tcav_before.mean, pclarc.tcav_after.mean, pclarc.tcav_after.n) == (0.9, pytest.approx(0.6), 2)
    assert (pclarc.tcav_magnitude_after.mean, pclarc.seconds.mean, pclarc.seconds.n) == (pytest.approx(0.15), 15.0, 2)
    cells = re.split(r" {2,}", Scorecard(results, {}).table().splitlines()[1])
    assert cells[-7] == ("0.30 [0.30, 0.30] -> 0.50 [0.50, 0.50] (TCAV 0.90 [0.90, 0.90] -> 0.60 [-0.67, 1.87], |dd| "
                         "0.20 [0.20, 0.20] -> 0.15 [-0.49, 0.79]) (15 s) (targets met 0/2, fixed 0/2)")


def test_the_detection_summary_pools_the_cases_that_use_their_artifact_per_split_and_ranking():
    results = [_result(0, rank=1, f1=1.0, flags=0), _result(1, rank=3, f1=0.5, flags=1),
               _result(2, rank=1, f1=0.2, flags=0), _result(0, rank=5, f1=0, flags=2, control=True)]
    results[2].uses_artifact = False  # a case without a shortcut is no target; its clean classes still count
    for result in results:
        result.pixel = {"rank": result.rank + 1, "flagged": False, "f1": result.f1, "cav_auroc": None,
                        "clean_flags": 0, "clean_classes": result.clean_classes}
    card = Scorecard(results, {})
    assert [(d.split, d.architecture, d.ranking) for d in card.detection] == [("dev", "cnn", "combined"),
                                                                            ("dev", "cnn", "pixel")]
    combined, pixel = card.detection
    assert (combined.cases, combined.first.k, combined.flagged.k, combined.f1.mean) == (2, 1, 1, 0.75)
    assert (combined.clean_flags.k, combined.clean_flags.n, pixel.first.k, pixel.clean_flags.k) == (3, 37, 0, 0)
    header, line, _ = card.summary().split("\n\n")[0].splitlines()
    assert re.split(r" {2,}", header) == ["split", "arch", "ranking", "cases", "ranked first", "flagged",
                                          "F1 of the named group", "F1 target met (local)", "CAV AUROC target met",
                                          "flags on clean classes"]
    assert re.split(r" {2,}", line) == ["dev", "cnn", "combined", "2", "1/2 [0.09, 0.91]", "1/2 [0.09, 0.91]",
                                        "0.75 [-2.43, 3.93]", "1/2 [0.09, 0.91]", "0/2 [0.00, 0.66]",
                                        "3/37 [0.03, 0.21]"]
    assert card.to_dict()["detection"][1]["ranking"] == "pixel"
    assert "<th>F1 of the named group</th>" in card.html()


def test_the_detection_targets_hold_a_global_artifact_to_its_cav_alone_and_a_small_group_to_a_lower_f1():
    results = [_result(seed, rank=1, f1=f1, flags=0) for seed, f1 in enumerate((0.8, 0.8, 0.95, 0.95, 0.1))]
    cases = [("tag", 0.03), ("tag", 0.1), ("tag", 0.3), ("frame", 0.3), ("brightness", 0.3)]
    for result, (artifact, prevalence), cav in zip(results, cases, (0.96, 0.99, 0.94, 0.95, 0.86)):
        result.case = Case(artifact, prevalence, "cnn", result.case.seed, "dev")
        result.cav_auroc = cav
    results[3].flagged = False  # first and named, not flagged: its F1 meets no target
    (combined,) = Scorecard(results, {}).detection
    # F1: the 3 % tag (0.8 ≥ 0.75) and the 30 % tag (0.95); the 10 % tag is short of 0.9, the frame unflagged, and
    # the brightness, global, has no F1 target.
    assert (combined.f1_target.k, combined.f1_target.n) == (2, 4)
    # CAV: 0.96, 0.99 and the frame's 0.95 reach the local 0.95, the tag's 0.94 does not; the brightness's 0.86
    # reaches the global 0.85.
    assert (combined.cav_target.k, combined.cav_target.n) == (4, 5)
    assert Case("waterbirds", 0.1, "cnn", 0, "dev").is_global and not Case("control", 0.0, "cnn", 0, "dev").is_global


def test_targets_met_count_the_corrected_seeds_whose_model_uses_its_artifact():
    results = [_result(seed, rank=1, f1=1.0, flags=0) for seed in range(4)]
    # After: within 5 points of clean 0.89 (0.84), one point of clean lost; short of it; unused; refused (a miss).
    for result, everywhere in zip(results, (0.84, 0.83, 0.5, 0.9)):
        result.corrections = {"pclarc": _correction((0.5, everywhere), error="too few" if everywhere == 0.9 else None)}
    results[2].uses_artifact = False
    card = Scorecard(results, {})
    met = card.rows[0].corrections["pclarc"].met
    assert (met.k, met.n, str(met)) == (1, 3, "1/3 [0.06, 0.79]")
    (summary,) = card.correction_summary
    assert (summary.split, summary.architecture, summary.method, summary.met) == ("dev", "cnn", "pclarc", met)
    assert summary.fixed == met  # every original missed the target and the poisoned class (8) was corrected
    assert card.summary().split("\n\n")[2].splitlines() == [
        "split  arch  correction  runs (the model uses its artifact)  targets met       runs the original misses  "
        "fixed on the poisoned class  runs on the flagged poisoned class  flag cleared on re-audit  "
        "of these by a later contender",
        "dev    cnn   pclarc      3                                   1/3 [0.06, 0.79]  3                         "
        "1/3 [0.06, 0.79]             0                                   -                         -"]
    assert card.to_dict()["correction_summary"] == [
        {"split": "dev", "architecture": "cnn", "method": "pclarc",
         "met": {"k": 1, "n": 3, "low": met.low, "high": met.high},
         "fixed": {"k": 1, "n": 3, "low": met.low, "high": met.high},
         "cleared": {"k": 0, "n": 0, "low": 0.0, "high": 1.0},
         "by_contender": {"k": 0, "n": 0, "low": 0.0, "high": 1.0}, "prevalence": None}]
    assert "<th>targets met</th>" in card.html() and "<td>1/3 [0.06, 0.79]</td>" in card.html()


def test_the_summaries_per_prevalence_split_the_combined_ranking_and_the_corrections_by_prevalence():
    results = [_result(seed, rank=seed + 1, f1=1.0, flags=seed) for seed in range(3)]
    results += [_result(0, rank=1, f1=0.8, flags=0), _result(0, rank=1, f1=0.0, flags=2, control=True)]
    results[3].case = Case("tag", 0.03, "cnn", 3, "dev")  # a 3 % case: F1 0.8 meets its target of 0.75
    card = Scorecard(results, {})
    small, large = card.detection_by_prevalence
    assert (small.prevalence, small.ranking, small.cases, small.first.k, small.f1_target.k) == (
        0.03, "combined", 1, 1, 1)
    assert (large.prevalence, large.cases, large.first.k, large.flagged.k, large.clean_flags.k) == (0.1, 3, 1, 1, 3)
    assert [(c.prevalence, c.method, c.met.n) for c in card.correction_by_prevalence] == [
        (0.03, "pclarc", 1), (0.03, "rrclarc", 1), (0.1, "pclarc", 3), (0.1, "rrclarc", 3)]
    detection, by_prevalence, _, corrections = card.summary().split("\n\n")
    assert [re.split(r" {2,}", line)[:5] for line in by_prevalence.splitlines()] == [
        ["split", "arch", "prevalence (combined ranking)", "cases", "ranked first"],
        ["dev", "cnn", "3%", "1", "1/1 [0.21, 1.00]"], ["dev", "cnn", "10%", "3", "1/3 [0.06, 0.79]"]]
    assert re.split(r" {2,}", corrections.splitlines()[1])[:5] == ["dev", "cnn", "3%", "pclarc", "1"]
    stored = card.to_dict()
    assert [d["prevalence"] for d in stored["detection_by_prevalence"]] == [0.03, 0.1]
    assert stored["detection"][0]["prevalence"] is None and len(stored["correction_by_prevalence"]) == 4
    assert "<th>prevalence (combined ranking)</th>" in card.html() and "<td>3%</td>" in card.html()


def test_a_target_met_without_a_miss_before_or_on_another_class_is_not_a_fix():
    results = [_result(seed, rank=1, f1=1.0, flags=0) for seed in range(4)]
    for result in results:
        result.corrections = {"pclarc": _correction((0.5, 0.86))}  # within 3 points of clean 0.89: met
    results[1].corrections["pclarc"]["cluster"] = "3:kmeans_2:0"  # a clean class corrected: met, not fixed
    results[2].everywhere_accuracy = 0.85  # the original within 5 points of its clean 0.90: met, nothing to fix
    results[3].balanced_accuracy = 0.85  # a two-class set balanced before: met, nothing to fix
    results[3].corrections["pclarc"]["balanced"] = [0.85, 0.9]
    (summary,) = Scorecard(results, {}).correction_summary
    assert (summary.met.k, summary.met.n, summary.fixed.k, summary.fixed.n) == (4, 4, 1, 2)
    assert "balanced accuracy of at least 85 %), losing at most\n2 points" in Scorecard(results, {}).html()


def test_the_flag_cleared_counts_the_verified_corrections_of_the_flagged_poisoned_class_used_artifact_or_not():
    results = [_result(seed, rank=1, f1=1.0, flags=0) for seed in range(6)]
    for result, verdict in zip(results, ("cleared", "cleared", "not cleared", "not flagged", None, "cleared")):
        result.corrections = {"pclarc": _correction((0.5, 0.86), verdict=verdict)}
    results[1].uses_artifact = False  # cleared all the same: the loop is closed whether the model used it or not
    results[5].corrections["pclarc"]["cluster"] = "3:kmeans_2:0"  # a clean class's false flag cleared: not counted
    card = Scorecard(results, {})
    cleared = card.rows[0].corrections["pclarc"].cleared
    (summary,) = card.correction_summary
    assert (cleared.k, cleared.n, str(cleared)) == (2, 3, "2/3 [0.21, 0.94]") and summary.cleared == cleared
    assert card.table().count("(flag cleared 2/3)") == 1 and "<td>2/3 [0.21, 0.94]</td>" in card.html()
    assert "how many lost the flag when the class was audited again" in card.html()
    assert summary.by_contender == Rate.of(0, 2)  # both cleared by their first refit
    # a flag auto cleared with its second refit (rule step 7); one it did not clear with three is not counted
    results[1].corrections["pclarc"]["verification"]["refits"] = 2
    results[2].corrections["pclarc"]["verification"]["refits"] = 3
    card = Scorecard(results, {})
    by_contender = card.rows[0].corrections["pclarc"].by_contender
    assert (by_contender.k, by_contender.n) == (1, 2) and card.correction_summary[0].by_contender == by_contender
    assert card.table().count("(flag cleared 2/3, 1 by a later contender)") == 1


def test_a_verification_records_how_many_refits_it_took_auto_s_contenders_or_one():
    standing = Standing(1, True, 5.0, "8:kmeans_2:1", 0.1, 3.0, 0.5, None, "spray")
    verification = Verification(8, "8:kmeans_2:1", 30, standing, dataclasses.replace(standing, flagged=False),
                                None, 0.0, "verify.h5")
    assert _verified(verification, {"epochs": 3})["refits"] == 1  # a method's one correction
    assert _verified(verification, {"auto": {"verified": []}})["refits"] == 1  # auto, not verifying itself
    two = {"auto": {"verified": [{"verdict": "not cleared"}, {"verdict": "cleared"}]}}
    assert _verified(verification, two) == {
        "verdict": "cleared", "rank": [1, 1], "flagged": [True, False], "outlier": [5.0, 5.0],
        "separability_dropped": False, "match_f1": 0.0, "refits": 2}
