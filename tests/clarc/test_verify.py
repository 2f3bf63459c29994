"""The verification: the flagged class audited again with the corrected model, its standing before and after."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from spray.clarc import ClarcConfig, clarc_from_store
from spray.clarc.cluster import read_cluster
from spray.clarc.projective import project_model
from spray.clarc.verify import Standing, Verification, best_match, verification_store, verify_correction
from spray.ranking import class_best, rank_classes, replace_class
from spray.store import AuditStore


def _standing(flagged: bool, **changes) -> Standing:
    return dataclasses.replace(Standing(1, flagged, 4.2, "8:kmeans_2:1", 0.0173, 392.6, 0.91, None), **changes)


def _verification(before: Standing, after: Standing) -> Verification:
    return Verification(8, "8:kmeans_2:1", 37, before, after, "8:kmeans_3:0", 0.4125, "run/verify-abc.h5")


def test_best_match_is_the_cluster_of_any_clustering_with_the_highest_f1_noise_excluded():
    index = np.array([10, 11, 12, 13, 14, 15, 16, 17])
    clusterings = {"kmeans_2": np.array([0, 0, 0, 0, 1, 1, 1, 1]),
                   "hdbscan": np.array([-1, -1, -1, 0, 0, 1, 1, 1])}
    # members 10, 11, 12: kmeans_2 cluster 0 holds them and 13 (F1 2*3/(4+3)); hdbscan's noise would be exact
    assert best_match(np.array([10, 11, 12]), index, clusterings, 8) == ("8:kmeans_2:0", pytest.approx(6 / 7))
    assert best_match(np.array([15, 16, 17]), index, clusterings, 8) == ("8:hdbscan:1", 1.0)
    assert best_match(np.array([99]), index, clusterings, 8) == (None, 0.0)


def test_the_verdict_is_cleared_not_cleared_or_not_flagged_and_only_a_still_flagged_class_fails():
    calm = _standing(False, rank=9, outlier=0.4, ncut=0.2, z_score=40.0, tau=0.3, cluster="8:kmeans_3:1")
    cleared = _verification(_standing(True), calm)
    assert (cleared.verdict, cleared.failed, cleared.separability_dropped) == ("cleared", False, True)
    still = _verification(_standing(True), _standing(True, ncut=0.01))
    assert (still.verdict, still.failed, still.separability_dropped) == ("not cleared", True, False)
    never = _verification(_standing(False), calm)
    assert (never.verdict, never.failed) == ("not flagged", False)
    by_z = _verification(_standing(True, ncut=None), _standing(False, z_score=12.0))
    assert by_z.separability_dropped is True  # without both cuts the z-scores decide
    gone = _verification(_standing(True), Standing(None, False, None, None, None, None, None, "no candidate cluster"))
    assert gone.separability_dropped is True and gone.verdict == "cleared"


def test_the_record_round_trips_through_json_and_the_summary_says_what_changed():
    found = _verification(_standing(True), _standing(False, rank=9, outlier=0.4, ncut=0.2, z_score=40.0, tau=0.3,
                                                     cluster="8:kmeans_3:1"))
    data = json.loads(json.dumps(found.to_dict()))
    assert (data["verdict"], data["failed"], data["separability_dropped"]) == ("cleared", False, True)
    assert Verification.from_dict(data) == found
    assert found.summary() == (
        "verification: class 8 CLEARED (flagged yes -> no, outlier 4.2 -> 0.4, rank 1 -> 9)\n"
        "  best cluster 8:kmeans_2:1 -> 8:kmeans_3:1: ncut 0.0173 -> 0.2, z 392.6 -> 40.0, tau 0.91 -> 0.3; "
        "the 37 old members' best match 8:kmeans_3:0, F1 0.41"
    )
    skipped = _verification(_standing(True), Standing(None, False, None, None, None, None, None, "too few samples"))
    assert skipped.summary().splitlines()[1] == "  after the correction the class has no candidate cluster (too few samples)"


def test_verify_reaudits_only_the_class_and_ranks_it_against_the_others_as_they_were(tiny_audit, tmp_path):
    with AuditStore(tiny_audit.store) as store:
        original = rank_classes(store, "tiny")
        members = read_cluster(store, original.of(1).cluster.reference, "tiny")
    corrected = project_model(tiny_audit.model, "features.3", torch.ones(6), torch.zeros(6))
    found = verify_correction(tiny_audit.store, corrected, tiny_audit.dataset, members, tmp_path)
    assert found.store == str(verification_store(tmp_path, corrected))
    assert found.before == Standing.of(original.of(1)) and found.cluster == str(members.spec)
    with AuditStore(found.store) as store:
        again = rank_classes(store, "tiny")
        index = store.read_node("analyses/tiny/1/status")[0]["dataset_index"]
    assert [e.label for e in again] == [1] and len(index) == len(members.artifact) + len(members.rest)
    mapped = np.sort(np.concatenate([members.artifact, members.rest]))
    best = again.of(1).cluster
    expected = replace_class(original, dataclasses.replace(class_best(again.of(1)), cluster=dataclasses.replace(
        best, members=tuple(int(mapped[i]) for i in best.members)))).of(1)
    assert found.after == Standing.of(expected)
    assert found.n_members == len(members.artifact) and 0.0 < found.match_f1 <= 1.0
    # a second verification of the same corrected model resumes the store: the same answer
    assert verify_correction(tiny_audit.store, corrected, tiny_audit.dataset, members, tmp_path) == found


def test_a_verified_run_records_the_verification_in_the_store_and_result_json(tiny_audit, tmp_path):
    config = ClarcConfig("pclarc", tmp_path, analysis="tiny", verify=True, progress=False)
    result = clarc_from_store(tiny_audit.store, tiny_audit.model, tiny_audit.dataset, config)
    assert result.verification is not None and result.verification.label == 1
    with AuditStore(tiny_audit.store) as store:
        _, attrs = store.read_node(f"clarc/{result.run}/result")
    assert Verification.from_dict(attrs["verification"]) == result.verification
    saved = json.loads((result.run_dir / "result.json").read_text())
    assert saved["verification"] == json.loads(json.dumps(result.verification.to_dict()))
    assert result.table().splitlines()[-2].startswith("verification: class 1 ")
    assert attrs["training_seconds"] >= 0.0
    unverified = clarc_from_store(tiny_audit.store, tiny_audit.model, tiny_audit.dataset,
                                  dataclasses.replace(config, verify=False, run="plain"))
    assert unverified.verification is None
    with AuditStore(tiny_audit.store) as store:
        assert store.read_node("clarc/plain/result")[1]["verification"] is None
