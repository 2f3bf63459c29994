"""The verification: the flagged class audited again with the corrected model, its standing before and after."""

from __future__ import annotations

import copy
import dataclasses
import json
import re

import numpy as np
import pytest
import torch

from spray.clarc import ClarcConfig, clarc_from_store
from spray.clarc.cluster import read_cluster, resolve_cluster
from spray.clarc.dfr import last_linear
from spray.clarc.projective import project_model
from spray.clarc.run import audit_composite
from spray.clarc.verify import (NOT_REAUDITED, Standing, Verification, best_match, verification_analyses,
                                verification_store, verify_correction)
from spray.errors import BadInputError
from spray.ranking import best_of, rank_classes, rank_found, replace_class
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
    # a re-audit that analysed none of the class's samples proves nothing: not verified, a failure
    unseen = _verification(_standing(True), Standing(2, False, None, None, None, None, None, NOT_REAUDITED))
    assert (unseen.verdict, unseen.failed, unseen.unverified, unseen.separability_dropped) == \
        ("not verified", True, True, None)
    assert unseen.summary().splitlines() == [
        "verification: class 8 NOT VERIFIED (flagged yes -> no, outlier 4.2 -> -, rank 1 -> 2)",
        "  the re-audit analysed none of the class's samples: the corrected model's explanations of the class are "
        "all zero, or none of its samples is grouped under it"]
    assert not any(v.unverified for v in (cleared, still, never, by_z, gone))


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
    with AuditStore(tiny_audit.store) as store, AuditStore(found.store) as reaudited:
        replacement = next(c for c in best_of(reaudited, ["tiny"])["tiny"] if c.label == 1)
        expected = replace_class(best_of(store, ["tiny"]), {"tiny": dataclasses.replace(
            replacement, cluster=dataclasses.replace(best, members=tuple(int(mapped[i]) for i in best.members)))}).of(1)
    assert replacement.cluster == best
    assert found.after == Standing.of(expected)
    assert found.n_members == len(members.artifact) and 0.0 < found.match_f1 <= 1.0
    # a second verification of the same corrected model resumes the store: the same answer
    assert verify_correction(tiny_audit.store, corrected, tiny_audit.dataset, members, tmp_path) == found


def test_a_corrected_model_whose_output_for_the_class_is_constant_is_not_verified(tiny_audit, tmp_path):
    # every explanation of the class is zero, the re-audit leaves them all out: no group can stand out, and
    # "cleared" would prove nothing
    with AuditStore(tiny_audit.store) as store:
        members = read_cluster(store, rank_classes(store, "tiny").of(1).cluster.reference, "tiny")
    corrected = copy.deepcopy(tiny_audit.model)
    head = dict(corrected.named_modules())[last_linear(corrected, tiny_audit.dataset.tensors[0][:1])]
    with torch.no_grad():
        head.weight[1] = 0.0
    found = verify_correction(tiny_audit.store, corrected, tiny_audit.dataset, members, tmp_path)
    assert (found.verdict, found.failed, found.after.skipped) == ("not verified", True, NOT_REAUDITED)


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


def _with_latent_analysis(tiny_audit, tmp_path, composite="epsilon_plus_flat", quantity="relevance"):
    """A copy of the tiny audit's store with a second attribution, latent relevance (or ``quantity``) at the last
    feature map (``composite``), and the tiny pipeline run on it as analysis ``lat``: a pixel- and a concept-level
    analysis."""
    from spray.attribution import AttributionRun
    from spray.attribution.methods import get_method
    from spray.audit import audit
    from spray.data import model_hash
    from spray.pipeline import pipeline_from_text
    from spray.testing import pipeline_text
    from spray.workflow import latent_attributor

    store = tmp_path / "both.h5"
    store.write_bytes(tiny_audit.store.read_bytes())
    latent = latent_attributor(get_method(composite), tiny_audit.model, tiny_audit.dataset, quantity=quantity)
    run = AttributionRun(latent, model_hash=model_hash(tiny_audit.model), model_name="tiny", dataset_name="tiny",
                         batch_size=16, progress=False)
    audit(store, tiny_audit.model, tiny_audit.dataset, run,
          pipeline_from_text(pipeline_text("tiny", analysis={"name": "lat", "attribution": "latent"})))
    return store


def test_a_cluster_of_a_latent_analysis_is_verified_with_latent_relevance_and_ranked_over_every_analysis(
        tiny_audit, tmp_path):
    store = _with_latent_analysis(tiny_audit, tmp_path)
    with AuditStore(store) as opened:
        found = best_of(opened, ["lat", "tiny"])
        named = rank_classes(opened, "lat").of(1).cluster.reference
        members = read_cluster(opened, named, "lat")
    corrected = project_model(tiny_audit.model, "features.3", torch.ones(6), torch.zeros(6))
    # Before: "unknown attribution method 'latent'" — the re-audit could not rebuild a latent attribution
    checked = verify_correction(store, corrected, tiny_audit.dataset, members, tmp_path / "run",
                                analyses=["lat", "tiny"])
    assert checked.analyses == ("lat", "tiny") and checked.cluster == named
    with AuditStore(checked.store) as reaudited:
        assert sorted(reaudited.attributions()) == ["epsilon_plus_flat", "latent"]
        assert reaudited.attribution_info("latent")["params"]["layer"] == "features.3"
        assert reaudited.attribution_info("latent")["shape"] == [40, 6, 2, 2]  # class 1: per channel and 2 x 2 cell
        again = best_of(reaudited, ["lat", "tiny"])
    index = np.sort(np.concatenate([members.artifact, members.rest]))
    replacements = {a: dataclasses.replace(c, cluster=dataclasses.replace(
        c.cluster, members=tuple(int(index[i]) for i in c.cluster.members)))
        for a, classes in again.items() for c in classes if c.label == 1}
    assert checked.before == Standing.of(rank_found(found).of(1))
    assert checked.after == Standing.of(replace_class(found, replacements).of(1))
    assert checked.after.analysis in ("lat", "tiny") and 0.0 < checked.match_f1 <= 1.0
    assert f"{checked.before.cluster} ({checked.before.analysis}) -> " in checked.summary()
    assert (checked.cluster_analysis, len(checked.summary().splitlines())) == ("lat", 2)
    assert not checked.cluster_unjudged
    assert f"best match {checked.match} ({checked.match_analysis}), F1" in checked.summary()
    # the cluster's own analysis alone, as before: one analysis ranked, the same re-audit store resumed
    alone = verify_correction(store, corrected, tiny_audit.dataset, members, tmp_path / "run")
    assert alone.analyses == ("lat",) and alone.store == checked.store and alone.match_f1 == checked.match_f1
    assert f"best cluster {alone.before.cluster} -> " in alone.summary()


def test_a_run_on_a_store_of_two_analyses_verifies_over_the_ranking_that_named_its_cluster(tiny_audit, tmp_path):
    store = _with_latent_analysis(tiny_audit, tmp_path, composite="epsilon_alpha2_beta1")
    with AuditStore(store) as opened:
        assert type(audit_composite(opened, "lat")).__name__ == "EpsilonAlpha2Beta1"  # not EpsilonPlusFlat
        target = resolve_cluster(opened, "top")
    assert target.analyses == ("lat", "tiny")
    result = clarc_from_store(store, tiny_audit.model, tiny_audit.dataset,
                              ClarcConfig("pclarc", tmp_path / "runs", verify=True, progress=False))
    assert result.verification.analyses == ("lat", "tiny") and result.verification.cluster == str(target.spec)
    with AuditStore(store) as opened:
        recorded = Verification.from_dict(opened.read_node(f"clarc/{result.run}/result")[1]["verification"])
    assert recorded == result.verification


def test_a_verification_recorded_before_the_analyses_were_kept_still_reads():
    old = {**_verification(_standing(True), _standing(False)).to_dict()}
    for key in ("analyses", "cluster_analysis", "match_analysis"):
        del old[key]
    for standing in ("before", "after"):
        del old[standing]["analysis"]
    assert Verification.from_dict(old) == _verification(_standing(True), _standing(False))


def test_an_analysis_of_activations_is_not_judged_and_a_store_of_activations_alone_is_refused(tiny_audit, tmp_path):
    store = _with_latent_analysis(tiny_audit, tmp_path, quantity="activation_max")
    with AuditStore(store) as opened:
        assert verification_analyses(opened, ["lat", "tiny"]) == ("tiny",)
        members = read_cluster(opened, rank_classes(opened, "lat").of(1).cluster.reference, "lat")
        alone = rank_classes(opened, "tiny").of(1)
    corrected = project_model(tiny_audit.model, "features.3", torch.ones(6), torch.zeros(6))
    checked = verify_correction(store, corrected, tiny_audit.dataset, members, tmp_path / "run",
                                analyses=["lat", "tiny"])
    assert (checked.analyses, checked.cluster_analysis, checked.before) == (("tiny",), "lat", Standing.of(alone))
    assert checked.cluster_unjudged and checked.to_dict()["cluster_unjudged"] is True
    with AuditStore(checked.store) as reaudited:
        assert reaudited.attributions() == ["epsilon_plus_flat"]  # the activations were not attributed again
    assert checked.summary().splitlines()[2] == (
        "  judged on the relevance analyses tiny: the cluster's analysis 'lat' reads activations, which a correction "
        "of the decision need not change")
    with AuditStore(store) as opened, pytest.raises(BadInputError, match=(
            rf"^cannot verify a correction on analysis 'lat' of {re.escape(str(store))}: it reads activations, which "
            r"show what the model sees, not what its decision rests on; analyse the store's relevance too")):
        verification_analyses(opened, ["lat"])
    runs = tmp_path / "runs"
    with pytest.raises(BadInputError, match="^cannot verify a correction on analysis 'lat'"):
        clarc_from_store(store, tiny_audit.model, tiny_audit.dataset,
                         ClarcConfig("pclarc", runs, cluster=members.spec, analysis="lat", verify=True, progress=False))
    assert not runs.exists()  # refused before a run directory was made or a correction trained
